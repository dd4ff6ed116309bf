"""What the load driver sends: Score requests over a bundle's catalog, from a round-robin pool.

Requests are built before a run starts (protobuf messages), so the driver's
time goes to sending, not to building them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgerec.benchmarks.harness.driver import Call
from edgerec.core.bundle import Bundle
from edgerec.core.featurize import load_catalog
from edgerec.proto import recommender_pb2, recommender_pb2_grpc


def catalog_ids(bundle: Bundle) -> list[str]:
    """The item ids of the bundle's catalog, sorted."""
    return sorted(load_catalog(bundle.catalog_path))


def score_request(history: Sequence[tuple[str, int]], candidates: Sequence[str]) -> recommender_pb2.ScoreRequest:
    """A Score request: (item id, count) history, newest first, and catalog candidates."""
    return recommender_pb2.ScoreRequest(
        context=[recommender_pb2.ContextItem(item_id=item, count=count) for item, count in history],
        candidates=[recommender_pb2.Candidate(item_id=item) for item in candidates],
    )


def history_of(request: recommender_pb2.ScoreRequest) -> list[tuple[str, int]]:
    """A request's (item id, count) history, newest first."""
    return [(item.item_id, item.count) for item in request.context]


def random_requests(
    item_ids: Sequence[str], size: int, min_candidates: int, max_candidates: int, max_history: int, seed: int = 0
) -> list[recommender_pb2.ScoreRequest]:
    """`size` requests over `item_ids`: 0..`max_history` distinct past items bought 1-5 times,
    and `min_candidates`..`max_candidates` candidates drawn with replacement."""
    if not item_ids:
        raise ValueError("random requests need a catalog with at least one item")
    rng = np.random.default_rng(seed)
    ids = list(item_ids)
    requests = []
    for _ in range(size):
        past = rng.choice(len(ids), size=int(rng.integers(0, min(max_history, len(ids)) + 1)), replace=False)
        candidates = rng.integers(len(ids), size=int(rng.integers(min_candidates, max_candidates + 1)))
        history = [(ids[i], int(rng.integers(1, 6))) for i in past]
        requests.append(score_request(history, [ids[i] for i in candidates]))
    return requests


class RequestPool:
    """Pre-built Score requests, handed out round robin."""

    def __init__(self, requests: Sequence[recommender_pb2.ScoreRequest]) -> None:
        if not requests:
            raise ValueError("a request pool needs at least one request")
        self.requests = list(requests)
        self.pairs = [len(request.candidates) for request in self.requests]
        self._next = 0

    def take(self) -> recommender_pb2.ScoreRequest:
        request = self.requests[self._next]
        self._next = (self._next + 1) % len(self.requests)
        return request

    @property
    def mean_pairs(self) -> float:
        return float(np.mean(self.pairs))

    def calls(self, stub: recommender_pb2_grpc.RecommenderStub, timeout_s: float) -> Call:
        """The driver's call: the pool's next request, sent with a `timeout_s` deadline."""
        return lambda: stub.Score(self.take(), timeout=timeout_s)
