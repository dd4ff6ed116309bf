"""Turns (user context, candidate item) into model inputs, the same way in training and serving.

The model reads `[CLS] context [SEP] candidate [SEP]`. The context lists the
customer's distinct past items, most recently bought first, each written as
`"<n>x <item text> ;"` where n is how many earlier baskets held the item.
The candidate is written the same way, `"<n>x <item text>"`, with n = 0 for an
item the customer never bought: repeat buying dominates this kind of shop,
and a history is far longer than the ~12 items the context can show, so the
candidate carries its own repeat count (two tokens) whether or not it made it
into the context. Items are added until the context budget
(`max_length - 3 - max_item_tokens - COUNT_TOKENS`) is full, so the candidate
always fits.

Known items are tokenized once (the bundle's catalog holds their token ids);
only free text is tokenized per request. Pairs are padded to the longest pair
of their batch, never to `max_length`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from edgerec.runtime.errors import invalid
from edgerec.settings import setting

TokenIds = tuple[int, ...]
COUNT_TOKENS = 3  # room reserved for a candidate's "<n>x" prefix (n <= 999)


@dataclasses.dataclass(frozen=True)
class FeaturizerConfig:
    """How (context, candidate) pairs become token ids; saved in checkpoints and bundles."""

    max_length: int = setting(128, "tokens in one (context, candidate) pair, specials included")
    max_item_tokens: int = setting(24, "tokens kept of one item's text (candidate or context entry)")
    max_text_chars: int = setting(512, "longest free text accepted for one item, in characters")

    @property
    def context_budget(self) -> int:
        """Tokens left for the context once the candidate, its count and 3 special tokens are reserved."""
        return self.max_length - 3 - self.max_item_tokens - COUNT_TOKENS


@dataclasses.dataclass(frozen=True)
class ContextEntry:
    """One past item of a customer: its token ids and how many earlier baskets held it."""

    tokens: TokenIds
    count: int = 1


@dataclasses.dataclass(frozen=True)
class EncodedBatch:
    """Padded model inputs for a batch of pairs (int64, shape [batch, longest pair])."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def padded_tokens(self) -> int:
        return int(self.attention_mask.size)

    def as_feeds(self) -> dict[str, np.ndarray]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "token_type_ids": self.token_type_ids,
        }


