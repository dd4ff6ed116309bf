"""The scheduler's policy, driven by hand with a fake clock: no event loop, no threads, no model."""

from __future__ import annotations

import numpy as np
import pytest

from edgerec.runtime.config import BatcherConfig
from edgerec.runtime.scheduler import Batch, Request, Scheduler


def scheduler(**overrides) -> Scheduler:
    base = dict(max_batch_size=4, max_batch_tokens=10_000, max_queue_delay_ms=20, length_bucket_width=16)
    return Scheduler(BatcherConfig(**{**base, **overrides}))


def queue(sched: Scheduler, name: str, lengths, arrival: float = 0.0) -> Request:
    """Admit a request whose payload is its name, at clock time `arrival` (seconds)."""
    request = Request(name, np.asarray(lengths, dtype=np.int64), arrival)
    sched.add(request)
    return request


def cut_all(sched: Scheduler, now: float = 0.0) -> list[Batch]:
    batches = []
    while (batch := sched.next_batch(now)) is not None:
        batches.append(batch)
    return batches


def rows(batch: Batch) -> list[tuple[str, int]]:
    """(request name, pair index) of each row, in row order."""
    return [(segment.payload, int(i)) for segment in batch.segments for i in segment.indices]


# -- what goes into a batch ---------------------------------------------------
def test_pairs_wait_in_length_buckets_so_a_batch_does_not_mix_short_and_long_pairs():
    sched = scheduler(max_batch_size=4, length_bucket_width=16)
    queue(sched, "a", [5, 60, 5, 60, 5, 60, 5, 60])

    short, long = cut_all(sched)

    assert rows(short) == [("a", 0), ("a", 2), ("a", 4), ("a", 6)] and short.width == 5
    assert rows(long) == [("a", 1), ("a", 3), ("a", 5), ("a", 7)] and long.width == 60


def test_a_batch_starts_from_the_oldest_requests_bucket_and_fills_from_the_nearest_ones():
    sched = scheduler(max_batch_size=2, length_bucket_width=10)
    queue(sched, "old-long", [35], arrival=0.0)  # bucket 3
    queue(sched, "new-short", [5], arrival=1.0)  # bucket 0
    queue(sched, "newer-mid", [25], arrival=2.0)  # bucket 2: nearer to bucket 3 than bucket 0 is

    first, second = cut_all(sched, now=3.0)

    assert rows(first) == [("old-long", 0), ("newer-mid", 0)]
    assert rows(second) == [("new-short", 0)]


def test_the_token_budget_counts_padding_to_the_longest_pair():
    sched = scheduler(max_batch_size=64, max_batch_tokens=100, length_bucket_width=0)
    queue(sched, "a", [20, 45, 20])  # 85 real tokens would fit; padded, 3 x 45 = 135 do not

    first, second = cut_all(sched)

    assert (first.rows, first.width, first.real_tokens) == (2, 20, 40)
    assert rows(first) == [("a", 0), ("a", 2)]
    assert (second.rows, second.width, second.real_tokens) == (1, 45, 45)


def test_the_token_budget_grows_the_width_when_filling_from_a_longer_bucket():
    sched = scheduler(max_batch_size=64, max_batch_tokens=90, length_bucket_width=10)
    queue(sched, "short", [10, 10], arrival=0.0)  # bucket 0, the anchor
    queue(sched, "long", [20, 20, 20], arrival=1.0)  # bucket 1: joining pads the short rows to 20 too

    first, second = cut_all(sched, now=2.0)

    # 4 x 20 = 80 fits; a fifth row would make 5 x 20 = 100 (2 x 10 + 3 x 20 = 80 if padding were ignored)
    assert rows(first) == [("short", 0), ("short", 1), ("long", 0), ("long", 1)]
    assert (first.width, first.real_tokens) == (20, 60)
    assert rows(second) == [("long", 2)]


def test_filling_from_a_shorter_bucket_pads_the_new_pairs_to_the_batch_width():
    sched = scheduler(max_batch_size=64, max_batch_tokens=100, length_bucket_width=10)
    queue(sched, "long", [40], arrival=0.0)  # bucket 3, the anchor
    queue(sched, "short", [10, 10, 10], arrival=1.0)  # bucket 0: each joins at width 40

    first = sched.next_batch(now=2.0)

    assert rows(first) == [("long", 0), ("short", 0)]  # 2 x 40 = 80 fits, 3 x 40 = 120 does not
    assert (first.width, first.real_tokens) == (40, 50)


def test_a_lone_pair_longer_than_the_token_budget_still_runs_alone():
    sched = scheduler(max_batch_size=4, max_batch_tokens=50)
    queue(sched, "a", [60, 60])

    batches = cut_all(sched)

    assert [rows(b) for b in batches] == [[("a", 0)], [("a", 1)]]


