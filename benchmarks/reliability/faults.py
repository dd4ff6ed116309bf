"""Fault scenarios: broken bundles, hot reloads gone wrong, a failing backend.

Each one provokes the fault for real, the way it happens on an edge box:
- corrupt-bundle: a variant file truncated or altered after signing, and a
  truncated archive; `edgerec serve` must refuse to start, naming the file
  and both checksums;
- broken-reload: under load, the `latest` symlink is pointed at a tampered
  bundle, then at one whose variant file is not ONNX, each followed by
  SIGHUP; the old version keeps answering and each failure is logged and
  counted; then a good bundle goes live without losing a request;
- backend-fault: a model that raises on any batch holding a marked token;
  only those batches fail, with a clear INTERNAL, and the server carries on.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

from edgerec.benchmarks.harness.driver import closed_loop, send
from edgerec.benchmarks.harness.requests import RequestPool
from edgerec.benchmarks.harness.results import Tally
from edgerec.benchmarks.harness.server import ServerUnderTest, health_check
from edgerec.benchmarks.reliability import bundles
from edgerec.benchmarks.reliability.config import ReliabilityConfig
from edgerec.benchmarks.reliability.report import Check, Scenario
from edgerec.core.bundle import sha256_file
from edgerec.proto import recommender_pb2, recommender_pb2_grpc
from edgerec.runtime.config import Config


# -- corrupt bundle -----------------------------------------------------------------------
def _try_start(bundle: Path, config: ReliabilityConfig) -> tuple[bool, str]:
    """(started, what it said): start `edgerec serve` on a bundle and stop it again if it starts."""
    try:
        server = ServerUnderTest(bundle, config.serve_flags(), startup_timeout_s=config.startup_timeout_s)
    except (RuntimeError, TimeoutError) as exc:
        return False, str(exc)
    log = server.log()
    server.close()
    return True, log


def corrupt_bundle(bundle: Path, workdir: Path, config: ReliabilityConfig) -> Scenario:
    """Truncated variant, altered variant, truncated archive: the server must refuse each, naming what is wrong."""
    cases = []
    for kind, damage in (("truncated variant file", bundles.truncate), ("altered variant file", bundles.alter)):
        root = bundles.slim_copy(bundle, workdir / kind.replace(" ", "-"), precision=config.precision or None)
        path = bundles.variant_path(root)
        expected = bundles.expected_checksum(root, path)
        damage(path)
        actual = sha256_file(path)
        started, said = _try_start(root, config)
        named = str(path) in said and expected in said and actual in said
        cases.append(_case(kind, started, said, named, path))
    source = bundles.slim_copy(bundle, workdir / "archive-source", precision=config.precision or None)
    archive = bundles.pack_truncated(source, workdir / "truncated-bundle.tar.gz")
    started, said = _try_start(archive, config)
    cases.append(_case("truncated archive", started, said, str(archive) in said, archive))
    refused = sum(not case["started"] for case in cases)
    figures = {
        "sent": len(cases),
        "answered": 0,
        "refused": {"refused to start": refused},
        "lost": len(cases) - refused,
        "cases": cases,
    }
    checks = [
        Check(f"refuses the {c['case']}", not c["started"], "the server did not start" if not c["started"] else "it started") for c in cases
    ] + [
        Check(
            f"names the {c['case']}",
            c["names_file_and_checksums"],
            f"{c['file']} and both sha256 (the archive: its path) appear in what the server said",
        )
        for c in cases
    ] + [
        Check(
            f"says so plainly ({c['case']})",
            c["exit_code"] == 1 and not c["traceback"],
            f"exit code {c['exit_code']}, {'a' if c['traceback'] else 'no'} traceback",
        )
        for c in cases
    ]
    return Scenario("corrupt-bundle", "a damaged bundle never serves", figures, checks)


def _case(kind: str, started: bool, said: str, named: bool, path: Path) -> dict:
    exit_code = re.search(r"exited with (-?\d+)", said)
    return {
        "case": kind,
        "started": started,
        "exit_code": int(exit_code.group(1)) if exit_code else None,
        "names_file_and_checksums": named,
        "traceback": "Traceback" in said,
        "file": str(path),
        "said": said.strip().splitlines()[-1][-400:] if said.strip() else "",
    }


# -- broken reload ---------------------------------------------------------------------------
def broken_reload(bundle: Path, workdir: Path, config: ReliabilityConfig, workload: RequestPool) -> Scenario:
    """Under load: SIGHUP onto a tampered bundle, then onto an unloadable one, then onto a good one."""
    precision = config.precision or None
    current = bundles.slim_copy(bundle, workdir / "reload-v1", version="v1", precision=precision)
    tampered = bundles.slim_copy(bundle, workdir / "reload-tampered", version="tampered", precision=precision)
    bundles.alter(bundles.variant_path(tampered))
    unloadable = bundles.slim_copy(bundle, workdir / "reload-unloadable", version="unloadable", precision=precision)
    bundles.variant_path(unloadable).write_bytes(b"this is not an ONNX model\n" * 64)
    bundles.resign(unloadable)  # the checksums pass; loading the variant must fail
    newer = bundles.slim_copy(bundle, workdir / "reload-v2", version="v2", precision=precision)
    link = workdir / "latest"
    bundles.point_link(link, current)

    tally = Tally()
    answers: list[tuple[float, str]] = []  # (sent at, model_version)
    marks: dict[str, float] = {}
    pause = config.fault_load_s / 4

    with ServerUnderTest(link, config.serve_flags(), startup_timeout_s=config.startup_timeout_s) as server:

        async def main() -> None:
            async with server.channel() as channel:
                stub = recommender_pb2_grpc.RecommenderStub(channel)

                async def call() -> None:
                    sent = time.perf_counter()
                    reply = await stub.Score(workload.take(), timeout=config.request_timeout_s)
                    answers.append((sent, reply.model_version))

                stop = asyncio.Event()
                load = asyncio.create_task(closed_loop(call, tally, config.fault_concurrency, 3600.0, stop=stop))
                await asyncio.sleep(pause)
                marks["first broken reload"] = time.perf_counter()
                for failures, broken in enumerate((tampered, unloadable), start=1):
                    bundles.point_link(link, broken)
                    server.process.reload()
                    await _until_metric(server, "edgerec_bundle_reloads_total", failures, config.startup_timeout_s, result="failed")
                    await asyncio.sleep(pause)
                marks["good reload sent"] = time.perf_counter()
                bundles.point_link(link, newer)
                server.process.reload()
                await _until_metric(server, "edgerec_bundle_reloads_total", 1, config.startup_timeout_s, result="ok")
                marks["good reload live"] = time.perf_counter()
                await asyncio.sleep(pause)
                stop.set()
                await load

        asyncio.run(main())
        healthy = health_check(server.target)
        log = server.log()
        peak = server.memory.peak_mb()
        reloads = server.scrape().by_label("edgerec_bundle_reloads_total", "result")

    during_broken = [v for t, v in answers if marks["first broken reload"] <= t < marks["good reload sent"]]
    after_good = [v for t, v in answers if t >= marks["good reload live"]]
    figures = {
        **tally.summary(),
        "reloads": {k: int(v) for k, v in reloads.items()},
        "answered_while_broken_reloads_failed": len(during_broken),
        "versions_while_broken": sorted(set(during_broken)),
        "versions_after_good_reload": sorted(set(after_good)),
        "peak_rss_mb": peak,
    }
    damaged = bundles.variant_path(tampered)
    as_served = str(link / damaged.relative_to(tampered))  # the server names files by the path it was given
    checksums = (bundles.expected_checksum(tampered, damaged), sha256_file(damaged))
    checks = [
        Check("nothing lost", tally.lost == 0, f"lost {tally.lost} of {tally.sent} ({dict(tally.unexpected)})"),
        Check("both broken reloads failed", reloads.get("failed") == 2, f"reloads {reloads}"),
        Check(
            "old version kept serving",
            bool(during_broken) and set(during_broken) == {"v1"},
            f"{len(during_broken)} answers while the broken bundles were tried, versions {sorted(set(during_broken))}",
        ),
        Check(
            "tampered bundle reported",
            bool(re.search(r"reload of .* failed", log)) and as_served in log and all(c in log for c in checksums),
            f"the log names {as_served} and both its checksums",
        ),
        Check("unloadable variant reported", "cannot load" in log, "the log says the variant cannot be loaded"),
        Check(
            "good reload goes live",
            reloads.get("ok") == 1 and bool(after_good) and set(after_good) == {"v2"},
            f"versions answered after it: {sorted(set(after_good))}",
        ),
        Check("server up", healthy, "health SERVING at the end"),
    ]
    return Scenario("broken-reload", "a bad bundle pushed to a live server changes nothing", figures, checks)


# -- backend failure --------------------------------------------------------------------------------
def backend_fault(bundle: Path, workdir: Path, config: ReliabilityConfig, workload: RequestPool, served: Config) -> Scenario:
    """A model that raises on batches holding a marked token: those fail with INTERNAL, the rest is served."""
    root, word = bundles.poisoned_bundle(bundle, workdir / "poisoned")
    poison = recommender_pb2.ScoreRequest(candidates=[recommender_pb2.Candidate(text=word)])
    one_by_one_normal, one_by_one_poison = Tally(), Tally(refusal_codes=frozenset({"INTERNAL"}))
    normal, poisoned = Tally(refusal_codes=frozenset({"INTERNAL"})), Tally(refusal_codes=frozenset({"INTERNAL"}))
    rounds = max(3, int(config.fault_load_s * 2))

    with ServerUnderTest(root, config.serve_flags(), startup_timeout_s=config.startup_timeout_s) as server:
        before = server.scrape()

        async def main() -> None:
            async with server.channel() as channel:
                stub = recommender_pb2_grpc.RecommenderStub(channel)
                normal_call = workload.calls(stub, config.request_timeout_s)
                for _ in range(rounds):  # one at a time: each request is its own batch
                    await send(one_by_one_poison, lambda: stub.Score(poison, timeout=config.request_timeout_s))
                    await send(one_by_one_normal, normal_call)
                stop = asyncio.Event()
                load = asyncio.create_task(closed_loop(normal_call, normal, config.fault_concurrency, 3600.0, stop=stop))
                for _ in range(rounds):  # poisoned requests mixed into the load
                    await asyncio.sleep(config.fault_load_s / rounds)
                    await send(poisoned, lambda: stub.Score(poison, timeout=config.request_timeout_s))
                stop.set()
                await load
                await send(one_by_one_normal, normal_call)

        asyncio.run(main())
        failed_batches = server.scrape().total("edgerec_batch_failures_total") - before.total("edgerec_batch_failures_total")
        healthy = server.alive() and health_check(server.target)
        peak = server.memory.peak_mb()
    collateral = normal.refused["INTERNAL"]
    details = one_by_one_poison.examples.get("INTERNAL", "")
    figures = {
        "sent": normal.sent + poisoned.sent + one_by_one_normal.sent + one_by_one_poison.sent,
        "answered": normal.answered + one_by_one_normal.answered,
        "refused": {"INTERNAL": collateral + poisoned.refused["INTERNAL"] + one_by_one_poison.refused["INTERNAL"]},
        "lost": normal.lost + poisoned.lost + one_by_one_normal.lost + one_by_one_poison.lost,
        "p99_ms": normal.summary()["p99_ms"],
        "poisoned_requests": poisoned.sent + one_by_one_poison.sent,
        "failed_batches": int(failed_batches),
        "collateral_failures": collateral,
        "normal_requests_under_load": normal.summary(),
        "status_details": details,
        "peak_rss_mb": peak,
    }
    max_rows = served.batcher.max_batch_size
    checks = [
        Check(
            "a poisoned batch fails with a clear status",
            one_by_one_poison.refused["INTERNAL"] == rounds and details == "the model failed on this request; the server log has details",
            f"{dict(one_by_one_poison.refused)} of {rounds}; details: {details!r}",
        ),
        Check(
            "the next batch is served",
            one_by_one_normal.answered == one_by_one_normal.sent,
            f"{one_by_one_normal.answered} of {one_by_one_normal.sent} normal requests between and after poisoned ones",
        ),
        Check(
            "only the poisoned batches fail",
            poisoned.answered == 0 and collateral <= failed_batches * (max_rows - 1),
            f"{collateral} normal requests failed beside poisoned ones in {failed_batches:.0f} failed batches "
            f"(at most {max_rows - 1} others per batch)",
        ),
        Check("nothing lost", figures["lost"] == 0, f"lost {figures['lost']}"),
        Check("server carries on", healthy, "health SERVING at the end"),
    ]
    return Scenario("backend-fault", "a backend failure costs one batch, not the server", figures, checks)


async def _until_metric(server: ServerUnderTest, name: str, value: float, timeout_s: float, **labels: str) -> None:
    """Wait until the server's counter `name` (with `labels`) reaches `value`; TimeoutError with its log if not."""
    deadline = time.perf_counter() + timeout_s
    while (await asyncio.to_thread(server.scrape)).total(name, **labels) < value:
        if time.perf_counter() > deadline or not server.alive():
            raise TimeoutError(f"{name}{labels} did not reach {value} in {timeout_s} s:\n{server.log()[-2000:]}")
        await asyncio.sleep(0.02)
