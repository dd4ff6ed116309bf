"""What happens to queued requests: drained on SIGTERM, dropped when their callers give up.

- sigterm: SIGTERM while the queue holds admitted requests (confirmed from
  the server's own metrics first): every one is answered, new requests are
  refused, the exit code is 0;
- abandoned: callers that time out or cancel while queued behind a backlog:
  their pairs must never reach the backend, and the server's Prometheus
  counters must account for every one of them.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc

from edgerec.benchmarks.harness.driver import closed_loop, send
from edgerec.benchmarks.harness.requests import RequestPool
from edgerec.benchmarks.harness.results import Tally
from edgerec.benchmarks.harness.server import ServerUnderTest
from edgerec.benchmarks.reliability.config import ReliabilityConfig
from edgerec.benchmarks.reliability.load import Capacity
from edgerec.benchmarks.reliability.report import Check, Scenario
from edgerec.proto import recommender_pb2, recommender_pb2_grpc
from edgerec.runtime.config import Config


def _requests_done(server: ServerUnderTest) -> float:
    """Score requests the server has finished (any code), by its own count."""
    return server.scrape().total("edgerec_requests_total", method="Score")


async def _until_admitted(server: ServerUnderTest, done_before: float, sent: int, timeout_s: float) -> float:
    """Wait until the server has admitted (or finished) all `sent` requests; returns how many it holds now."""
    deadline = time.perf_counter() + timeout_s
    while True:
        samples = await asyncio.to_thread(server.scrape)
        held = samples.total("edgerec_queue_requests")
        if samples.total("edgerec_requests_total", method="Score") - done_before + held >= sent:
            return held
        if time.perf_counter() > deadline:
            raise TimeoutError(f"the server did not admit {sent} requests in {timeout_s} s")
        await asyncio.sleep(0.005)


# -- SIGTERM under load -----------------------------------------------------------------------
def _burst(workload: RequestPool, served: Config, config: ReliabilityConfig) -> list[recommender_pb2.ScoreRequest]:
    """Requests worth `drain_burst_pairs` pairs (at most half the queue bound), taken from the workload."""
    budget = min(config.drain_burst_pairs, served.batcher.max_queue_pairs // 2)
    count = max(1, min(int(budget // workload.mean_pairs), served.batcher.max_queue_requests // 2))
    return [workload.take() for _ in range(count)]


def sigterm_under_load(bundle: Path, config: ReliabilityConfig, workload: RequestPool, served: Config) -> Scenario:
    """Admitted requests at SIGTERM are all answered; later ones are refused; exit code 0."""
    # The burst may exceed admission's time bound: what it refuses at once (RESOURCE_EXHAUSTED) was never admitted.
    before_signal = Tally(refusal_codes=frozenset({"RESOURCE_EXHAUSTED"}))
    # A call that reaches the server in the instant grpc begins its shutdown is cancelled by grpc itself
    # (CANCELLED, before any handler runs): refused too, if with a less helpful code than UNAVAILABLE.
    after_signal = Tally(refusal_codes=frozenset({"UNAVAILABLE", "CANCELLED"}))
    facts: dict[str, float] = {}
    server = ServerUnderTest(bundle, config.serve_flags(), startup_timeout_s=config.startup_timeout_s)
    try:

        async def main() -> int:
            async with server.channel() as channel:
                stub = recommender_pb2_grpc.RecommenderStub(channel)
                done_before = await asyncio.to_thread(_requests_done, server)
                stop = asyncio.Event()
                calls = workload.calls(stub, config.request_timeout_s)
                load = asyncio.create_task(closed_loop(calls, before_signal, config.fault_concurrency, 3600.0, stop=stop))
                await asyncio.sleep(config.fault_load_s / 2)
                burst = [
                    asyncio.create_task(send(before_signal, lambda r=r: stub.Score(r, timeout=config.request_timeout_s)))
                    for r in _burst(workload, served, config)
                ]
                stop.set()  # no request leaves the client from here until the signal
                await asyncio.sleep(0.01)  # every burst task has sent its request
                facts["held_at_signal"] = await _until_admitted(server, done_before, before_signal.sent, 30.0)
                signalled = time.perf_counter()
                server.process.process.send_signal(signal.SIGTERM)
                exit_code = asyncio.create_task(asyncio.to_thread(server.process.process.wait, config.startup_timeout_s))
                probes = []
                while not exit_code.done():  # new requests while it drains
                    probes.append(asyncio.create_task(send(after_signal, lambda: stub.Score(workload.take(), timeout=5.0))))
                    await asyncio.sleep(0.05)
                facts["drain_s"] = time.perf_counter() - signalled
                await asyncio.gather(load, *burst, *probes)
                await asyncio.sleep(0.3)
                for _ in range(3):  # after exit: refused too
                    await send(after_signal, lambda: stub.Score(workload.take(), timeout=5.0))
                return exit_code.result()

        exit_code = asyncio.run(main())
        peak = server.memory.peak_mb()
    finally:
        server.close()
    figures = {
        **before_signal.summary(),
        "held_at_signal": int(facts.get("held_at_signal", 0)),
        "drain_s": facts.get("drain_s"),
        "after_signal": after_signal.summary(),
        "exit_code": exit_code,
        "peak_rss_mb": peak,
    }
    figures["sent"] += after_signal.sent
    figures["refused"] = after_signal.summary()["refused"]
    figures["lost"] = before_signal.lost + after_signal.lost
    checks = [
        Check(
            "every admitted request answered",
            before_signal.lost == 0 and before_signal.answered >= 1,
            f"{before_signal.answered} of {before_signal.sent} sent before the signal answered, "
            f"{dict(before_signal.refused)} refused at admission ({dict(before_signal.unexpected)})",
        ),
        Check("under load at the signal", facts.get("held_at_signal", 0) >= 1, f"{facts.get('held_at_signal')} requests held"),
        Check(
            "new requests refused",
            after_signal.lost == 0 and sum(after_signal.refused.values()) >= 1,
            f"after the signal: answered {after_signal.answered}, refused {dict(after_signal.refused)}, "
            f"lost {after_signal.lost} ({dict(after_signal.unexpected)})",
        ),
        Check("exit code 0", exit_code == 0, f"exit code {exit_code}"),
    ]
    return Scenario("sigterm", "SIGTERM drains: admitted answered, new refused, exit 0", figures, checks)


# -- abandoned requests -------------------------------------------------------------------------
def abandoned(
    server: ServerUnderTest, item_ids: list[str], capacity: Capacity, config: ReliabilityConfig, served: Config
) -> Scenario:
    """Callers that time out or cancel while queued behind a backlog cost no compute."""
    # Every pair has the same length (one context, one item), so all wait in one length bucket,
    # first come first served: the victims queue strictly behind the backlog.
    context = [recommender_pb2.ContextItem(item_id=item, count=2) for item in item_ids[1:9]]

    def request(pairs: int) -> recommender_pb2.ScoreRequest:
        return recommender_pb2.ScoreRequest(context=context, candidates=[recommender_pb2.Candidate(item_id=item_ids[0])] * pairs)

    per_blocker = min(served.server.max_candidates, 256)
    victims = config.abandoned_requests
    backlog_pairs = min(served.batcher.max_queue_pairs - victims, max(capacity.pairs_per_s, 4 * per_blocker))
    if served.batcher.max_queue_wait_ms > 0:  # victims must be admitted behind the backlog: half the time bound
        backlog_pairs = min(backlog_pairs, max(1, served.batcher.max_queue_wait_ms / 2000.0 * capacity.pairs_per_s))
        per_blocker = max(1, min(per_blocker, int(backlog_pairs)))
    blockers = max(1, min(int(backlog_pairs // per_blocker), served.batcher.max_queue_requests - victims))
    backlog_s = blockers * per_blocker / capacity.pairs_per_s
    blocking, giving_up = Tally(), Tally(refusal_codes=frozenset({"DEADLINE_EXCEEDED", "CANCELLED"}))
    kinds: dict[str, int] = {"deadline": 0, "cancelled": 0}

    async def main() -> None:
        async with server.channel() as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            done_before = await asyncio.to_thread(_requests_done, server)
            backlog = [
                asyncio.create_task(send(blocking, lambda: stub.Score(request(per_blocker), timeout=config.request_timeout_s)))
                for _ in range(blockers)
            ]
            await _until_admitted(server, done_before, blockers, 30.0)

            async def times_out() -> None:
                kinds["deadline"] += 1
                await send(giving_up, lambda: stub.Score(request(1), timeout=backlog_s / 4))

            async def cancels() -> None:
                kinds["cancelled"] += 1
                giving_up.sent += 1
                started = time.perf_counter()
                call = stub.Score(request(1), timeout=config.request_timeout_s)
                await asyncio.sleep(backlog_s / 8)
                call.cancel()
                try:
                    await call
                except asyncio.CancelledError:
                    giving_up.record("CANCELLED", time.perf_counter() - started)
                except grpc.aio.AioRpcError as exc:
                    giving_up.record(exc.code().name, time.perf_counter() - started, exc.details() or "")
                else:
                    giving_up.record("OK", time.perf_counter() - started)

            await asyncio.gather(*(times_out() if i % 2 else cancels() for i in range(victims)), *backlog)

    before = server.scrape()
    asyncio.run(main())
    deadline = time.perf_counter() + 10
    while server.scrape().total("edgerec_queue_requests") and time.perf_counter() < deadline:
        time.sleep(0.02)  # let the server finish its bookkeeping of the last answers
    after = server.scrape()

    def delta(name: str, **labels: str) -> float:
        return after.total(name, **labels) - before.total(name, **labels)

    abandoned_count = sum(giving_up.refused.values())
    scored = delta("edgerec_pairs_scored_total")
    expected_scored = blockers * per_blocker + giving_up.answered
    dropped_requests = delta("edgerec_dropped_requests_total")
    gave_up = sum(
        delta("edgerec_requests_total", method="Score", code=code) for code in ("CANCELLED", "DEADLINE_EXCEEDED")
    )
    dropped_pairs = delta("edgerec_dropped_pairs_total")
    summary = giving_up.summary()
    figures = {
        **summary,
        "sent": blocking.sent + giving_up.sent,
        "answered": blocking.answered + giving_up.answered,
        "lost": blocking.lost + giving_up.lost,
        "backlog_requests": blockers,
        "backlog_pairs": blockers * per_blocker,
        "backlog_s_estimate": backlog_s,
        "victims": kinds,
        "pairs_scored": int(scored),
        "pairs_scored_expected": expected_scored,
        "dropped_requests": {r: int(delta("edgerec_dropped_requests_total", reason=r)) for r in ("deadline", "cancelled")},
        "dropped_pairs": int(dropped_pairs),
        "peak_rss_mb": server.memory.peak_mb(),
    }
    checks = [
        Check("backlog answered", blocking.lost == 0 and blocking.answered == blockers, f"{blocking.answered} of {blockers}"),
        Check("victims only OK, DEADLINE_EXCEEDED or CANCELLED", giving_up.lost == 0, f"lost {dict(giving_up.unexpected)}"),
        Check(
            "both ways of giving up happened",
            giving_up.refused["DEADLINE_EXCEEDED"] >= 1 and giving_up.refused["CANCELLED"] >= 1,
            f"{dict(giving_up.refused)} of {victims} victims (backlog ~{backlog_s * 1000:.0f} ms)",
        ),
        Check(
            "abandoned requests counted once, with their code",
            # A request abandoned while queued is dropped (counted once); one whose client gave up before the
            # server admitted it never queued, and one gRPC ends before its handler runs is not counted at all
            # (runtime/metrics.py lists what cannot be counted): so dropped <= counted <= given up.
            dropped_requests <= gave_up <= abandoned_count and gave_up >= 1,
            f"edgerec_requests_total Score CANCELLED/DEADLINE_EXCEEDED +{gave_up:.0f}, "
            f"edgerec_dropped_requests_total +{dropped_requests:.0f}, clients gave up on {abandoned_count}",
        ),
        Check(
            "abandoned requests cost no compute",
            scored == expected_scored and dropped_pairs == dropped_requests,
            f"pairs scored +{scored:.0f} (backlog + answered victims = {expected_scored}), dropped +{dropped_pairs:.0f}",
        ),
    ]
    return Scenario("abandoned", "requests given up while queued never reach the backend", figures, checks)
