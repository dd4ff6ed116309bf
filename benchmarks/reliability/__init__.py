"""`edgerec reliability`: overload, soak, hostile input, faults and access, run long and reported as figures.

Every scenario starts real `edgerec serve` processes on 127.0.0.1 (the
shared harness, `edgerec.benchmarks.harness`) and holds them to checks:
`load` (capacity, soak, overload), `drain` (SIGTERM, abandoned requests),
`faults` (damaged bundles, broken reloads, a failing backend; the bundles
from `bundles`), `hostile` (seeded hostile messages) and `access` (TLS,
tokens, message limits). For each one the report (`report`) gives
requests sent, answered, refused (by code) and lost (sent - answered -
refused, which must be zero), the p99 latency of admitted requests and the
server's peak resident memory, plus every check with the figures that
decided it. Results go to `results.json` and `REPORT.md` in `--output-dir`.

The defaults take a few minutes on two cores (the soak and the overload
dominate); `--quick` takes well under a minute and serves the tests. The
exit code is 0 only if every scenario passed.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from edgerec.benchmarks.harness.requests import RequestPool, catalog_ids, random_requests
from edgerec.benchmarks.harness.server import ServerUnderTest
from edgerec.benchmarks.reliability import access, drain, faults, hostile, load
from edgerec.benchmarks.reliability.config import QUICK, SCENARIOS, ReliabilityConfig, served_config
from edgerec.benchmarks.reliability.report import Check, Scenario, render_report
from edgerec.core.bundle import open_bundle
from edgerec.core.settings import add_arguments, dump_json, from_arguments, to_jsonable

log = logging.getLogger(__name__)

# Scenarios that share one server and its measured capacity.
LOAD_SCENARIOS = ("soak", "overload", "abandoned")
WORKLOAD_SIZE = 64  # distinct Score requests, sent round robin


def configure(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, ReliabilityConfig)


def settings_from(args: argparse.Namespace) -> ReliabilityConfig:
    """Defaults (or the quick ones with --quick), overridden by every flag given."""
    base = QUICK if getattr(args, "quick", None) else ReliabilityConfig()
    return from_arguments(ReliabilityConfig, args, base=base)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = settings_from(args)
    unknown = sorted(set(config.scenarios) - set(SCENARIOS))
    if unknown:
        print(f"edgerec reliability: unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
        return 2
    bundle_path = Path(config.bundle)
    if not bundle_path.exists():
        print(f"edgerec reliability: no bundle at {bundle_path}; run `make export` first or pass --bundle")
        return 2
    results = run_scenarios(config)
    output = Path(config.output_dir)
    dump_json(output / "results.json", results)
    (output / "REPORT.md").write_text(render_report(results))
    lost = sum(s["figures"].get("lost", 0) or 0 for s in results["scenarios"])
    verdict = "all scenarios passed" if results["passed"] else "SOME SCENARIOS FAILED"
    print(f"{verdict}; lost requests: {lost}; report: {output / 'REPORT.md'}")
    return 0 if results["passed"] else 1


def run_scenarios(config: ReliabilityConfig) -> dict[str, Any]:
    """Run the selected scenarios in order, each one's failure recorded without stopping the others."""
    selected = [name for name in SCENARIOS if name in config.scenarios]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgerec-reliability-") as scratch:
        workdir = Path(scratch)
        bundle = open_bundle(Path(config.bundle), workdir / "unpacked" if Path(config.bundle).is_file() else None)
        root = bundle.root
        ids = catalog_ids(bundle)
        requests = random_requests(
            ids, WORKLOAD_SIZE, config.min_candidates, config.max_candidates, config.max_history_items, config.seed
        )
        workload = RequestPool(requests)
        served = served_config(config.serve_flags())
        scenarios: list[dict] = []
        extra: dict[str, Any] = {}
        bar = tqdm(total=len(selected), desc="reliability", unit="scenario")

        def record(name: str, make: Callable[[], Scenario]) -> None:
            bar.set_postfix_str(name)
            began = time.perf_counter()
            try:
                scenario = make()
            except Exception as exc:  # one broken scenario must not hide the others' figures
                log.error("scenario %s could not run", name, exc_info=exc)
                scenario = Scenario(name, "could not run", {"error": f"{type(exc).__name__}: {exc}",
                                    "traceback": traceback.format_exc()[-3000:]}, [Check("ran", False, str(exc)[:500])])  # fmt: skip
            entry = scenario.as_dict()
            entry["seconds"] = time.perf_counter() - began
            scenarios.append(entry)
            bar.update()

        under_load = [name for name in selected if name in LOAD_SCENARIOS]
        if under_load:
            bar.set_postfix_str("starting a server; measuring its capacity")
            with ServerUnderTest(root, config.serve_flags(), startup_timeout_s=config.startup_timeout_s) as server:
                capacity = load.measure_capacity(server, workload, config)
                extra["capacity"] = capacity.as_dict()
                for name in under_load:
                    if name == "soak":
                        record(name, lambda: load.soak(server, workload, capacity, config, _ticker(bar, "soak", config.soak_s)))
                    elif name == "overload":
                        record(name, lambda: load.overload(
                            server, workload, capacity, config, served, _ticker(bar, "overload", config.overload_s)))  # fmt: skip
                    else:
                        record(name, lambda: drain.abandoned(server, ids, capacity, config, served))
        makers: dict[str, Callable[[], Scenario]] = {
            "hostile": lambda: hostile.hostile(root, config),
            "corrupt-bundle": lambda: faults.corrupt_bundle(root, workdir, config),
            "broken-reload": lambda: faults.broken_reload(root, workdir, config, workload),
            "sigterm": lambda: drain.sigterm_under_load(root, config, workload, served),
            "backend-fault": lambda: faults.backend_fault(root, workdir, config, workload, served),
            "access": lambda: access.access(root, workdir, config, ids),
        }
        for name in selected:
            if name in makers:
                if name == "access" and not access.openssl_available():
                    record(name, lambda: Scenario(name, "skipped", {}, [Check("openssl present", False, "no openssl CLI")]))
                    continue
                record(name, makers[name])
        bar.close()
    return {
        "bundle": str(config.bundle),
        "model": {"name": bundle.name, "version": bundle.version},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": to_jsonable(config),
        "server_settings": to_jsonable(served),
        **extra,
        "scenarios": scenarios,
        "passed": all(s["passed"] for s in scenarios),
        "seconds": time.perf_counter() - started,
    }


def _ticker(bar: tqdm, name: str, seconds: float) -> Callable[[float], None]:
    return lambda elapsed: bar.set_postfix_str(f"{name} {elapsed:.0f}/{seconds:.0f} s")
