"""gRPC transport of the domain API `edgerec.v1.Recommender`: protobuf in, pipeline call, protobuf out.

Nothing else happens here: validation, the two stages and batching are the
request pipeline's (`runtime.two_stage`, `runtime.pipeline`); statuses and
metrics are `runtime.status`'s. Protobuf messages are handed to the pipeline
as they are (they have `item_id`, `text`, `count` and the optional `days_ago`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc

from edgerec.proto import recommender_pb2, recommender_pb2_grpc
from edgerec.runtime.metrics import Metrics
from edgerec.runtime.model_version import ModelVersion
from edgerec.runtime.status import rpc

SERVICE = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"]


def _rerank_top(request) -> int | None:
    """The request's `rerank_top`, None when unset (the server's default applies)."""
    return request.rerank_top if request.HasField("rerank_top") else None


class RecommenderService(recommender_pb2_grpc.RecommenderServicer):
    def __init__(self, current: Callable[[], ModelVersion], metrics: Metrics, max_response_bytes: int) -> None:
        self._current = current
        self.metrics = metrics
        self.max_response_bytes = max_response_bytes

    @rpc("Score")
    async def Score(
        self, request: recommender_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> recommender_pb2.ScoreResponse:
        scores = await self._current().pipeline.score(
            request.context, request.candidates, _rerank_top(request), context.time_remaining()
        )
        response = recommender_pb2.ScoreResponse(model_name=scores.model_name, model_version=scores.model_version)
        response.purchase_probability.extend(scores.purchase_probability.tolist())
        response.expected_quantity.extend(scores.expected_quantity.tolist())
        response.stage.extend(scores.stage.tolist())
        return response

    @rpc("Rank")
    async def Rank(
        self, request: recommender_pb2.RankRequest, context: grpc.aio.ServicerContext
    ) -> recommender_pb2.RankResponse:
        order, scores = await self._current().pipeline.rank(
            request.context, request.candidates, request.k, _rerank_top(request), context.time_remaining()
        )
        probabilities, quantities, stages = scores.purchase_probability, scores.expected_quantity, scores.stage
        candidates = request.candidates
        return recommender_pb2.RankResponse(
            ranked=[
                recommender_pb2.RankedCandidate(
                    index=i,
                    item_id=candidates[i].item_id,
                    purchase_probability=float(probabilities[i]),
                    expected_quantity=float(quantities[i]),
                    stage=int(stages[i]),
                )
                for i in order.tolist()
            ],
            model_name=scores.model_name,
            model_version=scores.model_version,
        )

    @rpc("Recommend")
    async def Recommend(
        self, request: recommender_pb2.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> recommender_pb2.RecommendResponse:
        version = self._current()
        found = await version.pipeline.recommend(
            request.context, request.k, request.exclude_ids, request.purchased, _rerank_top(request),
            context.time_remaining(),
        )
        scores = found.scores
        return recommender_pb2.RecommendResponse(
            items=[
                recommender_pb2.RecommendedItem(
                    item_id=item_id,
                    text=text,
                    purchase_probability=float(p),
                    expected_quantity=float(q),
                    stage=int(stage),
                )
                for item_id, text, p, q, stage in zip(
                    found.item_ids, found.texts, scores.purchase_probability.tolist(), scores.expected_quantity.tolist(),
                    scores.stage.tolist(),
                )
            ],
            model_name=scores.model_name,
            model_version=scores.model_version,
            scored_items=found.scored,
        )


def add_context(request, context: Sequence[str | tuple]) -> None:
    """Append context items to a request: catalog ids, or tuples `(item_id, text[, count[, days_ago]])`."""
    for item in context:
        parts = (item,) if isinstance(item, str) else tuple(item)
        text = parts[1] if len(parts) > 1 else ""
        count = parts[2] if len(parts) > 2 else 1
        added = request.context.add(item_id=parts[0], text=text, count=count)
        if len(parts) > 3 and parts[3] is not None:
            added.days_ago = float(parts[3])


def build_score_request(
    candidates: Sequence[str | tuple[str, str]], context: Sequence[str | tuple] = (), rerank_top: int | None = None
) -> recommender_pb2.ScoreRequest:
    """A ScoreRequest for clients and load generators.

    Items are catalog ids, or `(item_id, text)` tuples (text for items the
    catalog does not know); context items may add a count and the days since
    their last purchase: `(item_id, text, count, days_ago)`. `rerank_top`
    None leaves the field unset (the server's default).
    """
    request = recommender_pb2.ScoreRequest()
    if rerank_top is not None:
        request.rerank_top = rerank_top
    add_context(request, context)
    for item in candidates:
        item_id, text = (item, "") if isinstance(item, str) else item
        request.candidates.add(item_id=item_id, text=text)
    return request


def build_recommend_request(
    context: Sequence[str | tuple] = (),
    k: int = 10,
    exclude_ids: Sequence[str] = (),
    purchased: int = 0,
    rerank_top: int | None = None,
) -> recommender_pb2.RecommendRequest:
    """A RecommendRequest (context items as `build_score_request`; `purchased` a PurchasedFilter value)."""
    request = recommender_pb2.RecommendRequest(k=k, exclude_ids=list(exclude_ids), purchased=purchased)
    if rerank_top is not None:
        request.rerank_top = rerank_top
    add_context(request, context)
    return request
