"""The two-stage request pipeline: the two-tower ranker first, the cross-encoder re-ranking its best.

Score, Rank and Recommend of `edgerec.v1.Recommender` land here
(`runtime.recommender_service` is only their transport):

- **Score / Rank**: the request's candidates go through the ranker's batcher
  (`runtime.ranker.CustomerRows`, one unit per candidate: the user side once
  per request, the head over its candidates in one call). With `rerank_top`
  R > 0 the ranker's R best (ties keep request order) go through the
  cross-encoder's batcher as pairs (`runtime.pipeline`), and their scores
  replace the ranker's; `stage` says which model scored each candidate.
  Rank then puts the re-ranked candidates first, ordered by the
  cross-encoder, then the rest in the ranker's order
  (`edgerec.core.ranking.two_stage_order`, the rule the export's evaluation
  scores).
- **Recommend**: every catalog item that passes the filters (`exclude_ids`,
  `purchased`) is a candidate of one ranker call (the bundle's item
  embedding matrix, no item-tower pass), then the same re-rank and order,
  and the k best come back.
- A bundle without the ranker answers Score and Rank with the cross-encoder
  alone (stage CROSS_ENCODER, `rerank_top` ignored) and refuses Recommend
  with FAILED_PRECONDITION.

Both stages answer with a purchase probability (each model's sigmoid,
trained with cross-entropy on the same baskets, each against its own
negatives: not calibrated against each other, so re-ranked candidates are
ordered among themselves and placed first). Errors:
INVALID_ARGUMENT naming the field; each batcher's RESOURCE_EXHAUSTED,
DEADLINE_EXCEEDED (the deadline covers both stages), UNAVAILABLE, INTERNAL.
Metrics: `Metrics.observe_stage` per stage a request went through.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from edgerec.core.errors import EdgeRecError, ErrorCode, invalid
from edgerec.core.featurize import item_key
from edgerec.core.ranking import top_indices, two_stage_order
from edgerec.core.signatures import CROSS_ENCODER, ITEM_TOWER, RANKER, RANKER_SIGNATURES, ModelSignature
from edgerec.runtime.config import RankerConfig
from edgerec.runtime.metrics import Metrics
from edgerec.runtime.pipeline import Candidate, ContextRef, CrossEncoderPipeline, ItemRef
from edgerec.runtime.ranker import RankerFeeds, TowerFeeds, days_ago_of

if TYPE_CHECKING:
    from edgerec.runtime.batcher import Batcher
    from edgerec.runtime.ranker import RankerScorer


class Stage(enum.IntEnum):
    """Which model scored a candidate; the values are `edgerec.v1.Stage`'s."""

    RANKER = 1
    CROSS_ENCODER = 2


class Purchased(enum.IntEnum):
    """Recommend's filter by the customer's context; the values are `edgerec.v1.PurchasedFilter`'s."""

    ANY = 0
    EXCLUDE = 1  # only items not in the context
    ONLY = 2  # only items in the context


@dataclasses.dataclass(frozen=True)
class StagedScores:
    """Per-candidate outputs in request order: purchase probability and expected quantity (float32 [n]),
    `stage` (int8 [n], `Stage` values), and the model version that answered."""

    purchase_probability: np.ndarray
    expected_quantity: np.ndarray
    stage: np.ndarray
    model_name: str
    model_version: str


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """Recommend's answer: `rows` (int64 [<= k], catalog rows best first), their `item_ids` and catalog
    `texts`, scores and stages (as `StagedScores`, in `rows` order), and `scored` (catalog items the
    ranker scored)."""

    rows: np.ndarray
    item_ids: list[str]
    texts: list[str]
    scores: StagedScores
    scored: int


class RankerStage:
    """The ranker's scorer, the batcher that feeds it (Score/Rank/Recommend and KServe calls of `ranker`),
    and the item tower's batcher (KServe calls of `item_tower`); one per model version."""

    def __init__(
        self, scorer: "RankerScorer", batcher: "Batcher", tower_batcher: "Batcher", runners: Sequence[SegmentRunner] = ()
    ) -> None:
        self.scorer = scorer
        self.batcher = batcher
        self.tower_batcher = tower_batcher
        self.runners = runners

    def close(self) -> None:
        """Stop the runners' threads (after the batchers have drained)."""
        for runner in self.runners:
            runner.close()


