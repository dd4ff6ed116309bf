"""gRPC transport of the domain API `edgerec.v1.Recommender`: protobuf in, pipeline call, protobuf out.

Nothing else happens here: validation, featurization and batching are the
request pipeline's (`runtime.pipeline`); statuses and metrics are
`runtime.status`'s. Protobuf messages are handed to the pipeline as they are
(they have `item_id`, `text`, `count`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc

from edgerec.proto import recommender_pb2, recommender_pb2_grpc
from edgerec.runtime.metrics import Metrics
from edgerec.runtime.model_version import ModelVersion
from edgerec.runtime.status import rpc

SERVICE = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"]


class RecommenderService(recommender_pb2_grpc.RecommenderServicer):
    def __init__(self, current: Callable[[], ModelVersion], metrics: Metrics, max_response_bytes: int) -> None:
        self._current = current
        self.metrics = metrics
        self.max_response_bytes = max_response_bytes

    @rpc("Score")
    async def Score(
        self, request: recommender_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> recommender_pb2.ScoreResponse:
        scores = await self._current().pipeline.score(request.context, request.candidates, context.time_remaining())
        response = recommender_pb2.ScoreResponse(model_name=scores.model_name, model_version=scores.model_version)
        response.purchase_probability.extend(scores.purchase_probability.tolist())
        response.expected_quantity.extend(scores.expected_quantity.tolist())
        return response

    @rpc("Rank")
    async def Rank(
        self, request: recommender_pb2.RankRequest, context: grpc.aio.ServicerContext
    ) -> recommender_pb2.RankResponse:
        order, scores = await self._current().pipeline.rank(
            request.context, request.candidates, request.k, context.time_remaining()
        )
        probabilities, quantities = scores.purchase_probability, scores.expected_quantity
        candidates = request.candidates
        return recommender_pb2.RankResponse(
            ranked=[
                recommender_pb2.RankedCandidate(
                    index=i,
                    item_id=candidates[i].item_id,
                    purchase_probability=float(probabilities[i]),
                    expected_quantity=float(quantities[i]),
                )
                for i in order.tolist()
            ],
            model_name=scores.model_name,
            model_version=scores.model_version,
        )


def build_score_request(
    candidates: Sequence[str | tuple[str, str]], context: Sequence[str | tuple[str, str] | tuple[str, str, int]] = ()
) -> recommender_pb2.ScoreRequest:
    """A ScoreRequest for clients and load generators.

    Items are catalog ids, or `(item_id, text)` tuples (text for items the
    catalog does not know); context items may add a count: `(item_id, text, count)`.
    """
    request = recommender_pb2.ScoreRequest()
    for item in context:
        parts = (item,) if isinstance(item, str) else tuple(item)
        text = parts[1] if len(parts) > 1 else ""
        count = parts[2] if len(parts) > 2 else 1
        request.context.add(item_id=parts[0], text=text, count=count)
    for item in candidates:
        item_id, text = (item, "") if isinstance(item, str) else item
        request.candidates.add(item_id=item_id, text=text)
    return request
