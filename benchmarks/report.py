"""REPORT.md: the run's results as tables a reader can check against results.json.

Everything in the report comes from the results dictionary of the same run
(which `results.json` holds in full): goals first, then the runners with
their size, memory and quality, the offline grid with its distance from the
hardware limit, the cross-encoder server under closed and open loop, the
two-stage server (each scenario's speed beside the quality the export's
evaluation recorded for it), and the plots.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edgerec.benchmarks.markdown import codes, number, percent, table

MB = 1e6


def _goals(goals: Sequence[Mapping[str, Any]]) -> list[str]:
    verdict = {True: "**met**", False: "**not met**", None: "not measured"}
    rows = [(g["name"], g["target"], g["summary"], verdict[g["met"]]) for g in goals]
    return ["## Goals (measured in this run)", "", *table(("goal", "target", "measured", "verdict"), rows)]


def _runners(results: Mapping[str, Any]) -> list[str]:
    quality = results.get("quality", {})
    rows = []
    for runner in results.get("runners", []):
        name = runner["runner"]
        if runner["status"] != "ran":
            rows.append((name, runner["precision"], runner["device"], *["–"] * 5, f"skipped: {runner['reason']}"))
            continue
        q = quality.get(name, {})
        source = q.get("source") or q.get("reason", "")
        if q.get("baskets"):
            source += f" ({q['baskets']} baskets)"
        rows.append(
            (
                name,
                runner["precision"],
                runner["provider"],
                number(runner["size_bytes"] / MB),
                number(runner["peak_rss_growth_bytes"] / MB),
                number(q.get("auc"), 4),
                percent(q.get("auc_relative_change"), 2, signed=True),
                number(q.get("ndcg@10"), 4),
                source,
            )
        )
    header = (
        "runner", "precision", "runs on", "model MB", "peak RSS growth MB", "AUC", "AUC vs PyTorch", "NDCG@10", "quality source"
    )  # fmt: skip
    notes = [
        "Model MB: the ONNX file, or the parameters in memory for PyTorch. Peak RSS growth: how far this process's",
        "resident memory rose while the runner loaded and ran the grid's largest batch (sampled every 2 ms).",
        "",
    ]
    return ["## Runners: size, memory and quality", "", *table(header, rows), *notes]


def _limits(results: Mapping[str, Any]) -> list[str]:
    peak, model = results.get("peak"), results.get("model")
    if not peak or not model:
        return ["## Physical limit", "", "Not computed: the checkpoint's config.json (model shape) was not found.", ""]
    rows = [
        (
            length,
            number(entry["gflop_per_pair"], 3),
            number(entry["fp32_limit_pairs_per_s"], 0),
            number(entry["int8_limit_pairs_per_s"], 0),
        )
        for length, entry in sorted(model["per_sequence_length"].items(), key=lambda kv: int(kv[0]))
    ]
    return [
        "## Physical limit",
        "",
        f"Model: {model['layers']} layers, hidden {model['hidden']}, intermediate {model['intermediate']}. "
        f"Peak estimate: {peak['basis']} = {peak['fp32_gflops']:.0f} GFLOP/s fp32, {peak['int8_gops']:.0f} GOP/s int8 "
        "(nominal clock; see `edgerec.benchmarks.limits`).",
        "",
        *table(("sequence length", "GFLOP per pair", "fp32 limit pairs/s", "int8 limit pairs/s"), rows),
    ]


def _grid(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return []
    cells = [
        (
            r["batch_size"],
            r["sequence_length"],
            r["runner"],
            number(r["p50_ms"], 2),
            number(r["p99_ms"], 2),
            number(r["pairs_per_s"], 1),
            number(r.get("speedup_vs_reference"), 2, "x"),
            number(r.get("achieved_gops"), 1),
            percent(r.get("peak_fraction")),
            r["runs"],
        )
        for r in sorted(rows, key=lambda r: (r["sequence_length"], r["batch_size"]))
    ]
    header = ("batch", "seq", "runner", "p50 ms", "p99 ms", "pairs/s", "vs PyTorch", "GOP/s", "of peak", "runs")
    return [
        "## Offline grid",
        "",
        "Every pair exactly `seq` tokens (no padding). Runners alternate within each round; latencies are per call,",
        "pairs/s = batch / median latency, speed-up = median of per-round ratios to PyTorch fp32.",
        "",
        *table(header, cells),
    ]


def _server(results: Mapping[str, Any]) -> list[str]:
    server = results.get("server")
    if not server:
        return ["## Server", "", results.get("server_note", "The server phase did not run."), ""]
    requests = results.get("requests", {})
    lines = [
        "## Server under load: the cross-encoder",
        "",
        f"Requests: {requests.get('count')} distinct Score requests from {requests.get('source')}, "
        f"{number(requests.get('mean_candidates'))} candidates and {number(requests.get('mean_pair_tokens'))} tokens per pair "
        f"on average; served variant: {results.get('served_runner')}. Client and servers share this machine's cores.",
        "",
        *(
            [
                "The bundle holds the two-tower ranker: these servers ran with `" + " ".join(results["server_extra_flags"])
                + "`, so the cross-encoder scores every candidate (after the ranker's pass over them).",
                "",
            ]
            if results.get("server_extra_flags")
            else []
        ),
        "Each level sends for its time, then lets requests in flight finish for a bounded drain; req/s and pairs/s",
        "count answered requests over the whole level. Unfinished: requests still running after the drain (cancelled;",
        "their latencies are missing from the percentiles). Scored pairs/s: the server's own count of pairs scored.",
        "",
    ]
    for mode, result in server.items():
        title = "batching on" if mode == "batching" else "batching off"
        lines += [f"### {title} (max batch size {result['max_batch_size'] or 'default'}): closed loop", ""]
        rows = [
            (
                lv["level"], number(lv["requests_per_s"]), number(lv["pairs_per_s"], 0),
                number(lv["server"]["scored_pairs_per_s"], 0), number(lv["p50_ms"]), number(lv["p95_ms"]), number(lv["p99_ms"]),
                number(lv["server"]["mean_batch_size"]), percent(lv["server"]["mean_padding_ratio"]),
                codes(lv["server"]["rejected_by_code"]), codes(lv["failures"]), lv["unfinished"],
                number(lv["server"]["cpu_cores_used"], 2), number(lv["client_cpu_cores_used"], 2),
            )
            for lv in result["closed_loop"]
        ]  # fmt: skip
        header = ("concurrency", "req/s", "pairs/s", "scored pairs/s", "p50 ms", "p95 ms", "p99 ms", "mean batch", "padding",
                  "rejected (server)", "failed (client)", "unfinished", "server CPU cores", "client CPU cores")  # fmt: skip
        lines += table(header, rows)
        lines += [f"### {title}: open loop (Poisson arrivals)", ""]
        rows = [
            (
                f"{lv['level']:.1f} ({lv['offered_fraction_of_capacity']:.2f}x)", number(lv["requests_per_s"]),
                number(lv["pairs_per_s"], 0), number(lv["p50_ms"]), number(lv["p95_ms"]), number(lv["p99_ms"]),
                number(lv["server"]["mean_batch_size"]), codes(lv["failures"]), lv["dropped"], lv["unfinished"],
                number(lv["server"]["cpu_cores_used"], 2),
            )
            for lv in result["open_loop"]
        ]  # fmt: skip
        header = ("offered req/s (x capacity)", "answered req/s", "pairs/s", "p50 ms", "p95 ms", "p99 ms",
                  "mean batch", "failed", "dropped (client cap)", "unfinished", "server CPU cores")  # fmt: skip
        lines += table(header, rows)
    cost = results.get("serving_cost", [])
    if cost:
        rows = [
            (
                c["mode"], c["concurrency"], number(c["server_pairs_per_s"], 0), number(c["mean_batch_size"]),
                "{runner} b{batch_size} at {sequence_length} tokens".format(**c["offline_basis"]),
                number(c["offline_pairs_per_s"], 0), number(c["ratio"], 2, "x"),
            )
            for c in cost
        ]  # fmt: skip
        lines += [
            "### Serving-path cost: server pairs/s vs the offline runner at the same batch size",
            "",
            *table(
                ("mode", "concurrency", "server pairs/s", "mean batch", "offline basis", "offline pairs/s", "ratio"), rows
            ),
        ]
    return lines + _yardstick(results)


def _yardstick(results: Mapping[str, Any]) -> list[str]:
    """Server CPU per pair beside the in-process sessions' on the same batches (`benchmarks.yardstick`)."""
    figures, server = results.get("yardstick"), results.get("server", {}).get("batching")
    if not figures or not server:
        return []
    from edgerec.benchmarks.yardstick import server_cpu_per_pair

    rows = [(w["name"], number(w["cpu_ms_per_pair"], 2), number(w["pairs_per_s"], 0), w["passes"]) for w in figures["ways"]]
    rows += [
        (f"server, closed loop c={lv['level']}", number(server_cpu_per_pair(lv), 2), number(lv["pairs_per_s"], 0), "")
        for lv in server["closed_loop"]
    ]
    settings = ", ".join(f"{k} {v}" for k, v in figures["session_config"].items())
    return [
        "### Serving-path cost: server CPU per pair vs in-process ONNX Runtime sessions",
        "",
        f"Every {figures.get('stride', 1)}th of the pool's {figures.get('pool_requests')} requests "
        f"({figures['requests']} requests, {number(figures.get('mean_pair_tokens'))} tokens per pair) cut into "
        f"{figures['batches']} batches by the server's scheduler (mean "
        f"{number(figures['mean_batch_size'])} pairs, {percent(figures['padding_ratio'])} padding), run in this "
        f"process on `{figures['model_file']}` with {figures['threads']} threads: ONNX Runtime at its defaults fed the "
        f"padded batches, the server's session settings ({settings}) fed the same batches, and the way the server "
        f"runs the CPU by default: each pair alone, single-threaded, {figures['threads']} at once. Server rows: its "
        "process CPU over the pairs it scored (gRPC, batching and featurizing included).",
        "",
        *table(("way", "CPU ms per pair", "pairs/s", "passes"), rows),
    ]


