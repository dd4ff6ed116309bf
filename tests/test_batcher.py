"""The batcher (admission -> scheduler -> worker) driven by a fake backend: batches, and what happens to requests."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from edgerec.runtime.admission import Admission, ServiceRate
from edgerec.runtime.batcher import Batcher
from edgerec.runtime.config import BatcherConfig
from edgerec.core.errors import EdgeRecError, ErrorCode
from edgerec.runtime.metrics import Metrics


class FakeBackend:
    """Doubles each pair's value; records the batches it saw; can be held mid-batch or made to fail."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []  # values of each batch run, in row order
        self.prepared = 0
        self.gate = threading.Event()
        self.gate.set()
        self.running = threading.Event()
        self.fail_on: float | None = None
        self.fail_prepare_on: float | None = None

    def prepare(self, segments) -> np.ndarray:
        self.prepared += 1
        values = np.concatenate([segment.payload[segment.indices] for segment in segments])
        if self.fail_prepare_on is not None and self.fail_prepare_on in values:
            raise ValueError("cannot pack this batch")
        return values

    def execute(self, values: np.ndarray):
        self.running.set()
        self.gate.wait(5)
        if self.fail_on is not None and self.fail_on in values:
            raise RuntimeError("backend exploded")
        self.batches.append(values)
        return values * 2.0, values + 0.5

    def batch_sizes(self) -> list[int]:
        return [len(b) for b in self.batches]


def config(**overrides) -> BatcherConfig:
    base = dict(max_batch_size=4, max_batch_tokens=10_000, max_queue_delay_ms=20, max_queue_pairs=1000)
    return BatcherConfig(**{**base, **overrides})


async def started(cfg: BatcherConfig, backend: FakeBackend, metrics: Metrics | None = None) -> Batcher:
    return await Batcher(cfg, backend.prepare, backend.execute, metrics or Metrics()).start()


async def eventually(condition, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 20))


def test_request_split_across_batches_comes_back_in_request_order():
    async def main():
        backend = FakeBackend()
        batcher = await started(config(max_batch_size=3, length_bucket_width=8), backend)
        values = np.arange(10, dtype=np.float64)
        lengths = np.array([30, 5, 17, 5, 40, 9, 30, 3, 12, 7])  # spread over several buckets
        doubled, shifted = await batcher.submit(values, lengths)
        await batcher.drain()
        return backend, values, doubled, shifted

    backend, values, doubled, shifted = run(main())
    np.testing.assert_array_equal(doubled, values * 2)
    np.testing.assert_array_equal(shifted, values + 0.5)
    assert max(backend.batch_sizes()) <= 3 and sum(backend.batch_sizes()) == 10
    assert len(backend.batches) >= 4


def test_batches_are_cut_by_size_and_full_batches_do_not_wait_for_the_delay():
    async def main():
        backend = FakeBackend()
        batcher = await started(config(max_batch_size=4, max_queue_delay_ms=10_000), backend)
        result = await batcher.submit(np.arange(8.0), np.full(8, 10))
        await batcher.drain()
        return backend, result

    backend, (doubled, _) = run(main())  # a 10 s delay would time the test out if full batches waited
    assert backend.batch_sizes() == [4, 4]
    np.testing.assert_array_equal(doubled, np.arange(8.0) * 2)


def test_batches_are_cut_by_token_budget_counting_padding():
    async def main():
        backend = FakeBackend()
        batcher = await started(config(max_batch_size=64, max_batch_tokens=100, length_bucket_width=0), backend)
        await batcher.submit(np.arange(12.0), np.full(12, 30))
        await batcher.drain()
        return backend

    backend = run(main())
    assert backend.batch_sizes() == [3, 3, 3, 3]  # 3 x 30 tokens fit in 100, 4 x 30 do not


def test_a_lone_pair_with_more_tokens_than_the_budget_still_runs_alone():
    async def main():
        backend = FakeBackend()
        batcher = await started(config(max_batch_tokens=50), backend)
        out = await batcher.submit(np.array([1.0, 2.0]), np.array([60, 60]))
        await batcher.drain()
        return backend, out

    backend, (doubled, _) = run(main())
    assert backend.batch_sizes() == [1, 1]
    np.testing.assert_array_equal(doubled, [2.0, 4.0])