class Featurizer:
    """Tokenizes items once, builds contexts and packs pairs into padded arrays."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        config: FeaturizerConfig = FeaturizerConfig(),
        catalog: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.cls_id = _special_id(tokenizer, "[CLS]")
        self.sep_id = _special_id(tokenizer, "[SEP]")
        self.pad_id = _special_id(tokenizer, "[PAD]")
        self.item_sep_ids = tuple(tokenizer.encode(";", add_special_tokens=False).ids)
        self._count_ids: dict[int, TokenIds] = {}
        self.catalog: dict[str, TokenIds] = {
            item_id: tuple(ids[: config.max_item_tokens]) for item_id, ids in (catalog or {}).items()
        }

    @classmethod
    def from_files(
        cls, tokenizer_path: Path, config: FeaturizerConfig = FeaturizerConfig(), catalog_path: Path | None = None
    ) -> "Featurizer":
        """Load `tokenizer.json` and, if given, a catalog written by `save_catalog`."""
        catalog = None
        if catalog_path is not None:
            catalog = {item_id: entry["token_ids"] for item_id, entry in load_catalog(catalog_path).items()}
        return cls(Tokenizer.from_file(str(tokenizer_path)), config, catalog)

    # -- items -------------------------------------------------------------
    def encode_texts(self, texts: Sequence[str]) -> list[TokenIds]:
        """Token ids of item texts, without special tokens, cut to `max_item_tokens`."""
        if not texts:
            return []
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [tuple(e.ids[: self.config.max_item_tokens]) for e in encodings]

    def item_tokens(self, item_id: str = "", text: str = "", field: str = "item") -> TokenIds:
        """Token ids for an item: the catalog's for a known id, else its free text's.

        Raises INVALID_ARGUMENT naming `field` for an unknown id without text,
        or for text that is empty or longer than `max_text_chars`.
        """
        if item_id and item_id in self.catalog:
            return self.catalog[item_id]
        if not text:
            if item_id:
                raise invalid(field, f"unknown item id {item_id!r} and no text to score it by")
            raise invalid(field, "neither an item id nor a text was given")
        if len(text) > self.config.max_text_chars:
            raise invalid(field, f"text has {len(text)} characters; at most {self.config.max_text_chars} are accepted")
        if not text.strip():
            raise invalid(field, "text is blank")
        tokens = self.encode_texts([text])[0]
        if not tokens:
            raise invalid(field, "text has no tokens the model knows")
        return tokens

    # -- context and pairs -------------------------------------------------
    def context_tokens(self, history: Iterable[ContextEntry]) -> TokenIds:
        """The context for a customer's history (newest first), cut to the context budget."""
        budget = self.config.context_budget
        out: list[int] = []
        for entry in history:
            piece = self._count_tokens(entry.count) + entry.tokens + self.item_sep_ids
            if len(out) + len(piece) > budget:
                break
            out.extend(piece)
        return tuple(out)

    def candidate_tokens(self, tokens: TokenIds, times_bought: int) -> TokenIds:
        """A candidate as the model reads it: "<n>x" (earlier baskets that held it; 0: new to the customer) + its text."""
        return self._count_tokens(times_bought, minimum=0) + tokens

    def catalog_pairs(
        self, history: Sequence[tuple[str, int]], candidates: Sequence[str]
    ) -> list[tuple[TokenIds, TokenIds]]:
        """(context, candidate) pairs when history (newest first, with counts) and candidates are catalog ids."""
        context = self.context_tokens(ContextEntry(self.catalog[item], count) for item, count in history)
        bought = dict(reversed(history))  # the newest entry wins if an id repeats
        return [(context, self.candidate_tokens(self.catalog[item], bought.get(item, 0))) for item in candidates]

    def _count_tokens(self, count: int, minimum: int = 1) -> TokenIds:
        count = min(max(minimum, int(count)), 999)
        if count not in self._count_ids:
            self._count_ids[count] = tuple(self.tokenizer.encode(f"{count}x", add_special_tokens=False).ids)
        return self._count_ids[count]

    def pair_length(self, context: TokenIds, candidate: TokenIds) -> int:
        return len(context) + len(candidate) + 3

    def pack(self, pairs: Sequence[tuple[TokenIds, TokenIds]]) -> EncodedBatch:
        """Pad pairs of (context tokens, candidate tokens) to the batch's longest pair."""
        if not pairs:
            raise ValueError("pack() needs at least one pair")
        width = max(self.pair_length(c, d) for c, d in pairs)
        input_ids = np.full((len(pairs), width), self.pad_id, dtype=np.int64)
        attention = np.zeros((len(pairs), width), dtype=np.int64)
        token_types = np.zeros((len(pairs), width), dtype=np.int64)
        for row, (context, candidate) in enumerate(pairs):
            first = [self.cls_id, *context, self.sep_id]
            second = [*candidate, self.sep_id]
            length = len(first) + len(second)
            input_ids[row, :length] = first + second
            attention[row, :length] = 1
            token_types[row, len(first) : length] = 1
        return EncodedBatch(input_ids, attention, token_types)


def _special_id(tokenizer: Tokenizer, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise ValueError(f"tokenizer has no {token} token; edgerec needs a BERT WordPiece tokenizer")
    return token_id


def save_catalog(path: Path, items: Mapping[str, str], featurizer: Featurizer) -> None:
    """Write the item catalog: item id -> {text, token_ids}, tokenized once here."""
    ids = list(items)
    tokens = featurizer.encode_texts([items[i] for i in ids])
    catalog = {item_id: {"text": items[item_id], "token_ids": list(tok)} for item_id, tok in zip(ids, tokens)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(catalog, sort_keys=True, separators=(",", ":")))


def load_catalog(path: Path) -> dict[str, dict]:
    """Read a catalog written by `save_catalog`."""
    return json.loads(Path(path).read_text())
