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

Knows nothing of gRPC or batching: the request path composes it.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Sequence

import numpy as np

from edgerec.core.behaviour import BehaviourTables, HistoryEntry, behaviour_features
from edgerec.core.bundle import Bundle
from edgerec.core.errors import EdgeRecError, ErrorCode
from edgerec.core.featurize import item_key
from edgerec.core.ranker_inputs import encode_item_texts, history_arrays, ranker_feeds
from edgerec.core.sessions import SessionConfig, create_session
from edgerec.core.signatures import ITEM_TOWER, RANKER

MAX_HISTORY = 200  # newest past items the user side reads (the training setting `RankerConfig.max_history`)


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


class RankerScorer:
    """Scores candidates for one customer with a bundle's two-tower ranker (thread-safe)."""

    def __init__(
        self, bundle: Bundle, session_config: SessionConfig = SessionConfig(providers=("cpu",)), text_cache_size: int = 4096
    ) -> None:
        """Raises EdgeRecError NOT_FOUND if the bundle holds no ranker, FAILED_PRECONDITION if its
        embedding matrix does not have one row per catalog item or a model does not load."""
        featurizer = bundle.featurizer()
        self.featurizer = featurizer
        self.item_ids = list(featurizer.catalog)  # catalog.json order: the rows of the embedding matrix
        self.embeddings = np.load(bundle.data_path("item_embeddings"))
        if self.embeddings.shape[0] != len(self.item_ids):
            raise EdgeRecError(
                ErrorCode.FAILED_PRECONDITION,
                f"bundle {bundle.name} {bundle.version}: {self.embeddings.shape[0]} item embeddings for "
                f"{len(self.item_ids)} catalog items",
            )
        self.index = {item: row for row, item in enumerate(self.item_ids)}
        self.tables = BehaviourTables.load(bundle.data_path("behaviour_tables"))
        self.ranker = create_session(bundle.variant_path(RANKER.name), session_config, RANKER).session
        self.tower = create_session(bundle.variant_path(ITEM_TOWER.name), session_config, ITEM_TOWER).session
        self.text_cache_size = text_cache_size
        self._texts: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()

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

    def score(
        self, history: Sequence[PastItem], candidates: Sequence[RankedItem]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(purchase probability, expected quantity), float32 [len(candidates)] each.

        `history` newest first; an unknown catalog id is refused (INVALID_ARGUMENT naming it).
        """
        extra: dict[str, int] = {}
        rows_of_text: list[np.ndarray] = []

        def row_of(item: RankedItem, field: str) -> int:
            if item.item_id:
                row = self.index.get(item.item_id)
                if row is None:
                    raise EdgeRecError(ErrorCode.INVALID_ARGUMENT, f"unknown item id {item.item_id!r}", field)
                return row
            key = item_key(text=item.text)
            if key not in extra:
                extra[key] = len(self.item_ids) + len(rows_of_text)
                rows_of_text.append(self.embed_text(item.text))
            return extra[key]

        entries = []
        for i, past in enumerate(history):
            row_of(past, f"context[{i}]")  # refuses an unknown id; puts a free text's row in `extra`
            entries.append(HistoryEntry(item_key(past.item_id, past.text), max(1, int(past.count)), past.days_ago))
        index = collections.ChainMap(extra, self.index)  # free-text keys first, then the catalog: no copy
        candidate_rows = np.array([row_of(c, f"candidates[{i}]") for i, c in enumerate(candidates)], dtype=np.int64)
        embeddings = np.concatenate([self.embeddings, *(r[None] for r in rows_of_text)]) if rows_of_text else self.embeddings
        keys = [item_key(c.item_id, c.text) for c in candidates]
        features = behaviour_features(entries, keys, self.tables)
        feeds = ranker_feeds(embeddings, history_arrays(entries, index, MAX_HISTORY), candidate_rows, features)
        wanted = ["purchase_probability", "expected_quantity"]
        probability, quantity = self.ranker.run(wanted, feeds)
        return probability, quantity
