"""What the load driver sends: requests of `edgerec.v1.Recommender`, from a round-robin pool.

Requests are built before a run starts (protobuf messages), so the driver's
time goes to sending, not to building them. A pool holds Score, Rank or
Recommend requests (one kind per pool); each goes to its own RPC.
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


# The RPC of each request type (`Recommender.<method>`).
METHODS = {
    recommender_pb2.ScoreRequest: "Score",
    recommender_pb2.RankRequest: "Rank",
    recommender_pb2.RecommendRequest: "Recommend",
}
Request = recommender_pb2.ScoreRequest | recommender_pb2.RankRequest | recommender_pb2.RecommendRequest


class RequestPool:
    """Pre-built requests of one kind (Score, Rank or Recommend), handed out round robin."""

    def __init__(self, requests: Sequence[Request]) -> None:
        if not requests:
            raise ValueError("a request pool needs at least one request")
        kinds = {type(request) for request in requests}
        if len(kinds) != 1 or not kinds <= set(METHODS):
            raise ValueError(f"a request pool holds one kind of Recommender request, got {sorted(k.__name__ for k in kinds)}")
        self.requests = list(requests)
        self.method = METHODS[type(self.requests[0])]
        # Candidates each request names (a Recommend request names none: the server scores its catalog).
        self.pairs = [len(getattr(request, "candidates", ())) for request in self.requests]
        self._next = 0

    def take(self) -> Request:
        request = self.requests[self._next]
        self._next = (self._next + 1) % len(self.requests)
        return request

    @property
    def mean_pairs(self) -> float:
        return float(np.mean(self.pairs))

    def calls(self, stub: recommender_pb2_grpc.RecommenderStub, timeout_s: float) -> Call:
        """The driver's call: the pool's next request to its RPC, sent with a `timeout_s` deadline."""
        method = getattr(stub, self.method)
        return lambda: method(self.take(), timeout=timeout_s)