def test_requests_from_many_callers_are_merged_within_the_queue_delay():
    async def main():
        backend = FakeBackend()
        batcher = await started(config(max_batch_size=64, max_queue_delay_ms=200), backend)
        results = await asyncio.gather(*(batcher.submit(np.array([float(i)]), np.array([8])) for i in range(5)))
        await batcher.drain()
        return backend, results

    backend, results = run(main())
    assert backend.batch_sizes() == [5]
    assert [float(doubled[0]) for doubled, _ in results] == [0.0, 2.0, 4.0, 6.0, 8.0]


def test_pairs_are_grouped_by_length_to_cut_padding():
    async def main():
        backend = FakeBackend()
        batcher = await started(config(max_batch_size=4, length_bucket_width=16, max_queue_delay_ms=50), backend)
        values = np.arange(8.0)
        lengths = np.array([5, 60, 5, 60, 5, 60, 5, 60])  # short pairs have even values, long ones odd
        await batcher.submit(values, lengths)
        await batcher.drain()
        return backend

    backend = run(main())
    assert sorted(backend.batch_sizes()) == [4, 4]
    for batch in backend.batches:
        assert len({int(v) % 2 for v in batch}) == 1, f"batch mixes short and long pairs: {batch}"


def test_the_next_batch_is_prepared_while_one_runs():
    async def main():
        backend = FakeBackend()
        backend.gate.clear()
        batcher = await started(config(max_batch_size=2), backend)
        task = asyncio.create_task(batcher.submit(np.arange(6.0), np.full(6, 8)))
        await eventually(backend.running.is_set)
        await eventually(lambda: backend.prepared == 2)  # batch 2 is ready while batch 1 still runs
        prepared_while_running = backend.prepared
        assert not backend.batches
        backend.gate.set()
        await task
        await batcher.drain()
        return prepared_while_running, backend

    prepared_while_running, backend = run(main())
    assert prepared_while_running == 2
    assert backend.batch_sizes() == [2, 2, 2]


def test_overload_is_refused_at_once_with_resource_exhausted():
    async def main():
        backend = FakeBackend()
        backend.gate.clear()
        batcher = await started(config(max_queue_pairs=4, max_queue_requests=10), backend)
        first = asyncio.create_task(batcher.submit(np.arange(4.0), np.full(4, 8)))
        await eventually(backend.running.is_set)
        with pytest.raises(EdgeRecError) as refused:
            await batcher.submit(np.array([9.0]), np.array([8]))
        backend.gate.set()
        await first
        after = await batcher.submit(np.array([9.0]), np.array([8]))  # room again once the first is done
        await batcher.drain()
        return refused.value, after

    refused, after = run(main())
    assert refused.code is ErrorCode.RESOURCE_EXHAUSTED
    assert float(after[0][0]) == 18.0


def test_too_many_requests_in_the_queue_are_refused():
    async def main():
        backend = FakeBackend()
        backend.gate.clear()
        batcher = await started(config(max_queue_requests=2), backend)
        held = [asyncio.create_task(batcher.submit(np.array([1.0]), np.array([8]))) for _ in range(2)]
        await eventually(lambda: batcher.admitted_requests == 2)
        with pytest.raises(EdgeRecError) as refused:
            await batcher.submit(np.array([1.0]), np.array([8]))
        backend.gate.set()
        await asyncio.gather(*held)
        await batcher.drain()
        return refused.value

    assert run(main()).code is ErrorCode.RESOURCE_EXHAUSTED


def test_expired_request_fails_with_deadline_exceeded_and_never_reaches_the_backend():
    async def main():
        backend = FakeBackend()
        backend.gate.clear()
        metrics = Metrics()
        batcher = await started(config(max_batch_size=1), backend, metrics)
        blocker = asyncio.create_task(batcher.submit(np.array([1.0]), np.array([8])))
        await eventually(backend.running.is_set)
        with pytest.raises(EdgeRecError) as expired:
            await batcher.submit(np.array([7.0, 7.0]), np.array([8, 8]), timeout=0.05)
        backend.gate.set()
        await blocker
        await batcher.drain()
        return backend, expired.value, metrics

    backend, expired, metrics = run(main())
    assert expired.code is ErrorCode.DEADLINE_EXCEEDED
    assert all(7.0 not in batch for batch in backend.batches)
    assert metrics.value("edgerec_dropped_requests_total", reason="deadline") == 1
    assert metrics.value("edgerec_dropped_pairs_total", reason="deadline") == 2


