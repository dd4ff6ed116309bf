"""`edgerec reliability`: overload, soak, hostile input, faults and access, run long and reported as figures.

Every scenario starts real `edgerec serve` processes on 127.0.0.1 and holds
them to checks (see `reliability_load`, `reliability_drain`,
`reliability_faults`, `reliability_hostile`, `reliability_access`). For each one the report gives
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

from edgerec.benchmarks import reliability_access, reliability_drain, reliability_faults, reliability_hostile, reliability_load
from edgerec.benchmarks.reliability_config import QUICK, SCENARIOS, ReliabilityConfig
from edgerec.benchmarks.reliability_harness import Check, Scenario, ScoreWorkload, ServerUnderTest, catalog_ids, served_config
from edgerec.runtime.bundle import open_bundle
from edgerec.settings import add_arguments, dump_json, from_arguments, to_jsonable

log = logging.getLogger(__name__)

LOAD_SCENARIOS = ("soak", "overload", "abandoned")


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
        ids = catalog_ids(root)
        workload = ScoreWorkload(ids, config.min_candidates, config.max_candidates, seed=config.seed)
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

        load = [name for name in selected if name in LOAD_SCENARIOS]
        if load:
            bar.set_postfix_str("starting a server; measuring its capacity")
            with ServerUnderTest(root, config.serve_flags(), startup_timeout_s=config.startup_timeout_s) as server:
                capacity = reliability_load.measure_capacity(server, workload, config)
                extra["capacity"] = capacity.as_dict()
                for name in load:
                    if name == "soak":
                        record(name, lambda: reliability_load.soak(server, workload, capacity, config, _ticker(bar, "soak", config.soak_s)))
                    elif name == "overload":
                        record(name, lambda: reliability_load.overload(
                            server, workload, capacity, config, served, _ticker(bar, "overload", config.overload_s)))  # fmt: skip
                    else:
                        record(name, lambda: reliability_drain.abandoned(server, ids, capacity, config, served))
        makers: dict[str, Callable[[], Scenario]] = {
            "hostile": lambda: reliability_hostile.hostile(root, config),
            "corrupt-bundle": lambda: reliability_faults.corrupt_bundle(root, workdir, config),
            "broken-reload": lambda: reliability_faults.broken_reload(root, workdir, config, workload),
            "sigterm": lambda: reliability_drain.sigterm_under_load(root, config, workload, served),
            "engine-fault": lambda: reliability_faults.engine_fault(root, workdir, config, workload, served),
            "access": lambda: reliability_access.access(root, workdir, config, ids),
        }
        for name in selected:
            if name in makers:
                if name == "access" and not reliability_access.openssl_available():
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


# -- REPORT.md -------------------------------------------------------------------------------------
def _num(value: Any, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _codes(codes: dict | None) -> str:
    return ", ".join(f"{code} {n}" for code, n in sorted((codes or {}).items()) if n) or "0"


def render_report(results: dict[str, Any]) -> str:
    """The report: one summary row per scenario, then each scenario's checks and figures."""
    settings = results["settings"]
    lines = [
        f"# Reliability report: {results['model']['name']} {results['model']['version']}",
        "",
        f"Run {results['date']} on {results['machine']['cpus']} CPUs ({results['machine']['platform']}), "
        f"{results['seconds']:.0f} s in all. Bundle `{results['bundle']}`. Every server listened on 127.0.0.1.",
        "",
        "**Lost** = sent - answered - refused: requests that got no answer, or a code the scenario never "
        "allows (e.g. INTERNAL under overload). It must be zero everywhere.",
        "",
    ]
    capacity = results.get("capacity")
    if capacity:
        lines += [
            f"Capacity (closed loop, {capacity['concurrency']} requests in flight, {settings['min_candidates']}-"
            f"{settings['max_candidates']} candidates per request): {capacity['requests_per_s']:.1f} requests/s, "
            f"{capacity['pairs_per_s']:.0f} pairs/s, p99 {capacity['p99_ms']:.0f} ms, peak RSS {capacity['peak_rss_mb']:.0f} MiB.",
            "",
        ]
    lines += [
        "| scenario | what it shows | sent | answered | refused (by code) | lost | p99 ms (admitted) | peak RSS MiB | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in results["scenarios"]:
        f = s["figures"]
        lines.append(
            f"| {s['name']} | {s['shows']} | {_num(f.get('sent'))} | {_num(f.get('answered'))} | {_codes(f.get('refused'))} "
            f"| {_num(f.get('lost'))} | {_num(f.get('p99_ms'))} | {_num(f.get('peak_rss_mb'))} "
            f"| {'**passed**' if s['passed'] else '**FAILED**'} |"
        )
    total_lost = sum(s["figures"].get("lost", 0) or 0 for s in results["scenarios"])
    lines += ["", f"Lost requests, all scenarios: **{total_lost}**.", ""]
    for s in results["scenarios"]:
        lines += [f"## {s['name']}: {s['shows']} ({s['seconds']:.0f} s)", ""]
        lines += [f"- {'✅' if c['passed'] else '❌'} **{c['name']}**: {c['detail']}" for c in s["checks"]]
        lines += ["", *_details(s), ""]
    lines += [
        "Figures in full, with the settings of this run and of the servers under test: `results.json`. "
        "Re-run with `make reliability` (or `edgerec reliability --help` for every option).",
        "",
    ]
    return "\n".join(lines)


def _details(scenario: dict) -> list[str]:
    """A few scenario-specific figures worth a line each."""
    f, name = scenario["figures"], scenario["name"]
    if "error" in f:
        return [f"Could not run: `{f['error']}`"]
    if name in ("soak", "overload"):
        lines = [
            f"Offered {f['offered_requests_per_s']:.1f} requests/s (achieved {f['achieved_requests_per_s']:.1f}) for "
            f"{f['seconds']:.0f} s; admitted p50 {_num(f['p50_ms'])} ms, p99 {_num(f['p99_ms'])} ms. Latencies count from "
            f"each request's scheduled arrival, so they include the load generator's own send delay "
            f"(p99 {_num(f.get('client_lag_p99_ms'))} ms)."
        ]
        if name == "soak":
            lines.append(
                f"Resident memory: {_num(f['rss_first_fifth_mb'], 1)} MiB in the first fifth, "
                f"{_num(f['rss_last_fifth_mb'], 1)} MiB in the last ({f['rss_growth_mb_per_min']:+.2f} MiB/min)."
            )
        else:
            lines.append(
                f"Refused {f['refused_fraction']:.0%} at once: refusal p50 {_num(f['refusal_p50_ms'], 1)} ms, "
                f"p99 {_num(f['refusal_p99_ms'], 1)} ms. Admission bound {f['queue_bound_pairs']} pairs "
                f"= {f['queue_drain_ms']:.0f} ms of work at capacity, full after ~{f['queue_fills_after_s']:.1f} s "
                f"of overload; p99 bound {f['p99_bound_ms']:.0f} ms."
            )
        return lines
    if name == "hostile":
        rows = ["| kind | cases | OK | refused | lost | failed health checks |", "|---|---|---|---|---|---|"]
        for kind, k in f.get("kinds", {}).items():
            rows.append(
                f"| {kind} | {k['sent']} | {k['answered']} | {_codes(k['refused'])} | {k['lost']} "
                f"({_codes(k['lost_by_code'])}) | {k['failed_health_checks']} |"
            )
        return rows
    if name == "access":
        rows = ["| client | expected | got |", "|---|---|---|"]
        rows += [f"| {attempt} | {a['expected']} | {_codes(a['codes'])} |" for attempt, a in f.get("attempts", {}).items()]
        return rows + ["", f"Listening on: {', '.join(f.get('listening_on', []))}."]
    if name == "sigterm":
        after = f["after_signal"]
        return [
            f"{f['held_at_signal']} admitted requests held at the signal; drained in {_num(f['drain_s'], 2)} s; "
            f"after the signal: answered {after['answered']}, refused {_codes(after['refused'])}; exit code {f['exit_code']}."
        ]
    if name == "abandoned":
        return [
            f"Backlog {f['backlog_requests']} requests / {f['backlog_pairs']} pairs (~{f['backlog_s_estimate'] * 1000:.0f} ms); "
            f"victims {f['victims']}; server dropped {f['dropped_requests']} requests, {f['dropped_pairs']} pairs; "
            f"pairs scored {f['pairs_scored']} (backlog + answered victims: {f['pairs_scored_expected']})."
        ]
    if name == "engine-fault":
        return [
            f"{f['poisoned_requests']} poisoned requests, {f['failed_batches']} failed batches, "
            f"{f['collateral_failures']} other requests failed beside them. Status: `{f['status_details'][:200]}`"
        ]
    if name == "broken-reload":
        return [f"Reloads {f['reloads']}; {f['answered_while_broken_reloads_failed']} answers while the broken bundles were tried."]
    if name == "corrupt-bundle":
        return [f"- {c['case']}: started {c['started']}, named {c['names_file_and_checksums']}" for c in f.get("cases", [])]
    return []