def _quality_text(quality: Mapping[str, Any]) -> str:
    """A scenario's quality from the export's evaluation, or why there is none."""
    if "reason" in quality:
        return quality["reason"]
    interval = quality.get("ndcg@10_ci95")
    ci = f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
    text = f"NDCG@10 {number(quality.get('ndcg@10'), 3)}{ci}, GAUC {number(quality.get('gauc'), 3)}"
    if quality.get("baskets"):
        text += f" ({quality['baskets']:,} baskets)"
    return text


def _two_stage(results: Mapping[str, Any]) -> list[str]:
    """The two-stage server: a summary per scenario (speed and quality), then closed- and open-loop levels."""
    two_stage = results.get("two_stage")
    if not two_stage:
        return []
    lines = ["## Two-stage server: ranker, cross-encoder re-rank, Recommend", ""]
    if "skipped" in two_stage:
        return lines + [f"Skipped: {two_stage['skipped']}.", ""]
    scenarios = two_stage["scenarios"]
    goal_c = two_stage["goal_concurrency"]
    requests = two_stage["requests"]
    lines += [
        f"One `edgerec serve` of the bundle, sent {requests['count']} customers ({requests['source']}; "
        f"{percent(requests['dated_context_share'])} of their context items carry the days since their last purchase, "
        "the rest leave it unset). Each scenario ran every closed-loop concurrency, then Poisson arrivals at "
        "fractions of its closed-loop capacity; the scenarios' levels were interleaved. The cross-encoder path is "
        "Rank with every candidate re-scored (`rerank_top` = candidates) on the same server: its ranker pass first "
        "costs a few milliseconds. Server flags: `" + " ".join(two_stage["server_flags"]) + "`.",
        "",
        "Candidates/s: answered requests/s x the candidates each request ranks (Recommend: the catalog items the "
        "server scored). CPU per request: the server process's CPU seconds over the requests it answered in the "
        "level. Quality: the export's evaluation on the test split (the cross-encoder's on its evaluation subsample, "
        "so the two are not on the same baskets).",
        "",
    ]
    rows = []
    for scenario in scenarios:
        at = next((lv for lv in scenario["closed_loop"] if lv["level"] == goal_c), None)
        best = max(scenario["closed_loop"], key=lambda lv: lv["candidates_per_s"], default=None)
        rows.append(
            (
                scenario["label"],
                number(at["p50_ms"]) if at else "–",
                number(at["p99_ms"]) if at else "–",
                number(at["cpu_ms_per_request"]) if at else "–",
                number(scenario["capacity_requests_per_s"]),
                f"{number(best['candidates_per_s'], 0)} (c={best['level']})" if best else "–",
                _quality_text(scenario["quality"]),
            )
        )
    header = ("scenario", f"p50 ms at c={goal_c}", f"p99 ms at c={goal_c}", f"CPU ms per request at c={goal_c}",
              "capacity req/s", "best candidates/s", "quality (export's evaluation)")  # fmt: skip
    lines += table(header, rows)
    notes = [s["quality"]["note"] for s in scenarios if s["quality"].get("note")]
    sources = sorted({s["quality"]["source"] for s in scenarios if s["quality"].get("source")})
    if sources or notes:
        lines += ["Quality sources: " + "; ".join(sources) + (f". Recommend: {notes[0]}." if notes else "."), ""]
    rows = [
        (
            scenario["label"], lv["level"], number(lv["requests_per_s"]), number(lv["candidates_per_s"], 0),
            number(lv["p50_ms"]), number(lv["p95_ms"]), number(lv["p99_ms"]), number(lv["cpu_ms_per_request"]),
            number(lv["server"]["cpu_cores_used"], 2), number(lv["stage_candidates_per_request"].get("cross_encoder", 0.0)),
            codes(lv["failures"]), lv["unfinished"],
        )
        for scenario in scenarios
        for lv in scenario["closed_loop"]
    ]  # fmt: skip
    header = ("scenario", "concurrency", "req/s", "candidates/s", "p50 ms", "p95 ms", "p99 ms", "CPU ms per request",
              "server CPU cores", "re-ranked per request", "failed", "unfinished")  # fmt: skip
    lines += ["### Two-stage server: closed loop", "", *table(header, rows)]
    rows = [
        (
            scenario["label"], f"{lv['level']:.1f} ({lv['offered_fraction_of_capacity']:.2f}x)", number(lv["requests_per_s"]),
            number(lv["candidates_per_s"], 0), number(lv["p50_ms"]), number(lv["p95_ms"]), number(lv["p99_ms"]),
            number(lv["cpu_ms_per_request"]), codes(lv["failures"]), lv["dropped"], lv["unfinished"],
        )
        for scenario in scenarios
        for lv in scenario["open_loop"]
    ]  # fmt: skip
    header = ("scenario", "offered req/s (x capacity)", "answered req/s", "candidates/s", "p50 ms", "p95 ms", "p99 ms",
              "CPU ms per request", "failed", "dropped (client cap)", "unfinished")  # fmt: skip
    return lines + ["### Two-stage server: open loop (Poisson arrivals)", "", *table(header, rows)]