def test_a_large_request_is_split_across_batches_and_every_pair_is_cut_once():
    sched = scheduler(max_batch_size=3, length_bucket_width=8)
    request = queue(sched, "big", [30, 5, 17, 5, 40, 9, 30, 3, 12, 7], arrival=1.0)

    batches = cut_all(sched, now=2.5)

    assert all(batch.rows <= 3 for batch in batches) and len(batches) >= 4
    cut = sorted(i for batch in batches for _, i in rows(batch))
    assert cut == list(range(10))
    assert request.queued == 0 and request.queued_tokens == 0 and sched.queued_pairs == 0
    assert batches[0].queue_seconds == pytest.approx((1.5,))  # the request's wait is counted once, at its first cut
    assert all(batch.queue_seconds == () for batch in batches[1:])


# -- finished requests ----------------------------------------------------------
def test_a_finished_request_leaves_the_counts_at_once_and_its_pairs_are_never_cut():
    sched = scheduler(max_batch_size=4)
    gone = queue(sched, "gone", [8, 8], arrival=0.0)
    queue(sched, "kept", [8], arrival=1.0)

    assert sched.finish(gone) == 2
    assert (sched.queued_pairs, sched.queued_tokens) == (1, 8)
    assert [rows(b) for b in cut_all(sched)] == [[("kept", 0)]]


def test_a_finished_request_queued_behind_a_live_one_is_skipped():
    sched = scheduler(max_batch_size=4)
    queue(sched, "before", [8], arrival=0.0)
    gone = queue(sched, "gone", [8], arrival=1.0)
    queue(sched, "after", [8], arrival=2.0)  # all three in one bucket, "gone" in the middle

    sched.finish(gone)

    assert [rows(b) for b in cut_all(sched)] == [[("before", 0), ("after", 0)]]


def test_finishing_a_partly_cut_request_drops_only_its_queued_pairs():
    sched = scheduler(max_batch_size=2)
    request = queue(sched, "a", [8, 8, 8])
    assert sched.next_batch(now=0.0).rows == 2

    assert sched.finish(request) == 1
    assert sched.queued_pairs == 0
    assert sched.next_batch(now=0.0) is None
    assert sched.finish(request) == 0  # finishing twice drops nothing more


# -- when to cut ----------------------------------------------------------------
def test_a_partial_batch_waits_for_an_idle_worker_until_the_queue_delay_after_its_oldest_pair():
    sched = scheduler(max_batch_size=4, max_queue_delay_ms=20)
    queue(sched, "first", [8], arrival=1.000)
    queue(sched, "second", [40], arrival=1.015)  # another bucket: the delay runs from the oldest of all

    assert sched.wait_time(1.000, busy=False, draining=False) == pytest.approx(0.020)
    assert sched.wait_time(1.015, busy=False, draining=False) == pytest.approx(0.005)
    assert sched.wait_time(1.020, busy=False, draining=False) == 0.0
    assert sched.wait_time(9.000, busy=False, draining=False) == 0.0


def test_the_delay_counts_from_the_next_oldest_once_the_oldest_finishes():
    sched = scheduler(max_batch_size=4, max_queue_delay_ms=20)
    oldest = queue(sched, "oldest", [8], arrival=0.000)
    queue(sched, "next", [8], arrival=0.015)

    sched.finish(oldest)

    assert sched.wait_time(0.020, busy=False, draining=False) == pytest.approx(0.015)


def test_a_full_batch_of_pairs_is_cut_at_once_even_while_the_worker_is_busy():
    sched = scheduler(max_batch_size=4, max_queue_delay_ms=10_000)
    queue(sched, "a", [8, 8, 8, 8], arrival=5.0)

    assert sched.wait_time(5.0, busy=False, draining=False) == 0.0
    assert sched.wait_time(5.0, busy=True, draining=False) == 0.0


def test_a_full_token_budget_is_cut_at_once():
    sched = scheduler(max_batch_size=64, max_batch_tokens=100, max_queue_delay_ms=10_000)
    queue(sched, "a", [60, 50], arrival=5.0)  # 110 queued tokens, though only 2 of 64 pairs

    assert sched.wait_time(5.0, busy=False, draining=False) == 0.0


def test_a_partial_batch_waits_for_a_busy_worker_however_old_it_is():
    sched = scheduler(max_batch_size=4, max_queue_delay_ms=20)
    queue(sched, "a", [8], arrival=0.0)

    assert sched.wait_time(100.0, busy=True, draining=False) is None


def test_nothing_waits_while_draining():
    sched = scheduler(max_batch_size=4, max_queue_delay_ms=10_000)
    queue(sched, "a", [8], arrival=0.0)

    assert sched.wait_time(0.0, busy=True, draining=True) == 0.0


def test_an_empty_queue_has_nothing_to_cut():
    sched = scheduler()
    assert sched.wait_time(0.0, busy=False, draining=True) is None
    assert sched.next_batch(0.0) is None

    request = queue(sched, "a", [8])
    sched.finish(request)

    assert sched.wait_time(0.0, busy=False, draining=False) is None
    assert sched.next_batch(0.0) is None
