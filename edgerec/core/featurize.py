"""Turns (user context, candidate item) into model inputs, the same way in training and serving.

The model reads `[CLS] context [SEP] candidate [SEP]`. The context lists the
customer's distinct past items, most recently bought first, each written as
`"<n>x <item text> ;"` where n is how many earlier baskets held the item.
The candidate is written the same way, `"<n>x <item text>"`, with n = 0 for an
item the customer never bought: repeat buying dominates this kind of shop,
and a history is far longer than the ~5 items the context can show, so the
candidate carries its own repeat count (two tokens) whether or not it made it
into the context. Items are added until the context budget
(`max_length - 3 - max_item_tokens - COUNT_TOKENS`) is full, so the candidate
always fits.

Known items are tokenized once (the bundle's catalog holds their token ids);
only free text is tokenized per request. Pairs are padded to the longest pair
of their batch, never to `max_length`.

Item text is read as plain text, one rule for every text (catalog items at
export, free text per request, context items and candidates alike;
`Featurizer.encode_texts`): the tokenizer's normalizer, its word splitter and
its vocabulary model only, never its added/special-token matcher, so a text
holding "[SEP]" or "[CLS]" is read as those characters and cannot change the
pair's structure; an id of a special token never comes out of text (one that
would is read as [UNK]). Free text must mean something to the model
(`Featurizer.item_tokens`): once cut to `max_item_tokens`, at least one of its
tokens must be one the model knows (not [UNK]); text empty after
normalization, or only of words the vocabulary cannot spell (emoji, a
512-letter word), is refused. Text that is partly [UNK] is scored: the real
catalog has no [UNK] at all, but measured on the real model, a known word
followed by eight [UNK] still moves the score over a third of the range
clean words do, so such text carries signal; all-[UNK] text gets one constant
score whatever it says.

`ROW_LAYOUT` is the row layout the model reads, and `Featurizer.layout_errors`
checks ready token-id rows against it (KServe ModelInfer), vectorized.

`Featurizer.build_pairs` is the one pair builder: training, evaluation, the
export's gate, the server and the tests all turn (history, candidates) into
token rows through it, so they agree token for token. An item is identified
by its `item_key` (the catalog id, else its free text): a candidate's repeat
count is the count of the newest history entry with the same key.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from edgerec.core.errors import invalid
from edgerec.core.settings import setting
from edgerec.core.signatures import CROSS_ENCODER

TokenIds = tuple[int, ...]
COUNT_TOKENS = 3  # room reserved for a candidate's "<n>x" prefix (n <= 999)

# The one description of a row as the cross-encoder reads it (signatures, README and KServe errors quote it).
ROW_LAYOUT = (
    "[CLS] context [SEP] candidate [SEP] then padding: attention_mask 1s then 0s; token_type_ids 0 up to the "
    "first [SEP], 1 after it; the context may be empty, the candidate holds a token the model knows (not [UNK]); "
    "no [CLS], [SEP], [PAD] or [MASK] elsewhere"
)


@dataclasses.dataclass(frozen=True)
class FeaturizerConfig:
    """How (context, candidate) pairs become token ids; saved in checkpoints and bundles."""

    max_length: int = setting(
        64,
        "tokens in one (context, candidate) pair, specials included. 64, not 128: a pair's CPU cost is about "
        "linear in its tokens (int8, one thread, AVX-512 VNNI: 1.0 ms at 64, 2.2 ms at 128) and the context "
        "still shows the ~5 newest items; with 450 training steps the cross-encoder scored NDCG@10 0.440 on the "
        "test subsample at 64 against 0.413 at 128 with 250 steps (README, 'The cross-encoder's pair length')",
    )
    max_item_tokens: int = setting(
        16, "tokens kept of one item's text (candidate or context entry); the longest title in the shop data has 13"
    )
    max_text_chars: int = setting(512, "longest free text accepted for one item, in characters")

    @property
    def context_budget(self) -> int:
        """Tokens left for the context once the candidate, its count and 3 special tokens are reserved."""
        return self.max_length - 3 - self.max_item_tokens - COUNT_TOKENS


def item_key(item_id: str = "", text: str = "") -> str:
    """What makes two references the same item: the catalog id, else the free text."""
    return item_id if item_id else "\0" + text


@dataclasses.dataclass(frozen=True)
class ContextEntry:
    """One past item of a customer: its token ids, how many earlier baskets held it, and its `item_key`."""

    tokens: TokenIds
    count: int = 1
    key: str = ""


@dataclasses.dataclass(frozen=True)
class PairSet:
    """One customer's pairs: the context shared by every candidate, and each candidate's tokens (count included)."""

    context: TokenIds
    candidates: tuple[TokenIds, ...]

    def pairs(self) -> list[tuple[TokenIds, TokenIds]]:
        return [(self.context, candidate) for candidate in self.candidates]


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
        """The cross-encoder's feeds, by its signature's input names."""
        return dict(zip(CROSS_ENCODER.input_names, (self.input_ids, self.attention_mask, self.token_type_ids)))


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
        self.unk_id = _special_id(tokenizer, "[UNK]")
        # Ids that text never yields: every added token flagged special ([PAD], [CLS], [SEP], [MASK], ...).
        self.special_ids = frozenset(
            token_id for token_id, token in tokenizer.get_added_tokens_decoder().items() if token.special
        ) | {self.cls_id, self.sep_id, self.pad_id, self.unk_id}
        self._structural_ids = np.array(sorted(self.special_ids - {self.unk_id}), dtype=np.int64)
        self.item_sep_ids = self.plain_tokens(";")
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
    def plain_tokens(self, text: str) -> TokenIds:
        """Token ids of `text` read as plain text: normalized, split into words, each word spelled by the
        vocabulary model (WordPiece), never matched against added or special tokens; a special id other
        than [UNK] that the model would give (a tokenizer that keeps "[SEP]" as one word) becomes [UNK]."""
        tokenizer = self.tokenizer
        if tokenizer.normalizer is not None:
            text = tokenizer.normalizer.normalize_str(text)
        words = tokenizer.pre_tokenizer.pre_tokenize_str(text) if tokenizer.pre_tokenizer is not None else [(text, None)]
        special, unk = self.special_ids, self.unk_id
        return tuple(
            unk if token.id in special else token.id for word, _ in words for token in tokenizer.model.tokenize(word)
        )

    def encode_texts(self, texts: Sequence[str]) -> list[TokenIds]:
        """Token ids of item texts read as plain text (`plain_tokens`), cut to `max_item_tokens`.

        The one text encoding: the export's catalog (`save_catalog`), training and the server's free text.
        """
        limit = self.config.max_item_tokens
        return [self.plain_tokens(text)[:limit] for text in texts]

    def item_tokens(self, item_id: str = "", text: str = "", field: str = "item") -> TokenIds:
        """Token ids for an item: the catalog's for a known id, else its free text's (`encode_texts`).

        Raises INVALID_ARGUMENT naming `field` for an unknown id without text,
        for text that is blank or longer than `max_text_chars`, and for text
        the model cannot read: no token it knows (only [UNK], or nothing left
        after normalization) among the `max_item_tokens` it is fed.
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
        if all(token == self.unk_id for token in tokens):
            raise invalid(
                field,
                "text has no tokens the model knows: nothing is left of it once normalized, or its "
                f"first {self.config.max_item_tokens} tokens are all [UNK] (words the vocabulary cannot spell, such as emoji)",
            )
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

    def build_pairs(self, history: Sequence[ContextEntry], candidates: Sequence[tuple[str, TokenIds]]) -> PairSet:
        """The one pair builder: the context of `history` (newest first) and each `(item_key, tokens)` candidate.

        A candidate's "<n>x" is the count of the newest history entry with its
        key (0: new to the customer), whether or not that entry fit in the context.
        """
        bought: dict[str, int] = {}
        for entry in history:
            bought.setdefault(entry.key, entry.count)  # the newest entry wins if an item repeats
        return PairSet(
            self.context_tokens(history),
            tuple(self.candidate_tokens(tokens, bought.get(key, 0)) for key, tokens in candidates),
        )

    def catalog_pairs(
        self, history: Sequence[tuple[str, int]], candidates: Sequence[str]
    ) -> list[tuple[TokenIds, TokenIds]]:
        """`build_pairs` for a history (newest first, with counts) and candidates that are catalog ids."""
        entries = [ContextEntry(self.catalog[item], count, item_key(item)) for item, count in history]
        return self.build_pairs(entries, [(item_key(item), self.catalog[item]) for item in candidates]).pairs()

    def _count_tokens(self, count: int, minimum: int = 1) -> TokenIds:
        count = min(max(minimum, int(count)), 999)
        if count not in self._count_ids:
            self._count_ids[count] = self.plain_tokens(f"{count}x")
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

    def layout_errors(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> tuple[str, int, str] | None:
        """The first row of ready token-id rows that breaks `ROW_LAYOUT`, as (input name, row, rule broken);
        None if every row follows it. Vectorized: a few array passes over the whole batch.

        The arrays are int64 [batch, sequence] with ids already in the vocabulary and masks and types of 0/1.
        """
        ids_name, mask_name, types_name = CROSS_ENCODER.input_names
        positions = np.arange(input_ids.shape[1])
        attended = attention_mask.astype(bool)
        length = attended.sum(axis=1)  # real tokens per row
        first_length = (attended & (token_type_ids == 0)).sum(axis=1)  # [CLS] context [SEP]
        second_length = length - first_length  # candidate [SEP]
        first_end = np.maximum(first_length - 1, 0)[:, None]
        last = np.maximum(length - 1, 0)[:, None]
        inner = attended & (positions > 0) & (positions != first_end) & (positions != last)
        candidate = inner & (positions >= first_length[:, None])
        rules = (
            (mask_name, (attended != (positions < length[:, None])).any(axis=1),
             "has a 0 before a 1: the mask must be 1 for every real token, then 0"),
            (ids_name, input_ids[:, 0] != self.cls_id, "does not start with [CLS]"),
            (types_name, (attended & (token_type_ids.astype(bool) != (positions >= first_length[:, None]))).any(axis=1),
             "has token types that are not 0s then 1s over its real tokens"),
            (types_name, second_length == 0, "has no candidate segment: no real token has token type 1"),
            (ids_name, (first_length < 2) | (np.take_along_axis(input_ids, first_end, axis=1)[:, 0] != self.sep_id),
             "does not end its context segment (token type 0) with [SEP]"),
            (ids_name, np.take_along_axis(input_ids, last, axis=1)[:, 0] != self.sep_id,
             "does not end its candidate segment (token type 1) with [SEP]"),
            (ids_name, second_length < 2, "has no candidate token before the candidate's [SEP]"),
            (ids_name, (inner & np.isin(input_ids, self._structural_ids)).any(axis=1),
             "has [CLS], [SEP], [PAD] or [MASK] inside the context or the candidate"),
            (ids_name, ~(candidate & (input_ids != self.unk_id)).any(axis=1),
             "has no candidate token the model knows: all are [UNK]"),
        )
        broken = np.stack([bad for _, bad, _ in rules], axis=1)  # [rows, rules]
        failing = np.flatnonzero(broken.any(axis=1))
        if not len(failing):
            return None
        row = int(failing[0])
        name, _, rule = rules[int(np.argmax(broken[row]))]
        return name, row, rule

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