class SegmentRunner:
    """A ranker-side batcher's `execute`: one model call per request segment of the batch (for the
    ranker: its user side once, the head over that segment's candidates); outputs concatenated in
    segment order. Every payload of one batcher returns the same outputs (its model's, in order).

    A batch of one segment runs on the multi-threaded session; a batch of several runs `workers`
    segments at once, each on the single-threaded session (measured on 2 cores: a whole-catalog call
    takes ~11 ms on 2 threads and ~16 ms on 1, so two side by side finish sooner than two in turn).
    """

    def __init__(self, workers: int, name: str) -> None:
        self.workers = max(1, workers)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=name) if self.workers > 1 else None

    def __call__(self, prepared: Sequence[tuple[object, np.ndarray]]) -> tuple[np.ndarray, ...]:
        if self._pool is None or len(prepared) == 1:
            outputs = [payload.run(indices) for payload, indices in prepared]
        else:
            outputs = list(self._pool.map(lambda item: item[0].run(item[1], alone=False), prepared))
        return tuple(np.concatenate(column) for column in zip(*outputs))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def prepare_segments(segments) -> list[tuple[object, np.ndarray]]:
    """A ranker-side batcher's `prepare` (event loop): nothing to build, the work is in `SegmentRunner`."""
    return [(segment.payload, segment.indices) for segment in segments]


