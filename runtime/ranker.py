"""The two-tower ranker of a bundle, scoring one customer's candidates (the serving path's first stage).

A bundle that holds the ranker (`item_tower` and `ranker` models, the
`item_embeddings` and `behaviour_tables` data; see `edgerec.core.bundle`)
scores N candidates of one customer in one call of the `RANKER` graph: the
user side (pooling over the history's item embeddings) runs once and the
head runs over all N rows. What goes in is built by the same code as in
training and the export's gate: `core.ranker_inputs` for the arrays and
`core.behaviour.behaviour_features` for φ, from the request's facts
(counts, days since the last purchase; a missing fact takes its documented
default). Catalog items take their row of the bundle's embedding matrix,
which the export computed with the exported item-tower variant the server
loads; free text goes through that tower, one item per call as the export
ran it (so a catalog text typed as free text gets exactly its catalog row),
and its embedding is cached by text (least recently used first out).

Two steps, so that the request path can batch: `rows(history, candidates)`
checks a request on the event loop (ids, free text, days) and returns its
`CustomerRows`, the batcher's payload (one unit per candidate);
`CustomerRows.run(indices)` scores some of its candidates in the batcher's
worker thread: free text through the tower (cached), the history arrays,
φ of those candidates, one ranker call. `score` does both at once. A
request with free text feeds the ranker a small matrix of just the rows it
uses, never a copy of the catalog's.

Knows nothing of gRPC or batching: the request path composes it.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
from collections.abc import Sequence

import numpy as np

from edgerec.core.behaviour import BehaviourTables, HistoryEntry, behaviour_features
from edgerec.core.bundle import Bundle
from edgerec.core.errors import EdgeRecError, ErrorCode
from edgerec.core.featurize import Featurizer, item_key, load_catalog
from edgerec.core.ranker_inputs import encode_item_texts, every_row, history_arrays, ranker_feeds
from edgerec.core.sessions import SessionConfig, create_session
from edgerec.core.signatures import ITEM_TOWER, RANKER

MAX_HISTORY = 200  # newest past items the user side reads (the training setting `RankerConfig.max_history`)
MIN_DAYS_AGO = 1.0 / 1440  # a purchase "0 days ago" (earlier today) is read as one minute ago: history is strictly past


@dataclasses.dataclass(frozen=True)
class RankedItem:
    """One item of a request: a catalog id, or free text for an item the catalog does not know."""

    item_id: str = ""
    text: str = ""


@dataclasses.dataclass(frozen=True)
class PastItem(RankedItem):
    """A past item of the customer: earlier baskets that held it (>= 1) and days since its last purchase
    (None: unknown, the documented default)."""

    count: int = 1
    days_ago: float | None = None


def days_ago_of(item: object, field: str) -> float | None:
    """A context item's days since its last purchase: `days_ago` (a float or None on plain objects; a
    protobuf message's optional field, unset -> None); 0 reads as `MIN_DAYS_AGO`. Raises INVALID_ARGUMENT
    naming `field` for a negative or non-finite value."""
    has = getattr(item, "HasField", None)
    if has is not None:
        value = item.days_ago if has("days_ago") else None
    else:
        value = getattr(item, "days_ago", None)
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise EdgeRecError(ErrorCode.INVALID_ARGUMENT, f"days_ago must be a finite number >= 0, got {value}", field)
    return max(value, MIN_DAYS_AGO)


class CustomerRows:
    """The ranker batcher's payload: one customer's history and candidates; one unit of work per candidate.

    `lengths` int64 [N] (ones: a candidate costs one row of the head); `run(indices)` scores those
    candidates (worker thread) -> the `RANKER` outputs in signature order (purchase logit, probability,
    log quantity, expected quantity), float32 [len(indices)] each.
    """

    __slots__ = ("scorer", "entries", "history_refs", "keys", "refs", "lengths", "pad_values")

    def __init__(self, scorer: "RankerScorer", entries, history_refs, keys, refs) -> None:
        self.scorer = scorer
        self.entries = entries  # HistoryEntry per past item, newest first
        self.history_refs = history_refs  # per past item: catalog row (int) or free text (str)
        self.keys = keys  # item_key per candidate
        self.refs = refs  # per candidate: catalog row (int) or free text (str); a numpy int64 array when all rows
        self.lengths = np.ones(len(keys), dtype=np.int64)
        self.pad_values: dict[str, int] = {}

    def run(self, indices: np.ndarray, alone: bool = True) -> tuple[np.ndarray, ...]:
        """`alone`: on the multi-threaded session (the batch's only request), else the single-threaded one."""
        return self.scorer._run(self, indices, alone)


class RankerFeeds:
    """A KServe ModelInfer call of the `ranker` model: ready feeds (one customer), one unit per candidate.
    `run(indices)` runs those candidates' rows with the whole history -> every output in signature order."""

    __slots__ = ("session", "feeds", "lengths", "pad_values")

    def __init__(self, session, feeds: dict[str, np.ndarray]) -> None:
        self.session = session
        self.feeds = feeds
        self.lengths = np.ones(len(feeds[RANKER.input_names[4]]), dtype=np.int64)
        self.pad_values: dict[str, int] = {}

    def run(self, indices: np.ndarray, alone: bool = True) -> tuple[np.ndarray, ...]:
        feeds = dict(self.feeds)
        for name in RANKER.input_names[4:]:  # candidate_embeddings, candidate_features: rows are candidates
            feeds[name] = self.feeds[name][indices]
        return tuple(self.session.run(list(RANKER.output_names), feeds))


class TowerFeeds:
    """A KServe ModelInfer call of the `item_tower` model: token-id rows, one unit per item.
    `run(indices)` embeds those rows in one call (padded as the client sent them) -> (item_embedding,)."""

    __slots__ = ("session", "feeds", "lengths", "pad_values")

    def __init__(self, session, feeds: dict[str, np.ndarray]) -> None:
        self.session = session
        self.feeds = feeds
        self.lengths = np.ones(len(feeds[ITEM_TOWER.input_names[0]]), dtype=np.int64)
        self.pad_values: dict[str, int] = {}

    def run(self, indices: np.ndarray, alone: bool = True) -> tuple[np.ndarray, ...]:
        feeds = {name: values[indices] for name, values in self.feeds.items()}
        return tuple(self.session.run(list(ITEM_TOWER.output_names), feeds))


class RankerScorer:
    """Scores candidates for one customer with a bundle's two-tower ranker (thread-safe)."""

    def __init__(
        self,
        bundle: Bundle,
        session_config: SessionConfig = SessionConfig(providers=("cpu",)),
        text_cache_size: int = 4096,
        featurizer: Featurizer | None = None,
    ) -> None:
        """`featurizer`: the bundle's, when the caller has loaded it already (else it is loaded here).
        Raises EdgeRecError NOT_FOUND if the bundle holds no ranker, FAILED_PRECONDITION if its
        embedding matrix does not have one row per catalog item or a model does not load."""
        featurizer = featurizer if featurizer is not None else bundle.featurizer()
        self.featurizer = featurizer
        self.item_ids = list(featurizer.catalog)  # catalog.json order: the rows of the embedding matrix
        self.texts = [entry["text"] for entry in load_catalog(bundle.catalog_path).values()]  # by row
        self.embeddings = np.load(bundle.data_path("item_embeddings"))
        if self.embeddings.shape[0] != len(self.item_ids):
            raise EdgeRecError(
                ErrorCode.FAILED_PRECONDITION,
                f"bundle {bundle.name} {bundle.version}: {self.embeddings.shape[0]} item embeddings for "
                f"{len(self.item_ids)} catalog items",
            )
        self.index = {item: row for row, item in enumerate(self.item_ids)}
        self.tables = BehaviourTables.load(bundle.data_path("behaviour_tables"))
        self.ranker_session = create_session(bundle.variant_path(RANKER.name), session_config, RANKER)
        # the same model on one thread, for batches whose requests run side by side (`run(..., alone=False)`)
        single = dataclasses.replace(session_config, intra_op_threads=1)
        self.ranker_single = create_session(bundle.variant_path(RANKER.name), single, RANKER).session
        self.tower_session = create_session(bundle.variant_path(ITEM_TOWER.name), session_config, ITEM_TOWER)
        self.precisions = {name: bundle.model(name).variant().precision for name in (ITEM_TOWER.name, RANKER.name)}
        self.ranker = self.ranker_session.session
        self.tower = self.tower_session.session
        self.text_cache_size = text_cache_size
        self._texts: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()

    def variants(self) -> dict[str, tuple[str, str]]:
        """Model name -> (variant precision, provider), as `ModelVersion.variants`."""
        opened = {ITEM_TOWER.name: self.tower_session, RANKER.name: self.ranker_session}
        return {name: (self.precisions[name], opened[name].provider) for name in opened}

    @property
    def catalog_size(self) -> int:
        return len(self.item_ids)

    def embed_text(self, text: str) -> np.ndarray:
        """float32 [dim]: the item tower's embedding of a free-text item, cached by text."""
        with self._lock:
            if text in self._texts:
                self._texts.move_to_end(text)
                return self._texts[text]
        ids, mask = encode_item_texts(self.featurizer, [text])  # one item: no padding, as the catalog's were run
        names = ITEM_TOWER.input_names
        (embedding,) = self.tower.run([ITEM_TOWER.output_names[0]], {names[0]: ids, names[1]: mask})
        embedding = embedding[0].astype(np.float32, copy=False)
        with self._lock:
            self._texts[text] = embedding
            while len(self._texts) > self.text_cache_size:
                self._texts.popitem(last=False)
        return embedding

    # -- requests -------------------------------------------------------------
    def _ref(self, item: RankedItem, field: str) -> int | str:
        """An item's catalog row, else its (checked) free text. Raises INVALID_ARGUMENT naming `field`
        for an unknown id without text, blank or oversized text, text the model cannot read."""
        row = self.index.get(item.item_id) if item.item_id else None
        if row is not None:
            return row
        self.featurizer.item_tokens(item.item_id, item.text, field)  # the cross-encoder's checks, same messages
        return item.text

    def history(self, history: Sequence[PastItem]) -> tuple[list[HistoryEntry], list[int | str]]:
        """The checked history: `HistoryEntry` rows and each item's catalog row or free text."""
        entries, refs = [], []
        for i, past in enumerate(history):
            refs.append(self._ref(past, f"context[{i}]"))
            days = days_ago_of(past, f"context[{i}].days_ago")
            entries.append(HistoryEntry(item_key(past.item_id, past.text), max(1, int(past.count)), days))
        return entries, refs

    def rows(self, history: Sequence[PastItem], candidates: Sequence[RankedItem]) -> CustomerRows:
        """Check one request (event loop, no model call) and return its batcher payload."""
        entries, history_refs = self.history(history)
        refs = [self._ref(c, f"candidates[{i}]") for i, c in enumerate(candidates)]
        keys = [item_key(c.item_id, c.text) for c in candidates]
        if all(isinstance(r, int) for r in refs):
            refs = np.asarray(refs, dtype=np.int64)
        return CustomerRows(self, entries, history_refs, keys, refs)

    def catalog_rows(self, history: Sequence[PastItem], rows: np.ndarray) -> CustomerRows:
        """The payload scoring catalog items by row (int64 [N], e.g. the whole catalog for Recommend)."""
        entries, history_refs = self.history(history)
        rows = np.asarray(rows, dtype=np.int64)
        keys = self.item_ids if every_row(rows, len(self.item_ids)) else [self.item_ids[r] for r in rows.tolist()]
        return CustomerRows(self, entries, history_refs, keys, rows)

    def score(
        self, history: Sequence[PastItem], candidates: Sequence[RankedItem]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(purchase probability, expected quantity), float32 [len(candidates)] each.

        `history` newest first; raises INVALID_ARGUMENT naming the field at fault.
        """
        rows = self.rows(history, candidates)
        _logit, probability, _log_quantity, quantity = rows.run(np.arange(len(rows.keys)))
        return probability, quantity

    @property
    def dim(self) -> int:
        """Width of the item embeddings (the `dim` axis of both models)."""
        return int(self.embeddings.shape[1])

    def _run(self, rows: CustomerRows, indices: np.ndarray, alone: bool = True) -> tuple[np.ndarray, ...]:
        """Score `rows`' candidates at `indices` (worker thread): one ranker call, every output."""
        indices = np.asarray(indices, dtype=np.int64)
        refs = rows.refs[indices] if isinstance(rows.refs, np.ndarray) else [rows.refs[i] for i in indices.tolist()]
        keys = rows.keys if every_row(indices, len(rows.keys)) else [rows.keys[i] for i in indices.tolist()]
        texts = [r for r in (*rows.history_refs, *([] if isinstance(refs, np.ndarray) else refs)) if isinstance(r, str)]
        if texts:
            # A small matrix of only the rows this call reads: its catalog rows, then its free texts' rows.
            catalog = sorted({r for r in (*rows.history_refs, *refs) if not isinstance(r, str)})
            distinct = list(dict.fromkeys(texts))
            embeddings = np.concatenate(
                [self.embeddings[np.asarray(catalog, dtype=np.int64)], np.stack([self.embed_text(t) for t in distinct])]
            )
            local = {row: i for i, row in enumerate(catalog)} | {t: len(catalog) + i for i, t in enumerate(distinct)}
            history_rows = [local[r] for r in rows.history_refs]
            candidate_rows = np.asarray([local[r] for r in refs], dtype=np.int64)
        else:
            embeddings = self.embeddings
            history_rows = rows.history_refs
            candidate_rows = np.asarray(refs, dtype=np.int64)
        index = {entry.key: row for entry, row in zip(rows.entries, history_rows)}
        features = behaviour_features(rows.entries, keys, self.tables)
        feeds = ranker_feeds(embeddings, history_arrays(rows.entries, index, MAX_HISTORY), candidate_rows, features)
        session = self.ranker if alone else self.ranker_single
        return tuple(session.run(list(RANKER.output_names), feeds))