def test_a_request_already_past_its_deadline_is_not_queued():
    async def main():
        backend = FakeBackend()
        batcher = await started(config(), backend)
        with pytest.raises(EdgeRecError) as expired:
            await batcher.submit(np.array([1.0]), np.array([8]), timeout=0.0)
        await batcher.drain()
        return backend, expired.value

    backend, expired = run(main())
    assert expired.code is ErrorCode.DEADLINE_EXCEEDED and not backend.batches


def test_cancelled_request_is_dropped_before_compute():
    async def main():
        backend = FakeBackend()
        backend.gate.clear()
        metrics = Metrics()
        batcher = await started(config(max_batch_size=1), backend, metrics)
        blocker = asyncio.create_task(batcher.submit(np.array([1.0]), np.array([8])))
        await eventually(backend.running.is_set)
        doomed = asyncio.create_task(batcher.submit(np.array([5.0, 6.0, 7.0]), np.array([8, 8, 8])))
        await eventually(lambda: batcher.admitted_requests == 2)
        doomed.cancel()
        await asyncio.gather(doomed, return_exceptions=True)
        backend.gate.set()
        await blocker
        survivor = await batcher.submit(np.array([3.0]), np.array([8]))
        await batcher.drain()
        return backend, metrics, survivor, batcher

    backend, metrics, survivor, batcher = run(main())
    seen = np.concatenate(backend.batches)
    assert not {5.0, 6.0, 7.0} & set(seen.tolist()), "a cancelled request's pairs reached the backend"
    assert metrics.value("edgerec_dropped_requests_total", reason="cancelled") == 1
    assert float(survivor[0][0]) == 6.0
    assert batcher.admitted_pairs == 0 and batcher.queued_pairs == 0


def test_a_backend_failure_fails_only_that_batchs_requests():
    async def main():
        backend = FakeBackend()
        backend.fail_on = 13.0
        metrics = Metrics()
        batcher = await started(config(max_batch_size=1), backend, metrics)
        outcomes = await asyncio.gather(
            batcher.submit(np.array([1.0]), np.array([8])),
            batcher.submit(np.array([13.0]), np.array([8])),
            batcher.submit(np.array([2.0]), np.array([8])),
            return_exceptions=True,
        )
        later = await batcher.submit(np.array([4.0]), np.array([8]))
        await batcher.drain()
        return outcomes, later, metrics

    (good1, bad, good2), later, metrics = run(main())
    assert isinstance(bad, EdgeRecError) and bad.code is ErrorCode.INTERNAL
    assert bad.message == "the model failed on this request; the server log has details"
    assert float(good1[0][0]) == 2.0 and float(good2[0][0]) == 4.0 and float(later[0][0]) == 8.0
    assert metrics.value("edgerec_batch_failures_total") == 1


def test_rows_of_several_values_come_back_whole_and_outputs_of_the_wrong_length_fail_the_request():
    """An output may be [rows, dim] (the item tower's embeddings); one whose first axis is not the
    batch's rows is a model failure (INTERNAL), never a request left waiting."""

    async def main():
        backend = FakeBackend()
        execute = backend.execute

        def wide(values):
            doubled, _ = execute(values)
            if 13.0 in values:
                return (doubled[:-1],)  # one row short
            return (np.stack([doubled, doubled + 1.0], axis=1),)

        batcher = await Batcher(config(max_batch_size=2), backend.prepare, wide, Metrics()).start()
        outcomes = await asyncio.gather(
            batcher.submit(np.array([1.0, 2.0, 3.0]), np.array([8, 8, 8])),
            batcher.submit(np.array([13.0]), np.array([8])),
            return_exceptions=True,
        )
        await batcher.drain()
        return outcomes

    (good, bad) = run(main())
    np.testing.assert_array_equal(good[0], [[2.0, 3.0], [4.0, 5.0], [6.0, 7.0]])
    assert isinstance(bad, EdgeRecError) and bad.code is ErrorCode.INTERNAL


