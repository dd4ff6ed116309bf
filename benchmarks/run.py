"""`edgerec bench`: runners offline, then the server under load, then one report.

Phases, in order (each prints its time budget, and shows progress):
1. offline: load every cross-encoder runner (skipped GPU runners keep their
   reason), time the batch x sequence grid with the runners interleaved,
   then each runner's AUC and NDCG@10 on validation baskets;
2. server: two `edgerec serve` processes, batching on and off, loaded with
   real test-split requests that the cross-encoder scores, closed and open
   loop, back to back;
3. two-stage: one `edgerec serve` of a bundle with the two-tower ranker,
   Rank and Recommend with the ranker alone, re-ranked and the cross-encoder
   alone, for real test-split customers (`benchmarks.two_stage`); skipped,
   with the reason in the report, on a bundle without the ranker;
4. report: `results.json` (all figures, the machine, the settings),
   `REPORT.md` (tables and goal verdicts) and PNG plots in `--output-dir`.
The goals are judged on figures of this same run only.

The default sizes take about ten minutes on two CPU cores; `--quick` takes
seconds and serves the tests.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgerec.benchmarks import goals, plots, report, two_stage, yardstick
from edgerec.benchmarks.config import (
    QUICK_LOAD,
    QUICK_OFFLINE,
    QUICK_TWO_STAGE,
    BenchPaths,
    LoadConfig,
    OfflineConfig,
    RunConfig,
    TwoStageConfig,
)
from edgerec.benchmarks.limits import ModelShape, PeakEstimate, estimate_peak, limits_table
from edgerec.benchmarks.machine import describe_machine
from edgerec.benchmarks.offline import grid_estimate_s, load_runners, time_grid
from edgerec.benchmarks.quality import measure_quality
from edgerec.benchmarks.runners import physical_cores, plan_runners
from edgerec.benchmarks.server_bench import rerank_flags, run_server_bench, server_estimate_s
from edgerec.benchmarks.workload import (
    customer_pool,
    data_fingerprint,
    default_samples_dir,
    load_baskets,
    mean_pair_tokens,
    request_pool,
)
from edgerec.core.bundle import Bundle, open_bundle
from edgerec.core.errors import EdgeRecError
from edgerec.core.settings import add_arguments, dump_json, from_arguments, to_jsonable
from edgerec.core.featurize import load_catalog
from edgerec.core.signatures import CROSS_ENCODER, RANKER
from edgerec.runtime.config import BatcherConfig

SECTIONS = (
    ("", RunConfig), ("", BenchPaths), ("offline_", OfflineConfig), ("load_", LoadConfig), ("two_stage_", TwoStageConfig)
)


def configure(parser: argparse.ArgumentParser) -> None:
    for prefix, cls in SECTIONS:
        add_arguments(parser, cls, prefix)


def settings_from(
    args: argparse.Namespace,
) -> tuple[RunConfig, BenchPaths, OfflineConfig, LoadConfig, TwoStageConfig]:
    """The run's settings: defaults (or the quick ones), overridden by any flag given."""
    run_config = from_arguments(RunConfig, args)
    paths = from_arguments(BenchPaths, args)
    quick = run_config.quick
    offline = from_arguments(OfflineConfig, args, "offline_", base=QUICK_OFFLINE if quick else None)
    load = from_arguments(LoadConfig, args, "load_", base=QUICK_LOAD if quick else None)
    staged = from_arguments(TwoStageConfig, args, "two_stage_", base=QUICK_TWO_STAGE if quick else None)
    return run_config, paths, offline, load, staged


def offline_phase(
    bundle: Bundle,
    paths: BenchPaths,
    config: OfflineConfig,
    threads: int,
    shape: ModelShape | None,
    peak: PeakEstimate,
    samples_dir: Path,
) -> dict[str, Any]:
    """Runners (loaded or skipped), the timed grid and each runner's quality."""
    featurizer = bundle.featurizer()
    seconds = {}
    started = time.perf_counter()
    specs = plan_runners(config.runners, bundle, paths.checkpoint, paths.export_dir)
    runners, runner_rows = load_runners(specs, featurizer, config, threads, Path(paths.output_dir) / ".trt-cache")
    seconds["runner loading"] = time.perf_counter() - started
    try:
        started = time.perf_counter()
        grid = time_grid(runners, featurizer, config, shape, peak)
        seconds["offline grid"] = time.perf_counter() - started
        started = time.perf_counter()
        validation = load_baskets(samples_dir, "valid")
        quality = measure_quality(
            runners, bundle, validation, featurizer, config.quality_baskets, config.quality_batch_size, config.seed
        )
        seconds["quality"] = time.perf_counter() - started
    finally:
        for runner in runners:
            runner.close()
    return {"runners": runner_rows, "offline": grid, "quality": quality, "phase_seconds": seconds}


