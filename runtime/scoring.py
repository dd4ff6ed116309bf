"""The serving core: one loaded bundle version that turns requests into scores.

An `Engine` holds a bundle's featurizer, its ONNX backend and a batcher, and
knows nothing of gRPC. `score`/`rank` take a user context and candidates
(anything with `item_id`/`text`, plus `count` for context items: protobuf
messages work as they are), validate them with INVALID_ARGUMENT errors that
name the field, look known items up in the bundle's pre-tokenized catalog,
tokenize only free text, and submit the pairs to the batcher. `infer` takes
ready token-id tensors (the KServe v2 path) and goes through the same
batcher, each row one pair. Engines are loaded, verified and warmed up
before they serve, so a hot reload can swap one for another atomically.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from edgerec.runtime.backend import OnnxBackend
from edgerec.runtime.batcher import Batcher, Segment
from edgerec.runtime.bundle import Bundle, open_bundle
from edgerec.runtime.config import Config
from edgerec.runtime.errors import invalid
from edgerec.runtime.featurize import ContextEntry, EncodedBatch, Featurizer, FeaturizerConfig, TokenIds
from edgerec.runtime.metrics import Metrics
from edgerec.settings import from_jsonable

MAX_CONTEXT_COUNT = 999  # the featurizer writes counts up to this


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
    """Per-pair outputs in request order, and the model that produced them."""

    purchase_probability: np.ndarray
    expected_quantity: np.ndarray
    model_name: str
    model_version: str


class PairRows:
    """Batcher payload of a Score/Rank request: one context shared by every candidate."""

    __slots__ = ("featurizer", "context", "candidates", "lengths")

    def __init__(self, featurizer: Featurizer, context: TokenIds, candidates: list[TokenIds]) -> None:
        self.featurizer = featurizer
        self.context = context
        self.candidates = candidates
        lengths = np.fromiter(map(len, candidates), dtype=np.int64, count=len(candidates))
        self.lengths = lengths + (len(context) + 3)

    def pack(self, indices: np.ndarray) -> EncodedBatch:
        context, candidates = self.context, self.candidates
        return self.featurizer.pack([(context, candidates[i]) for i in indices.tolist()])


class TokenRows:
    """Batcher payload of a ModelInfer request: rows of token ids, each cut after its last attended token."""

    __slots__ = ("input_ids", "attention_mask", "token_type_ids", "lengths")

    def __init__(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray, lengths: np.ndarray):
        self.input_ids = input_ids
        self.attention_mask = attention_mask
        self.token_type_ids = token_type_ids
        self.lengths = lengths

    def pack(self, indices: np.ndarray) -> EncodedBatch:
        width = int(self.lengths[indices].max())
        return EncodedBatch(
            self.input_ids[indices, :width], self.attention_mask[indices, :width], self.token_type_ids[indices, :width]
        )


def pack_segments(segments: Sequence[Segment], pad_id: int) -> EncodedBatch:
    """One padded batch from the batcher's segments, rows in segment order."""
    if len(segments) == 1:
        return segments[0].payload.pack(segments[0].indices)
    parts = [segment.payload.pack(segment.indices) for segment in segments]
    rows = sum(len(part.input_ids) for part in parts)
    width = max(part.input_ids.shape[1] for part in parts)
    input_ids = np.full((rows, width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((rows, width), dtype=np.int64)
    token_type_ids = np.zeros((rows, width), dtype=np.int64)
    row = 0
    for part in parts:
        count, length = part.input_ids.shape
        input_ids[row : row + count, :length] = part.input_ids
        attention_mask[row : row + count, :length] = part.attention_mask
        token_type_ids[row : row + count, :length] = part.token_type_ids
        row += count
    return EncodedBatch(input_ids, attention_mask, token_type_ids)


class Engine:
    """A verified, warmed-up bundle version with its own batcher."""

    def __init__(
        self,
        bundle: Bundle,
        featurizer: Featurizer,
        backend: OnnxBackend,
        config: Config,
        metrics: Metrics,
        unpacked_to: Path | None = None,
    ) -> None:
        self.bundle = bundle
        self.featurizer = featurizer
        self.backend = backend
        self.config = config
        self.vocab_size = featurizer.tokenizer.get_vocab_size()
        self._unpacked_to = unpacked_to
        pad_id = featurizer.pad_id
        self.batcher = Batcher(
            config.batcher,
            prepare=lambda segments: pack_segments(segments, pad_id),
            execute=backend.run,
            metrics=metrics,
            name=f"{bundle.name}-{bundle.version}",
        )

    @classmethod
    def load(cls, path: Path, config: Config, metrics: Metrics) -> "Engine":
        """Open (unpacking a .tar.gz), verify, load and warm up a bundle. Blocking: run it in a thread."""
        path = Path(path)
        unpacked_to = Path(tempfile.mkdtemp(prefix="edgerec-bundle-")) if path.is_file() else None
        try:
            bundle = open_bundle(path, unpacked_to)
            featurizer_config = from_jsonable(FeaturizerConfig, bundle.manifest["featurizer"])
            featurizer = Featurizer.from_files(bundle.tokenizer_path, featurizer_config, bundle.catalog_path)
            backend = OnnxBackend.load(bundle, config.backend)
            if config.backend.warm_up:
                backend.warm_up(featurizer.pad_id, config.batcher.max_batch_size, featurizer_config.max_length)
        except BaseException:
            if unpacked_to is not None:
                shutil.rmtree(unpacked_to, ignore_errors=True)
            raise
        return cls(bundle, featurizer, backend, config, metrics, unpacked_to)

    # -- identity -----------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.bundle.name

    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def max_length(self) -> int:
        return self.featurizer.config.max_length

    # -- lifecycle ----------------------------------------------------------
    async def start(self) -> "Engine":
        await self.batcher.start()
        return self

    @property
    def ready(self) -> bool:
        return self.batcher.accepting

    async def retire(self, timeout: float | None = None) -> bool:
        """Finish admitted work, then free the engine. True if everything finished in time."""
        finished = await self.batcher.drain(timeout)
        self.backend.close()
        if self._unpacked_to is not None:
            shutil.rmtree(self._unpacked_to, ignore_errors=True)
        return finished

    # -- requests -----------------------------------------------------------
    async def score(
        self, context: Sequence[ContextRef], candidates: Sequence[ItemRef], timeout: float | None = None
    ) -> Scores:
        """Purchase probability and expected quantity of each candidate, in request order."""
        self._check_sizes(context, candidates)
        rows = self._featurize(context, candidates)
        probabilities, quantities = await self.batcher.submit(rows, rows.lengths, timeout)
        return Scores(probabilities, quantities, self.model_name, self.version)

    async def rank(
        self, context: Sequence[ContextRef], candidates: Sequence[ItemRef], k: int, timeout: float | None = None
    ) -> tuple[np.ndarray, Scores]:
        """Indices of the k most likely purchases, best first (ties keep request order), and all scores."""
        self._check_sizes(context, candidates)
        if not 1 <= k <= len(candidates):
            raise invalid("k", f"must be between 1 and the number of candidates ({len(candidates)}), got {k}")
        rows = self._featurize(context, candidates)
        probabilities, quantities = await self.batcher.submit(rows, rows.lengths, timeout)
        order = np.argsort(-probabilities, kind="stable")[:k]
        return order, Scores(probabilities, quantities, self.model_name, self.version)

    async def infer(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray,
        timeout: float | None = None,
        field: str = "inputs",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run ready token-id rows (int64 [batch, sequence]); each row is one pair in the batcher."""
        rows = self._token_rows(input_ids, attention_mask, token_type_ids, field)
        return await self.batcher.submit(rows, rows.lengths, timeout)

    # -- validation and featurization ---------------------------------------
    def _check_sizes(self, context: Sequence[ContextRef], candidates: Sequence[ItemRef]) -> None:
        limits = self.config.server
        if not candidates:
            raise invalid("candidates", "at least one candidate is required")
        if len(candidates) > limits.max_candidates:
            raise invalid("candidates", f"{len(candidates)} candidates; at most {limits.max_candidates} per request")
        if len(context) > limits.max_context_items:
            raise invalid("context", f"{len(context)} items; at most {limits.max_context_items} per request")

    def _featurize(self, context: Sequence[ContextRef], candidates: Sequence[ItemRef]) -> PairRows:
        featurizer = self.featurizer
        catalog = featurizer.catalog
        history = []
        bought: dict[str, int] = {}  # item key -> earlier baskets that held it; the newest entry wins
        for index, item in enumerate(context):
            tokens = catalog.get(item.item_id) or featurizer.item_tokens(item.item_id, item.text, f"context[{index}]")
            count = min(max(int(item.count), 1), MAX_CONTEXT_COUNT)
            history.append(ContextEntry(tokens, count))
            bought.setdefault(_item_key(item), count)
        candidate_tokens = []
        for index, item in enumerate(candidates):
            tokens = catalog.get(item.item_id) or featurizer.item_tokens(item.item_id, item.text, f"candidates[{index}]")
            candidate_tokens.append(featurizer.candidate_tokens(tokens, bought.get(_item_key(item), 0)))
        return PairRows(featurizer, featurizer.context_tokens(history), candidate_tokens)

    def _token_rows(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray, field: str
    ) -> TokenRows:
        """Check token-id tensors the way the model needs them; each row ends at its last attended token."""
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape or token_type_ids.shape != input_ids.shape:
            raise invalid(field, "input_ids, attention_mask and token_type_ids must share one [batch, sequence] shape")
        rows, width = input_ids.shape
        if not 1 <= rows <= self.config.server.max_candidates:
            raise invalid(field, f"batch of {rows} rows; between 1 and {self.config.server.max_candidates} are accepted")
        if not 1 <= width <= self.max_length:
            raise invalid(field, f"sequence of {width} tokens; between 1 and {self.max_length} are accepted")
        if input_ids.min() < 0 or input_ids.max() >= self.vocab_size:
            raise invalid(f"{field}.input_ids", f"token ids must be in [0, {self.vocab_size})")
        if not np.isin(attention_mask, (0, 1)).all():
            raise invalid(f"{field}.attention_mask", "values must be 0 or 1")
        if not np.isin(token_type_ids, (0, 1)).all():
            raise invalid(f"{field}.token_type_ids", "values must be 0 or 1")
        attended = attention_mask.astype(bool)
        if not attended.any(axis=1).all():
            empty = int(np.flatnonzero(~attended.any(axis=1))[0])
            raise invalid(f"{field}.attention_mask", f"row {empty} attends to no token")
        lengths = width - np.argmax(attended[:, ::-1], axis=1)
        return TokenRows(input_ids, attention_mask, token_type_ids, lengths.astype(np.int64))


def _item_key(item: ItemRef) -> str:
    """What makes a context item and a candidate the same item: the catalog id, else the free text."""
    return item.item_id if item.item_id else "\0" + item.text
