"""The cross-encoder's request pipeline: requests in, validated rows to its instance, scores out.

Kept apart from the model version that loads things and from the transports
that speak gRPC, so that another model (the two-tower ranker) composes with
it into a longer pipeline. What happens here:
- Score/Rank: context items and candidates (anything with `item_id`/`text`,
  plus `count` for context items: protobuf messages work as they are) are
  checked against the server's limits, looked up in the bundle's
  pre-tokenized catalog (only free text is tokenized), and turned into pairs
  by the one pair builder, `Featurizer.build_pairs`, exactly as in training;
  the rows go to the cross-encoder's batcher, and Rank takes the top k.
- KServe ModelInfer: ready token-id tensors are checked the way the model
  needs them (ids the model can embed, masks and types of 0/1, and every row
  laid out as `featurize.ROW_LAYOUT`: `[CLS] context [SEP] candidate [SEP]`
  then padding, so a row the model cannot score is refused instead of getting
  a constant answer) and each row goes to the same batcher as one pair.
Errors are INVALID_ARGUMENT naming the field at fault (and the row).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from edgerec.core.errors import invalid
from edgerec.core.featurize import ROW_LAYOUT, ContextEntry, Featurizer, TokenIds, item_key
from edgerec.core.signatures import CROSS_ENCODER
from edgerec.runtime.config import ServerConfig

if TYPE_CHECKING:
    from edgerec.runtime.model_version import Instance


class ItemRef(Protocol):
    """A candidate: a catalog id, or free text for an item the catalog does not know."""

    item_id: str
    text: str


class ContextRef(ItemRef, Protocol):
    """A past item of the customer and how many earlier baskets held it (0 reads as 1)."""

    count: int


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A plain `ItemRef`, for callers without protobuf messages."""

    item_id: str = ""
    text: str = ""


@dataclasses.dataclass(frozen=True)
class ContextItem:
    """A plain `ContextRef`."""

    item_id: str = ""
    text: str = ""
    count: int = 1


@dataclasses.dataclass(frozen=True)
class Scores:
    """Per-candidate outputs in request order (float32 [candidates]), and the model version that produced them."""

    purchase_probability: np.ndarray
    expected_quantity: np.ndarray
    model_name: str
    model_version: str