def server_phase(
    bundle: Bundle, config: LoadConfig, threads: int, spin_wait: bool, samples_dir: Path, offline_rows: list, served: str
) -> dict[str, Any]:
    """Both cross-encoder servers under load, the request pool they were sent, and the serving-path cost.
    On a bundle with the ranker the servers re-rank every candidate, so the cross-encoder scores them all."""
    featurizer = bundle.featurizer()
    pool, source = request_pool(
        load_baskets(samples_dir, "test"),
        featurizer,
        config.request_pool,
        config.min_candidates,
        config.max_candidates,
        config.max_history_items,
        config.seed,
    )
    candidates = np.array([len(r.candidates) for r in pool], dtype=float)
    pair_tokens = float(np.average([mean_pair_tokens(featurizer, r) for r in pool], weights=candidates))
    started = time.perf_counter()
    extra_flags = rerank_flags(config.max_candidates) if RANKER.name in bundle.models else []
    server = run_server_bench(bundle.root, pool, config, threads, spin_wait, extra_flags)
    print(f"edgerec bench: in-process yardstick over {config.yardstick_pairs} pairs, three ways")
    precision = served.removeprefix("ort-")
    batcher = BatcherConfig(max_batch_size=config.max_batch_size or BatcherConfig().max_batch_size)
    path = bundle.variant_path(CROSS_ENCODER.name, precision)
    yardstick_figures = yardstick.measure(
        path, featurizer, pool, batcher, threads, config.yardstick_seconds, max_pairs=config.yardstick_pairs
    )
    return {
        "requests": {
            "count": len(pool),
            "source": source,
            "mean_candidates": float(candidates.mean()),
            "mean_pair_tokens": pair_tokens,
        },
        "server": server,
        "server_extra_flags": extra_flags,
        "serving_cost": goals.serving_cost(server, offline_rows, served, pair_tokens),
        "yardstick": yardstick_figures,
        "phase_seconds": {"server": time.perf_counter() - started},
    }


def two_stage_skip_reason(bundle: Bundle) -> str | None:
    """Why the two-stage benchmark cannot run on `bundle` (None: it can)."""
    if RANKER.name not in bundle.models:
        models = ", ".join(sorted(bundle.models))
        return (
            f"bundle {bundle.name}-{bundle.version} has no two-tower ranker (it holds: {models}); "
            "`edgerec export` builds one unless told --no-ranker"
        )
    return None


def two_stage_phase(
    bundle: Bundle,
    paths: BenchPaths,
    config: TwoStageConfig,
    load: LoadConfig,
    threads: int,
    spin_wait: bool,
    samples_dir: Path,
) -> dict[str, Any]:
    """The two-stage server's scenarios under load, the customers they were sent, and each scenario's quality
    from the export's evaluation; on a bundle without the ranker, the reason it was skipped."""
    reason = two_stage_skip_reason(bundle)
    if reason is not None:
        print(f"edgerec bench: two-stage server skipped: {reason}")
        return {"two_stage": {"skipped": reason}, "phase_seconds": {}}
    started = time.perf_counter()
    catalog = sorted(load_catalog(bundle.catalog_path))
    test = load_baskets(samples_dir, "test")
    earlier = [b for split in ("train", "valid") for b in load_baskets(samples_dir, split)] + test if test else []
    customers, source = customer_pool(
        test, earlier, catalog, config.request_pool, config.candidates, config.max_history_items, config.seed
    )
    print(f"edgerec bench: two-stage server, {len(customers)} customers ({source['source']})")
    figures = two_stage.run_two_stage_bench(bundle.root, customers, config, load, threads, spin_wait, len(catalog))
    quality = two_stage.export_quality(bundle, paths.export_dir)
    for scenario in figures["scenarios"]:
        scenario["quality"] = two_stage.scenario_quality(scenario, quality)
    contexts = [len(c.context) for c in customers]
    requests = {"count": len(customers), "mean_context_items": float(np.mean(contexts)), **source}
    return {
        "two_stage": {
            **figures, "requests": requests, "export_quality": quality, "goal_concurrency": config.goal_concurrency
        },
        "phase_seconds": {"two-stage server": time.perf_counter() - started},
    }


def _merge(results: dict[str, Any], phase: dict[str, Any]) -> None:
    results["phase_seconds"].update(phase.pop("phase_seconds"))
    results.update(phase)