def render(results: Mapping[str, Any], plots: Sequence[str]) -> str:
    machine = results["machine"]
    gpu = machine["gpu"]
    gpu_text = gpu["name"] if gpu.get("present") else f"none ({gpu['reason']})"
    libraries = ", ".join(f"{k} {v}" for k, v in machine["libraries"].items())
    skipped = [r for r in results.get("runners", []) if r["status"] != "ran" and r["device"] == "gpu"]
    lines = [
        "# edgerec benchmark report",
        "",
        f"Run {results['started']}, {results['duration_s'] / 60:.1f} min{' (quick mode)' if results['quick'] else ''}. "
        f"Bundle `{results['bundle']['name']}-{results['bundle']['version']}` ({results['bundle']['path']}).",
        "",
        f"Machine: {machine['cpu_model']}, {machine['physical_cores']} physical / {machine['logical_cores']} logical cores "
        f"({', '.join(machine['cpu_simd'])}), {machine['memory_bytes'] / 2**30:.0f} GiB; GPU: {gpu_text}. "
        f"Threads per runner: {results['threads']}. Load average at start: "
        f"{', '.join(f'{v:.2f}' for v in machine['load_average_at_start'] or [])}.",
        "",
        f"Libraries: {libraries}. ONNX Runtime providers: {', '.join(machine['onnxruntime_providers'])}.",
        "",
    ]
    busy = max((machine["load_average_at_start"] or [0])[:1] + (results.get("load_average_at_end") or [0])[:1])
    if busy > 0.5 * machine["logical_cores"]:
        lines += [
            f"**Note:** the machine was busy (1-minute load average up to {busy:.1f} on {machine['logical_cores']} cores): "
            "absolute figures are pessimistic; ratios come from interleaved runs and are more robust.",
            "",
        ]
    if skipped:
        lines += ["**GPU rows not run:** " + "; ".join(f"{r['runner']}: {r['reason']}" for r in skipped) + ".", ""]
    lines += _goals(results["goals"])
    lines += _runners(results)
    lines += _limits(results)
    lines += _grid(results.get("offline", []))
    lines += _server(results)
    lines += _two_stage(results)
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in results.get("phase_seconds", {}).items())
    lines += [f"Phase times: {phases}.", ""]
    return "\n".join(lines)