class TwoStagePipeline:
    """Score, Rank and Recommend over a model version's ranker (if any) and cross-encoder."""

    def __init__(
        self, cross: CrossEncoderPipeline, ranker: RankerStage | None, config: RankerConfig, metrics: Metrics
    ) -> None:
        self.cross = cross
        self.ranker = ranker
        self.config = config
        self.metrics = metrics
        self.model_name = cross.model_name
        self.model_version = cross.model_version
        self._active = 0  # Score/Rank/Recommend calls in this pipeline (a call may go through two batchers)
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def _call(self):
        self._active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no call is inside the pipeline (a retiring version: its calls may still have a stage
        to go, so its batchers must keep admitting them). True if idle within `timeout` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    # -- KServe ModelInfer: every model by name ----------------------------------
    def signatures(self) -> dict[str, ModelSignature]:
        """The models callable with raw tensors, by name: the cross-encoder, and the ranker's two models."""
        models = {CROSS_ENCODER.name: CROSS_ENCODER}
        if self.ranker is not None:
            models.update(RANKER_SIGNATURES)
        return models

    def axis_limits(self, model: str) -> dict[str, tuple[int, int]]:
        """(smallest, largest) size of each named axis of `model`'s tensors in one ModelInfer call."""
        rows, length = self.cross.max_rows, self.cross.max_length
        if model == CROSS_ENCODER.name:
            return {"batch": (1, rows), "sequence": (1, length)}
        dim = self.ranker.scorer.dim
        if model == ITEM_TOWER.name:
            return {"items": (1, rows), "sequence": (2, self.cross.featurizer.config.max_item_tokens + 2), "dim": (dim, dim)}
        return {
            "history": (1, max(1, self.cross.limits.max_context_items)),
            "candidates": (1, self.ranker.batcher.config.max_batch_size),
            "dim": (dim, dim),
        }

    async def infer(
        self, tensors: dict[str, np.ndarray], timeout: float | None = None, field: str = "inputs", model: str = CROSS_ENCODER.name
    ) -> dict[str, np.ndarray]:
        """Run one model on ready tensors (every input of its signature, shapes checked by the caller
        against `axis_limits`); every output by name. Values are checked here: INVALID_ARGUMENT names
        the input. Each row (pair, item, candidate) is one unit of its model's batcher."""
        if model == CROSS_ENCODER.name:
            return await self.cross.infer(tensors, timeout, field)
        if model not in self.signatures():
            raise EdgeRecError(ErrorCode.NOT_FOUND, f"no model {model!r} in this bundle", "model_name")
        scorer = self.ranker.scorer
        if model == ITEM_TOWER.name:
            ids_name, mask_name = ITEM_TOWER.input_names
            vocab = self.cross.vocab_size
            ids, mask = tensors[ids_name], tensors[mask_name]
            if ((ids < 0) | (ids >= vocab)).any():
                raise invalid(f"{field}.{ids_name}", f"token ids must be in [0, {vocab})")
            if not np.isin(mask, (0, 1)).all() or not mask.any(axis=1).all():
                raise invalid(f"{field}.{mask_name}", "values must be 0 or 1, with at least one 1 per row")
            payload, batcher, signature = TowerFeeds(scorer.tower, tensors), self.ranker.tower_batcher, ITEM_TOWER
        else:
            for spec in RANKER.inputs:
                values = tensors[spec.name]
                if values.dtype.kind == "f" and not np.isfinite(values).all():
                    raise invalid(f"{field}.{spec.name}", "values must be finite")
            if not np.isin(tensors["history_mask"], (0, 1)).all():
                raise invalid(f"{field}.history_mask", "values must be 0 or 1")
            for name in ("history_counts", "history_days"):  # a count and a number of days: log1p(-1) is -inf
                if (tensors[name] < 0).any():
                    raise invalid(f"{field}.{name}", "values must be >= 0")
            payload, batcher, signature = RankerFeeds(scorer.ranker, tensors), self.ranker.batcher, RANKER
        outputs = await batcher.submit(payload, payload.lengths, timeout)
        for name, values in zip(signature.output_names, outputs):
            if not np.isfinite(values).all():  # e.g. embeddings near float32's largest value overflow the head
                raise invalid(field, f"the model's output {name} is not finite for these inputs; send values in the ranges of "
                              f"the model's metadata (embeddings of the bundle's catalog or item tower)")
        return dict(zip(signature.output_names, outputs))

    # -- Score / Rank -----------------------------------------------------------
    async def score(
        self,
        context: Sequence[ContextRef],
        candidates: Sequence[ItemRef],
        rerank_top: int | None = None,
        timeout: float | None = None,
    ) -> StagedScores:
        """Each candidate's purchase probability, expected quantity and stage, in request order.

        `rerank_top`: the ranker's best candidates the cross-encoder re-scores (None: the server's
        `rerank_top`). Raises EdgeRecError as the module docstring says.
        """
        self.cross.check_sizes(context, candidates)
        top = self._rerank_top(rerank_top) if self.ranker is not None else 0  # ignored without a ranker
        deadline = None if timeout is None else time.perf_counter() + timeout
        with self._call():
            if self.ranker is None:
                for i, item in enumerate(context):  # unused by the cross-encoder, but its range holds for every bundle
                    days_ago_of(item, f"context[{i}].days_ago")
                return await self._cross_alone(context, candidates, deadline)
            rows = self.ranker.scorer.rows(context, candidates)
            return await self._two_stages(context, rows, candidates.__getitem__, top, deadline)

    async def rank(
        self,
        context: Sequence[ContextRef],
        candidates: Sequence[ItemRef],
        k: int,
        rerank_top: int | None = None,
        timeout: float | None = None,
    ) -> tuple[np.ndarray, StagedScores]:
        """Indices (int64 [k]) of the k best candidates, best first, and every candidate's scores."""
        self.cross.check_sizes(context, candidates)
        if not 1 <= k <= len(candidates):
            raise invalid("k", f"must be between 1 and the number of candidates ({len(candidates)}), got {k}")
        scores = await self.score(context, candidates, rerank_top, timeout)
        return self.order(scores)[:k], scores

    @staticmethod
    def order(scores: StagedScores) -> np.ndarray:
        """Best first: re-ranked candidates by the cross-encoder, then the rest by the ranker (stable)."""
        return two_stage_order(scores.purchase_probability, scores.stage == Stage.CROSS_ENCODER)

    # -- Recommend ----------------------------------------------------------------
    async def recommend(
        self,
        context: Sequence[ContextRef],
        k: int,
        exclude_ids: Iterable[str] = (),
        purchased: int = Purchased.ANY,
        rerank_top: int | None = None,
        timeout: float | None = None,
    ) -> Recommendation:
        """The k best catalog items for this customer (fewer when the filters leave fewer).

        Raises FAILED_PRECONDITION without a ranker, INVALID_ARGUMENT for k outside
        [1, max_candidates], an unknown `purchased` value or a bad context item.
        """
        if self.ranker is None:
            raise EdgeRecError(
                ErrorCode.FAILED_PRECONDITION,
                f"bundle {self.model_name} {self.model_version} has no ranker; Recommend needs a bundle built by "
                "`edgerec export` with the two-tower ranker",
            )
        limit = self.cross.limits.max_candidates
        if not 1 <= k <= limit:
            raise invalid("k", f"must be between 1 and {limit} (max_candidates), got {k}")
        if purchased not in Purchased.__members__.values():
            raise invalid("purchased", f"unknown filter {purchased}")
        self.cross.check_context(context)
        top = self._rerank_top(rerank_top)
        deadline = None if timeout is None else time.perf_counter() + timeout
        scorer = self.ranker.scorer
        allowed = np.ones(scorer.catalog_size, dtype=bool)
        for item_id in exclude_ids:
            row = scorer.index.get(item_id)
            if row is not None:
                allowed[row] = False
        if purchased != Purchased.ANY:
            bought = np.zeros(scorer.catalog_size, dtype=bool)
            for item in context:
                row = scorer.index.get(item_key(item.item_id, item.text))
                if row is not None:
                    bought[row] = True
            allowed &= ~bought if purchased == Purchased.EXCLUDE else bought
        rows = np.flatnonzero(allowed)
        empty = np.zeros(0, dtype=np.float32)
        if len(rows) == 0:
            scores = StagedScores(empty, empty, np.zeros(0, np.int8), self.model_name, self.model_version)
            return Recommendation(rows, [], [], scores, 0)
        payload = scorer.catalog_rows(context, rows)
        with self._call():
            scores = await self._two_stages(context, payload, lambda i: Candidate(payload.keys[i]), top, deadline)
        best = self.order(scores)[:k]
        chosen = StagedScores(
            scores.purchase_probability[best], scores.expected_quantity[best], scores.stage[best],
            self.model_name, self.model_version,
        )
        chosen_rows = rows[best]
        return Recommendation(
            chosen_rows, [payload.keys[i] for i in best.tolist()], [scorer.texts[r] for r in chosen_rows.tolist()],
            chosen, len(rows),
        )

    # -- stages -------------------------------------------------------------------
    def _rerank_top(self, requested: int | None) -> int:
        top = self.config.rerank_top if requested is None else int(requested)
        if not 0 <= top <= self.config.max_rerank_top:
            raise invalid("rerank_top", f"must be between 0 and {self.config.max_rerank_top} (max_rerank_top), got {top}")
        return top

    async def _cross_alone(self, context, candidates, deadline: float | None) -> StagedScores:
        started = time.perf_counter()
        scores = await self.cross.scores(context, candidates, _left(deadline))
        self.metrics.observe_stage(Stage.CROSS_ENCODER.name.lower(), len(candidates), time.perf_counter() - started)
        stage = np.full(len(candidates), Stage.CROSS_ENCODER, dtype=np.int8)
        return StagedScores(
            scores.purchase_probability, scores.expected_quantity, stage, self.model_name, self.model_version
        )

    async def _two_stages(
        self, context, rows, candidate: Callable[[int], ItemRef], top: int, deadline: float | None
    ) -> StagedScores:
        """The ranker over `rows`, then the cross-encoder over its `top` best (`candidate(i)`: the i-th as an item)."""
        started = time.perf_counter()
        _logit, probability, _log_quantity, quantity = await self.ranker.batcher.submit(rows, rows.lengths, _left(deadline))
        self.metrics.observe_stage(Stage.RANKER.name.lower(), len(rows.lengths), time.perf_counter() - started)
        stage = np.full(len(probability), Stage.RANKER, dtype=np.int8)
        if top > 0:
            best = top_indices(probability, top)
            started = time.perf_counter()
            second = await self.cross.scores(context, [candidate(i) for i in best.tolist()], _left(deadline))
            self.metrics.observe_stage(Stage.CROSS_ENCODER.name.lower(), len(best), time.perf_counter() - started)
            probability, quantity = probability.copy(), quantity.copy()
            probability[best] = second.purchase_probability
            quantity[best] = second.expected_quantity
            stage[best] = Stage.CROSS_ENCODER
        return StagedScores(probability, quantity, stage, self.model_name, self.model_version)


def _left(deadline: float | None) -> float | None:
    """Seconds left before `deadline` (perf_counter time); None: no deadline."""
    return None if deadline is None else deadline - time.perf_counter()