class PairRows:
    """Batcher payload of a Score/Rank request: one context shared by every candidate.

    `lengths` (int64): each pair's tokens, specials included; `feeds(indices)`:
    the chosen pairs as the cross-encoder's inputs, padded to their longest.
    """

    __slots__ = ("featurizer", "context", "candidates", "lengths", "pad_values")

    def __init__(self, featurizer: Featurizer, context: TokenIds, candidates: Sequence[TokenIds]) -> None:
        self.featurizer = featurizer
        self.context = context
        self.candidates = candidates
        lengths = np.fromiter(map(len, candidates), dtype=np.int64, count=len(candidates))
        self.lengths = lengths + (len(context) + 3)
        self.pad_values = pad_values(featurizer)

    def feeds(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        context, candidates = self.context, self.candidates
        return self.featurizer.pack([(context, candidates[i]) for i in indices.tolist()]).as_feeds()


class TokenRows:
    """Batcher payload of a ModelInfer request: the client's token-id rows, each cut after its last attended token."""

    __slots__ = ("tensors", "lengths", "pad_values")

    def __init__(self, tensors: dict[str, np.ndarray], lengths: np.ndarray, pad: dict[str, int]) -> None:
        self.tensors = tensors
        self.lengths = lengths
        self.pad_values = pad

    def feeds(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        width = int(self.lengths[indices].max())
        return {name: values[indices, :width] for name, values in self.tensors.items()}


def pad_values(featurizer: Featurizer) -> dict[str, int]:
    """What pads each cross-encoder input when rows of different lengths share a batch: [PAD] ids, else 0."""
    input_ids, _attention_mask, _token_type_ids = CROSS_ENCODER.input_names
    return {input_ids: featurizer.pad_id}


def featurize(featurizer: Featurizer, context: Sequence[ContextRef], candidates: Sequence[ItemRef]) -> PairRows:
    """The pairs of one request, built by `Featurizer.build_pairs` as in training.

    Items are looked up in the catalog, else tokenized from their text; an
    item is identified by `item_key(item_id, text)`, so a candidate that the
    customer bought before carries the count of its newest context entry.
    Raises INVALID_ARGUMENT naming `context[i]` / `candidates[i]` for an item
    the featurizer refuses (unknown id without text, blank or oversized text).
    """
    catalog = featurizer.catalog
    history = []
    for index, item in enumerate(context):
        tokens = catalog.get(item.item_id) or featurizer.item_tokens(item.item_id, item.text, f"context[{index}]")
        history.append(ContextEntry(tokens, max(int(item.count), 1), item_key(item.item_id, item.text)))
    keyed = []
    for index, item in enumerate(candidates):
        tokens = catalog.get(item.item_id) or featurizer.item_tokens(item.item_id, item.text, f"candidates[{index}]")
        keyed.append((item_key(item.item_id, item.text), tokens))
    pairs = featurizer.build_pairs(history, keyed)
    return PairRows(featurizer, pairs.context, pairs.candidates)


class CrossEncoderPipeline:
    """Score, Rank and raw-tensor inference through the cross-encoder's instance."""

    def __init__(
        self,
        featurizer: Featurizer,
        instance: "Instance",
        limits: ServerConfig,
        model_name: str,
        model_version: str,
        vocab_size: int | None = None,
    ) -> None:
        """`vocab_size`: token ids the model can embed (its embedding table's rows; the model version
        checks it at load); None: the tokenizer's size."""
        self.featurizer = featurizer
        self.instance = instance
        self.limits = limits
        self.model_name = model_name
        self.model_version = model_version
        self.vocab_size = vocab_size if vocab_size is not None else featurizer.tokenizer.get_vocab_size()

    @property
    def max_length(self) -> int:
        """Longest pair the model is fed, in tokens (specials included)."""
        return self.featurizer.config.max_length

    @property
    def max_rows(self) -> int:
        """Most candidates of one Score/Rank request, and most rows of one ModelInfer request."""
        return self.limits.max_candidates

    async def score(
        self, context: Sequence[ContextRef], candidates: Sequence[ItemRef], timeout: float | None = None
    ) -> Scores:
        """Purchase probability and expected quantity of each candidate, in request order.

        Raises EdgeRecError: INVALID_ARGUMENT naming the field, and the batcher's
        RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED / UNAVAILABLE / INTERNAL.
        """
        self.check_sizes(context, candidates)
        return await self.scores(context, candidates, timeout)

    async def rank(
        self, context: Sequence[ContextRef], candidates: Sequence[ItemRef], k: int, timeout: float | None = None
    ) -> tuple[np.ndarray, Scores]:
        """Indices (int64 [k]) of the k most likely purchases, best first (ties keep request order), and all scores."""
        self.check_sizes(context, candidates)
        if not 1 <= k <= len(candidates):
            raise invalid("k", f"must be between 1 and the number of candidates ({len(candidates)}), got {k}")
        scores = await self.scores(context, candidates, timeout)
        order = np.argsort(-scores.purchase_probability, kind="stable")[:k]
        return order, scores

    async def scores(self, context: Sequence[ContextRef], candidates: Sequence[ItemRef], timeout: float | None) -> Scores:
        """`score` without the size checks (the two-stage pipeline has made them)."""
        rows = featurize(self.featurizer, context, candidates)
        probabilities, quantities = await self.instance.submit(rows, rows.lengths, timeout)  # signature order
        return Scores(probabilities, quantities, self.model_name, self.model_version)

    async def infer(
        self, tensors: dict[str, np.ndarray], timeout: float | None = None, field: str = "inputs"
    ) -> dict[str, np.ndarray]:
        """Run ready token-id rows: `tensors` holds every cross-encoder input (int64 [batch, sequence]);
        returns every output (float32 [batch]) by name. Each row is one pair in the batcher."""
        rows = self.token_rows(tensors, field)
        outputs = await self.instance.submit(rows, rows.lengths, timeout)
        return dict(zip(CROSS_ENCODER.output_names, outputs))

    # -- validation -----------------------------------------------------------
    def check_sizes(self, context: Sequence[ContextRef], candidates: Sequence[ItemRef]) -> None:
        """INVALID_ARGUMENT for no candidates, or more candidates or context items than the server's limits."""
        limits = self.limits
        if not candidates:
            raise invalid("candidates", "at least one candidate is required")
        if len(candidates) > limits.max_candidates:
            raise invalid("candidates", f"{len(candidates)} candidates; at most {limits.max_candidates} per request")
        self.check_context(context)

    def check_context(self, context: Sequence[ContextRef]) -> None:
        """INVALID_ARGUMENT for more context items than `max_context_items`."""
        limits = self.limits
        if len(context) > limits.max_context_items:
            raise invalid("context", f"{len(context)} items; at most {limits.max_context_items} per request")

    def token_rows(self, tensors: dict[str, np.ndarray], field: str = "inputs") -> TokenRows:
        """Check token-id tensors the way the model needs them; each row ends at its last attended token."""
        ids_name, mask_name, types_name = CROSS_ENCODER.input_names
        input_ids, attention_mask, token_type_ids = (tensors[name] for name in CROSS_ENCODER.input_names)
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape or token_type_ids.shape != input_ids.shape:
            raise invalid(field, f"{', '.join(CROSS_ENCODER.input_names)} must share one [batch, sequence] shape")
        rows, width = input_ids.shape
        if not 1 <= rows <= self.max_rows:
            raise invalid(field, f"batch of {rows} rows; between 1 and {self.max_rows} are accepted")
        if not 1 <= width <= self.max_length:
            raise invalid(field, f"sequence of {width} tokens; between 1 and {self.max_length} are accepted")
        outside = (input_ids < 0) | (input_ids >= self.vocab_size)
        if outside.any():
            row = int(np.flatnonzero(outside.any(axis=1))[0])
            raise invalid(
                f"{field}.{ids_name}", f"row {row} has token ids outside [0, {self.vocab_size}), the ids the model embeds"
            )
        if not np.isin(attention_mask, (0, 1)).all():
            raise invalid(f"{field}.{mask_name}", "values must be 0 or 1")
        if not np.isin(token_type_ids, (0, 1)).all():
            raise invalid(f"{field}.{types_name}", "values must be 0 or 1")
        attended = attention_mask.astype(bool)
        if not attended.any(axis=1).all():
            empty = int(np.flatnonzero(~attended.any(axis=1))[0])
            raise invalid(f"{field}.{mask_name}", f"row {empty} attends to no token")
        broken = self.featurizer.layout_errors(input_ids, attention_mask, token_type_ids)
        if broken is not None:
            name, row, rule = broken
            raise invalid(f"{field}.{name}", f"row {row} {rule}; a row is {ROW_LAYOUT}")
        lengths = attended.sum(axis=1)
        ordered = {name: tensors[name] for name in CROSS_ENCODER.input_names}
        return TokenRows(ordered, lengths.astype(np.int64), pad_values(self.featurizer))