def _finite(value: Any) -> Any:
    """`value` with NaN and infinities as None, so results.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def write_plots(results: dict[str, Any], output_dir: Path) -> list[str]:
    """The PNGs this run has data for; returns their file names."""
    written = []
    if results.get("offline"):
        limits = {
            int(length): {"fp32": entry["fp32_limit_pairs_per_s"], "int8": entry["int8_limit_pairs_per_s"]}
            for length, entry in (results.get("model") or {}).get("per_sequence_length", {}).items()
        }
        written.append(plots.offline_plot(results["offline"], limits, output_dir / "offline_throughput_latency.png").name)
    if results.get("server"):
        written.append(plots.server_load_plot(results["server"], output_dir / "server_latency_vs_load.png").name)
        closed_loop = output_dir / "server_closed_loop.png"
        written.append(plots.server_closed_loop_plot(results["server"], results.get("serving_cost", []), closed_loop).name)
    scenarios = (results.get("two_stage") or {}).get("scenarios")
    if scenarios:
        limits = (goals.RANKER_P99_MS, goals.RERANK_P99_MS, goals.RECOMMEND_P99_MS)
        written.append(plots.two_stage_plot(scenarios, limits, output_dir / "two_stage_latency.png").name)
    return written


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run_config, paths, offline_config, load_config, two_stage_config = settings_from(args)
    try:
        bundle = open_bundle(paths.bundle)
    except EdgeRecError as exc:
        print(f"edgerec bench: {exc}", file=sys.stderr)
        return 1
    started = time.perf_counter()
    output_dir = Path(paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    threads = offline_config.threads or physical_cores()
    peak = estimate_peak(cores=min(threads, physical_cores()))
    config_file = Path(paths.checkpoint) / "config.json"
    shape = ModelShape.from_config_file(config_file) if config_file.is_file() else None
    samples_dir = paths.samples_dir or default_samples_dir(bundle)
    model = bundle.model(CROSS_ENCODER.name)
    served = load_config.precision or model.default_variant["cpu"]

    plan = []
    if run_config.offline:
        plan.append(f"offline grid ~{grid_estimate_s(offline_config) / 60:.1f} min + runner loading and quality")
    if run_config.server:
        plan.append(f"server ~{server_estimate_s(load_config) / 60:.1f} min + start-up")
    if run_config.two_stage and two_stage_skip_reason(bundle) is None:
        count = len(two_stage_config.rank_rerank_tops) + len(two_stage_config.recommend_rerank_tops)
        estimate = two_stage.two_stage_estimate_s(two_stage_config, count)
        plan.append(f"two-stage server ~{estimate / 60:.1f} min + drains")
    print(f"edgerec bench: {bundle.name}-{bundle.version}, {threads} threads per runner; plan: {', '.join(plan)}")

    results: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": run_config.quick,
        "settings": {
            "run": run_config, "paths": paths, "offline": offline_config, "load": load_config, "two_stage": two_stage_config
        },
        "machine": describe_machine(),
        "threads": threads,
        "bundle": {
            "path": str(bundle.root),
            "name": bundle.name,
            "version": bundle.version,
            "models": sorted(bundle.models),
            "default_variant": model.default_variant,
            "variants": model.precisions,
            "data_fingerprint": data_fingerprint(bundle),
        },
        "samples_dir": str(samples_dir),
        "peak": peak.as_json(),
        "model": limits_table(shape, peak, offline_config.sequence_lengths) if shape else None,
        "served_runner": f"ort-{served}",
        "phase_seconds": {},
    }
    if run_config.offline:
        _merge(results, offline_phase(bundle, paths, offline_config, threads, shape, peak, samples_dir))
    if run_config.server:
        offline_rows = results.get("offline", [])
        spin_wait = offline_config.spin_wait
        _merge(results, server_phase(bundle, load_config, threads, spin_wait, samples_dir, offline_rows, f"ort-{served}"))
    if run_config.two_stage:
        spin_wait = offline_config.spin_wait
        _merge(results, two_stage_phase(bundle, paths, two_stage_config, load_config, threads, spin_wait, samples_dir))

    int8_runner = f"ort-{served}" if served.startswith("int8") else "ort-int8-dynamic"
    results["goals"] = [
        goals.int8_goal(
            results.get("offline", []),
            results.get("quality", {}),
            int8_runner,
            offline_config.goal_batch_size,
            offline_config.goal_sequence_length,
        ),
        *goals.server_goals(results.get("server", {}), results.get("serving_cost", []), load_config.goal_concurrency),
        *goals.serving_path_goals(
            results.get("server", {}), results.get("yardstick"), load_config.serving_cost_concurrencies, served
        ),
        *goals.two_stage_goals(
            results.get("two_stage"),
            two_stage_config.candidates,
            two_stage_config.goal_concurrency,
            two_stage_config.goal_rerank_top,
        ),
    ]
    results["plots"] = write_plots(results, output_dir)
    results["duration_s"] = time.perf_counter() - started
    results["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    dump_json(output_dir / "results.json", _finite(to_jsonable(results)))
    (output_dir / "REPORT.md").write_text(report.render(results, results["plots"]))
    for goal in results["goals"]:
        verdict = {True: " -> met", False: " -> NOT met", None: ""}[goal["met"]]
        print(f"  goal: {goal['name']}: {goal['summary']}{verdict}")
    minutes, plots_written = results["duration_s"] / 60, len(results["plots"])
    print(f"edgerec bench: {minutes:.1f} min; {output_dir}/results.json, REPORT.md and {plots_written} plots")
    return 0
