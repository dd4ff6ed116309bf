"""PNG plots of a benchmark's results (matplotlib, headless Agg backend).

- `offline_throughput_latency.png`: per sequence length, each runner's
  pairs/s against its median latency as the batch grows, with the hardware's
  fp32 and int8 limits as horizontal lines;
- `server_latency_vs_load.png`: the server's p50/p95/p99 latency and its
  achieved throughput against the offered (open-loop) load, batching on and off;
- `server_closed_loop.png`: pairs/s against concurrency, batching on and off,
  with the served variant's offline pairs/s for comparison;
- `two_stage_latency.png`: the two-stage server's p50 and p99 latency, and
  its candidates/s, against concurrency, one line per scenario (Rank with the
  ranker alone, re-ranked, the cross-encoder alone; Recommend).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

MODE_STYLE = {"batching": ("tab:blue", "batching on"), "no_batching": ("tab:red", "batching off (max batch 1)")}
PERCENTILE_STYLE = {"p50_ms": "-", "p95_ms": "--", "p99_ms": ":"}
PLAIN = FuncFormatter(lambda value, _: f"{value:,.10g}")


def _log_axes(axis, x: bool = True, y: bool = True) -> None:
    """Log scales labelled with plain numbers (1, 2, 5, 10, ...), minor ticks unlabelled, and a light grid."""
    for enabled, scale, part in ((x, axis.set_xscale, axis.xaxis), (y, axis.set_yscale, axis.yaxis)):
        if enabled:
            scale("log")
            part.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            part.set_major_formatter(PLAIN)
            part.set_minor_formatter(NullFormatter())
    axis.grid(True, which="major", alpha=0.4)
    axis.grid(True, which="minor", alpha=0.12)


def offline_plot(rows: Sequence[Mapping[str, Any]], limits: Mapping[int, Mapping[str, float]], path: Path) -> Path:
    """Throughput against latency per runner, one panel per sequence length."""
    lengths = sorted({r["sequence_length"] for r in rows})
    runners = list(dict.fromkeys(r["runner"] for r in rows))
    figure, axes = plt.subplots(1, len(lengths), figsize=(max(8.0, 5.5 * len(lengths)), 5.2), squeeze=False)
    for axis, length in zip(axes[0], lengths):
        for runner in runners:
            mine = [r for r in rows if r["runner"] == runner and r["sequence_length"] == length]
            mine.sort(key=lambda r: r["batch_size"])
            if not mine:
                continue
            x = [r["p50_ms"] for r in mine]
            y = [r["pairs_per_s"] for r in mine]
            (line,) = axis.plot(x, y, marker="o", label=runner)
            for r in mine:
                axis.annotate(
                    f"b{r['batch_size']}",
                    (r["p50_ms"], r["pairs_per_s"]),
                    textcoords="offset points",
                    xytext=(4, 3),
                    fontsize=7,
                    color=line.get_color(),
                )
        for name, style in (("fp32", "--"), ("int8", ":")):
            limit = limits.get(length, {}).get(name)
            if limit:
                axis.axhline(limit, color="grey", linestyle=style, linewidth=1, label=f"{name} hardware limit")
        _log_axes(axis)
        axis.set_xlabel("median latency per call (ms, log)")
        axis.set_ylabel("pairs per second (log)")
        axis.set_title(f"sequence length {length}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    figure.suptitle("Offline runners: pairs/s vs latency as the batch grows (bN: batch size N)")
    figure.tight_layout(rect=(0, 0.14, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def server_load_plot(server: Mapping[str, Any], path: Path) -> Path:
    """Latency percentiles and achieved throughput against the offered open-loop load."""
    figure, (latency_axis, throughput_axis) = plt.subplots(1, 2, figsize=(12, 4.8))
    for mode, result in server.items():
        color, label = MODE_STYLE.get(mode, ("black", mode))
        levels = sorted(result["open_loop"], key=lambda level: level["level"])
        if not levels:
            continue
        offered = [level["level"] for level in levels]
        for key, style in PERCENTILE_STYLE.items():
            latency = [np.nan if level[key] is None else level[key] for level in levels]  # None: nothing answered
            latency_axis.plot(offered, latency, style, marker="o", color=color, label=f"{label}, {key[:3]}")
        throughput_axis.plot(offered, [level["requests_per_s"] for level in levels], marker="o", color=color, label=label)
        capacity = result.get("capacity_requests_per_s")
        if capacity:
            for axis in (latency_axis, throughput_axis):
                axis.axvline(capacity, color=color, alpha=0.35, linewidth=1)
    _log_axes(latency_axis)
    _log_axes(throughput_axis)
    latency_axis.set_xlabel("offered load (requests/s, Poisson arrivals, log)")
    latency_axis.set_ylabel("latency (ms, log)")
    latency_axis.set_title("Latency percentiles vs offered load")
    throughput_axis.set_xlabel("offered load (requests/s, log)")
    throughput_axis.set_ylabel("answered requests/s (log)")
    throughput_axis.set_title("Achieved vs offered (vertical lines: closed-loop capacity)")
    for axis in (latency_axis, throughput_axis):
        axis.legend(fontsize=7)
    figure.suptitle("gRPC server under open-loop load, batching on and off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def server_closed_loop_plot(server: Mapping[str, Any], cost: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Pairs/s against concurrency, batching on and off, beside the offline runner's figure."""
    figure, axis = plt.subplots(figsize=(7, 4.8))
    for mode, result in server.items():
        color, label = MODE_STYLE.get(mode, ("black", mode))
        levels = sorted(result["closed_loop"], key=lambda level: level["level"])
        axis.plot([lv["level"] for lv in levels], [lv["pairs_per_s"] for lv in levels], marker="o", color=color, label=label)
        offline = sorted((c for c in cost if c["mode"] == mode), key=lambda c: c["concurrency"])
        if offline:
            axis.plot(
                [c["concurrency"] for c in offline],
                [c["offline_pairs_per_s"] for c in offline],
                linestyle="--",
                color=color,
                alpha=0.6,
                label=f"offline runner at the server's batch size ({label})",
            )
    _log_axes(axis)
    concurrencies = sorted({lv["level"] for result in server.values() for lv in result["closed_loop"]})
    axis.set_xticks(concurrencies)
    axis.set_xlabel("concurrent streams (closed loop, log)")
    axis.set_ylabel("pairs per second (log)")
    axis.set_title("Server throughput vs concurrency")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def two_stage_plot(scenarios: Sequence[Mapping[str, Any]], goal_lines_ms: Sequence[float], path: Path) -> Path:
    """Latency (p99 solid, p50 dashed) and candidates/s against closed-loop concurrency, one color per scenario;
    `goal_lines_ms`: latency goals drawn as grey horizontal lines."""
    figure, (latency_axis, throughput_axis) = plt.subplots(1, 2, figsize=(13, 5.2))
    colors = plt.get_cmap("tab10")
    for index, scenario in enumerate(scenarios):
        levels = sorted(scenario["closed_loop"], key=lambda level: level["level"])
        x = [level["level"] for level in levels]
        color = colors(index % 10)
        for key, style in (("p99_ms", "-"), ("p50_ms", "--")):
            y = [np.nan if level[key] is None else level[key] for level in levels]
            label = scenario["label"] if key == "p99_ms" else None
            latency_axis.plot(x, y, style, marker="o", color=color, label=label)
        throughput_axis.plot(x, [level["candidates_per_s"] for level in levels], marker="o", color=color, label=scenario["label"])
    for limit in sorted(set(goal_lines_ms)):
        latency_axis.axhline(limit, color="grey", linestyle=":", linewidth=1)
        latency_axis.annotate(f"goal {limit:g} ms", (1, limit), textcoords="offset points", xytext=(2, 2), fontsize=7)
    concurrencies = sorted({level["level"] for s in scenarios for level in s["closed_loop"]})
    for axis in (latency_axis, throughput_axis):
        _log_axes(axis)
        axis.set_xticks(concurrencies)
        axis.set_xlabel("concurrent streams (closed loop, log)")
    latency_axis.set_ylabel("latency (ms, log): p99 solid, p50 dashed")
    latency_axis.set_title("Latency vs concurrency")
    throughput_axis.set_ylabel("candidates ranked per second (log)")
    throughput_axis.set_title("Candidates/s vs concurrency")
    handles, labels = latency_axis.get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(3, max(1, len(labels))), fontsize=8, frameon=False)
    figure.suptitle("Two-stage server: ranker alone, cross-encoder re-rank, cross-encoder alone")
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