def test_a_batch_that_cannot_be_prepared_fails_only_its_requests():
    async def main():
        backend = FakeBackend()
        backend.fail_prepare_on = 13.0
        batcher = await started(config(max_batch_size=1), backend)
        outcomes = await asyncio.gather(
            batcher.submit(np.array([1.0]), np.array([8])),
            batcher.submit(np.array([13.0]), np.array([8])),
            batcher.submit(np.array([2.0]), np.array([8])),
            return_exceptions=True,
        )
        await batcher.drain()
        return outcomes, batcher

    (good1, bad, good2), batcher = run(main())
    assert isinstance(bad, EdgeRecError) and bad.code is ErrorCode.INTERNAL
    assert bad.message.startswith("the server could not prepare this request")
    assert float(good1[0][0]) == 2.0 and float(good2[0][0]) == 4.0
    assert batcher.admitted_pairs == 0 and batcher.admitted_requests == 0


def test_drain_finishes_admitted_work_and_refuses_new_requests():
    async def main():
        backend = FakeBackend()
        backend.gate.clear()  # nothing is answered before the drain begins
        batcher = await started(config(max_batch_size=2, max_queue_delay_ms=5_000), backend)
        admitted = [asyncio.create_task(batcher.submit(np.array([float(i)]), np.array([8]))) for i in range(5)]
        await eventually(lambda: batcher.admitted_requests == 5)
        drained = asyncio.create_task(batcher.drain(timeout=5))
        await eventually(lambda: not batcher.accepting)
        with pytest.raises(EdgeRecError) as refused:
            await batcher.submit(np.array([1.0]), np.array([8]))
        backend.gate.set()
        results = await asyncio.gather(*admitted)
        return refused.value, results, await drained

    refused, results, drained_in_time = run(main())
    assert refused.code is ErrorCode.UNAVAILABLE
    assert [float(doubled[0]) for doubled, _ in results] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert drained_in_time


def test_drain_that_runs_out_of_time_fails_the_leftover_requests_as_unavailable():
    async def main():
        backend = FakeBackend()
        backend.gate.clear()
        batcher = await started(config(max_batch_size=1), backend)
        stuck = [asyncio.create_task(batcher.submit(np.array([float(i)]), np.array([8]))) for i in range(3)]
        await eventually(backend.running.is_set)
        drained_in_time = await batcher.drain(timeout=0.05)
        outcomes = await asyncio.gather(*stuck, return_exceptions=True)
        backend.gate.set()
        return drained_in_time, outcomes

    drained_in_time, outcomes = run(main())
    assert not drained_in_time
    assert all(isinstance(o, EdgeRecError) and o.code is ErrorCode.UNAVAILABLE for o in outcomes)


# -- admission on its own: plain synchronous bookkeeping ----------------------
def opened(cfg: BatcherConfig, metrics: Metrics | None = None) -> Admission:
    admission = Admission(cfg, metrics or Metrics())
    admission.open()
    return admission


def test_admission_refuses_beyond_the_pair_and_request_bounds_and_released_permits_make_room():
    admission = opened(config(max_queue_pairs=4, max_queue_requests=2))
    admission.admit(3, None)
    with pytest.raises(EdgeRecError) as too_many_pairs:
        admission.admit(2, None)
    admission.admit(1, None)
    with pytest.raises(EdgeRecError) as too_many_requests:
        admission.admit(1, None)
    assert too_many_pairs.value.code is too_many_requests.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert (admission.pairs, admission.requests) == (4, 2)  # refusals took nothing

    admission.release(pairs=4, requests=2)
    admission.admit(4, None)
    assert (admission.pairs, admission.requests) == (4, 1)


def test_service_rate_weighs_batches_by_size_and_follows_recent_ones():
    rate = ServiceRate(decay=0.5)
    assert rate.pairs_per_s is None and rate.seconds_for(10) is None  # nothing measured yet
    rate.observe(100, 1.0)
    rate.observe(0, 1.0)  # empty or untimed batches carry no information
    rate.observe(10, 0.0)
    assert rate.pairs_per_s == pytest.approx(100.0)
    rate.observe(300, 1.0)  # (100 x 0.5 + 300) / (1 x 0.5 + 1)
    assert rate.pairs_per_s == pytest.approx(350 / 1.5)
    assert rate.seconds_for(700) == pytest.approx(3.0)


def test_admission_refuses_a_request_whose_estimated_wait_exceeds_the_bound():
    metrics = Metrics()
    admission = opened(config(max_queue_wait_ms=1000), metrics)
    admission.admit(500, None)  # nothing measured yet: only the count bounds apply
    admission.release(pairs=500, requests=1)
    admission.observe_batch(100, 1.0)  # 100 pairs/s
    assert metrics.value("edgerec_service_rate_pairs_per_second") == pytest.approx(100.0)
    admission.admit(250, None)  # nothing ahead: a request alone is never refused for time
    admission.release(pairs=150)  # 100 pairs ahead = 1.0 s, at the bound
    admission.admit(60, None)
    with pytest.raises(EdgeRecError) as refused:
        admission.admit(1, None)  # 160 pairs ahead = 1.6 s
    assert refused.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert "estimated wait 1600 ms" in refused.value.message and "max_queue_wait_ms 1000" in refused.value.message
    assert (admission.pairs, admission.requests) == (160, 2)  # the refusal took nothing
    assert admission.estimated_wait_s() == pytest.approx(1.6)

    off = opened(config(max_queue_wait_ms=0))
    off.observe_batch(1, 10.0)
    off.admit(500, None)
    off.admit(500, None)  # 5,000 s ahead, but the time bound is off
    assert off.pairs == 1000


def test_the_worker_feeds_admission_its_measured_service_rate_and_overload_in_time_is_refused():
    async def main():
        backend = FakeBackend()
        batcher = await started(config(max_queue_wait_ms=500), backend)
        await batcher.submit(np.arange(4.0), np.full(4, 8))
        measured = batcher.admission.service_rate.pairs_per_s
        batcher.admission.service_rate = ServiceRate()  # a slow model: 10 pairs/s
        batcher.admission.service_rate.observe(10, 1.0)
        backend.gate.clear()
        first = asyncio.create_task(batcher.submit(np.arange(4.0), np.full(4, 8)))  # 0.0 s ahead
        await eventually(backend.running.is_set)
        second = asyncio.create_task(batcher.submit(np.arange(2.0), np.full(2, 8)))  # 4 pairs = 0.4 s ahead
        await eventually(lambda: batcher.admitted_pairs == 6)
        with pytest.raises(EdgeRecError) as refused:
            await batcher.submit(np.array([1.0]), np.array([8]))  # 6 pairs = 0.6 s ahead
        backend.gate.set()
        answered = await asyncio.gather(first, second)
        await batcher.drain()
        return measured, refused.value, answered

    measured, refused, answered = run(main())
    assert measured is not None and measured > 0
    assert refused.code is ErrorCode.RESOURCE_EXHAUSTED and "estimated wait 600 ms" in refused.message
    assert [len(outputs[0]) for outputs in answered] == [4, 2]


def test_admission_refuses_before_it_opens_and_once_it_drains():
    admission = Admission(config(), Metrics())
    with pytest.raises(EdgeRecError) as before:
        admission.admit(1, None)
    admission.open()
    admission.admit(1, None)
    admission.close()
    with pytest.raises(EdgeRecError) as draining:
        admission.admit(1, None)
    assert before.value.code is draining.value.code is ErrorCode.UNAVAILABLE
    assert admission.requests == 1  # what was admitted keeps its permit until answered


def test_admission_refuses_an_expired_request_and_counts_it_as_dropped():
    metrics = Metrics()
    admission = opened(config(), metrics)
    with pytest.raises(EdgeRecError) as expired:
        admission.admit(3, timeout=0.0)
    assert expired.value.code is ErrorCode.DEADLINE_EXCEEDED
    assert (admission.pairs, admission.requests) == (0, 0)
    assert metrics.value("edgerec_dropped_requests_total", reason="deadline") == 1
    assert metrics.value("edgerec_dropped_pairs_total", reason="deadline") == 3


def test_admission_refuses_a_request_without_pairs():
    with pytest.raises(EdgeRecError) as empty:
        opened(config()).admit(0, None)
    assert empty.value.code is ErrorCode.INVALID_ARGUMENT
