"""The issue's goals and the serving-path cost, computed from one run's own figures.

Nothing here measures: every number comes from the offline grid, the quality
table and the server levels of the same run, so a goal is never judged
against figures from another day or another machine.

- int8 on CPU: at least 2.5x PyTorch fp32's pairs/s at batch 32, sequence
  128, with AUC within 0.5% (relative) of PyTorch's on the same baskets;
- the batching server: at least 0.85x the offline runner's pairs/s at
  concurrency 64, and at least 3x the same server with batching off.

The offline runner's pairs/s "at the same batch size" takes the grid's batch
size nearest the server's mean batch, at the requests' mean pair length
(seconds per pair interpolated linearly between the grid's sequence
lengths): the grid has no padding, so padding is part of the serving cost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgerec.benchmarks.runners import REFERENCE

INT8_SPEEDUP = 2.5
INT8_AUC_TOLERANCE = 0.005
SERVER_VS_OFFLINE = 0.85
BATCHING_GAIN = 3.0


def _nearest(values: Sequence[float], target: float) -> float:
    return min(values, key=lambda v: (abs(v - target), v))


def offline_pairs_per_s(
    rows: Sequence[Mapping[str, Any]], runner: str, batch_size: float, sequence_length: float
) -> tuple[float, dict[str, Any]] | None:
    """The runner's offline pairs/s at the grid batch size nearest `batch_size`, at `sequence_length` tokens."""
    mine = [r for r in rows if r["runner"] == runner]
    if not mine:
        return None
    batch = _nearest(sorted({r["batch_size"] for r in mine}), batch_size)
    at_batch = sorted((r for r in mine if r["batch_size"] == batch), key=lambda r: r["sequence_length"])
    lengths = [r["sequence_length"] for r in at_batch]
    seconds_per_pair = [1.0 / r["pairs_per_s"] for r in at_batch]
    length = min(max(float(sequence_length), lengths[0]), lengths[-1])  # no extrapolation past the grid
    value = 1.0 / float(np.interp(length, lengths, seconds_per_pair))
    return value, {"runner": runner, "batch_size": batch, "sequence_length": round(length, 1), "grid_lengths": lengths}


def _cell(rows: Sequence[Mapping[str, Any]], runner: str, batch: int, sequence: int) -> Mapping[str, Any] | None:
    wanted = (runner, batch, sequence)
    return next((r for r in rows if (r["runner"], r["batch_size"], r["sequence_length"]) == wanted), None)


def _unmeasured(goal: dict[str, Any], why: str) -> dict[str, Any]:
    return {**goal, "met": None, "measured": {}, "summary": f"not measured: {why}"}


def int8_goal(
    rows: Sequence[Mapping[str, Any]],
    quality: Mapping[str, Mapping[str, Any]],
    int8_runner: str,
    batch: int,
    sequence: int,
) -> dict[str, Any]:
    """int8 >= 2.5x PyTorch fp32 pairs/s at (batch, sequence), AUC within 0.5% relative."""
    goal = {
        "name": "int8 CPU speed-up with equal quality",
        "target": f"{int8_runner} >= {INT8_SPEEDUP}x {REFERENCE} pairs/s at batch {batch}, sequence {sequence}; "
        f"|AUC change| <= {INT8_AUC_TOLERANCE:.1%} relative",
    }
    ran = {r["runner"] for r in rows}
    if int8_runner not in ran or REFERENCE not in ran:
        return _unmeasured(goal, f"{int8_runner} or {REFERENCE} did not run")
    cells = sorted({(r["batch_size"], r["sequence_length"]) for r in rows if r["runner"] == int8_runner})
    at = min(cells, key=lambda cell: (abs(cell[1] - sequence), abs(cell[0] - batch)))  # the goal's cell if the grid has it
    reference, int8 = _cell(rows, REFERENCE, *at), _cell(rows, int8_runner, *at)
    if reference is None or int8 is None:
        return _unmeasured(goal, f"no figures at batch {at[0]}, sequence {at[1]}")
    speedup = int8.get("speedup_vs_reference", int8["pairs_per_s"] / reference["pairs_per_s"])
    auc_change = quality.get(int8_runner, {}).get("auc_relative_change")
    measured = {
        "batch_size": at[0],
        "sequence_length": at[1],
        "int8_pairs_per_s": int8["pairs_per_s"],
        "reference_pairs_per_s": reference["pairs_per_s"],
        "speedup": speedup,
        "auc": quality.get(int8_runner, {}).get("auc"),
        "reference_auc": quality.get(int8_runner, {}).get("reference_auc"),
        "auc_relative_change": auc_change,
    }
    auc_known = auc_change is not None and np.isfinite(auc_change)
    if speedup < INT8_SPEEDUP:
        met: bool | None = False  # too slow, whatever its accuracy
    else:
        met = abs(auc_change) <= INT8_AUC_TOLERANCE if auc_known else None
    where = "" if at == (batch, sequence) else f" (the grid has no batch {batch} x seq {sequence} cell)"
    auc_text = f"AUC change {auc_change:+.3%}" if auc_known else "AUC not measured"
    summary = f"{speedup:.2f}x at batch {at[0]}, seq {at[1]}{where}; {auc_text}"
    return {**goal, "met": met, "measured": measured, "summary": summary}


def serving_cost(
    server: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], runner: str, mean_pair_tokens: float
) -> list[dict[str, Any]]:
    """Per mode and closed-loop level: server pairs/s / offline runner pairs/s at the same batch size."""
    out = []
    for mode, result in server.items():
        for level in result["closed_loop"]:
            batch = level["server"]["mean_batch_size"]
            if not np.isfinite(batch):
                continue
            offline = offline_pairs_per_s(rows, runner, batch, mean_pair_tokens)
            if offline is None:
                continue
            pairs_per_s, basis = offline
            out.append(
                {
                    "mode": mode,
                    "concurrency": level["level"],
                    "server_pairs_per_s": level["pairs_per_s"],
                    "mean_batch_size": batch,
                    "offline_pairs_per_s": pairs_per_s,
                    "offline_basis": basis,
                    "ratio": level["pairs_per_s"] / pairs_per_s,
                }
            )
    return out


def server_goals(server: Mapping[str, Any], cost: Sequence[Mapping[str, Any]], concurrency: int) -> list[dict[str, Any]]:
    """Batching server vs the offline runner, and vs batching off, at `concurrency` (else the highest measured)."""
    vs_offline = {
        "name": "batching server vs offline runner",
        "target": f">= {SERVER_VS_OFFLINE}x offline pairs/s at concurrency {concurrency}",
    }
    vs_off = {
        "name": "batching on vs off",
        "target": f">= {BATCHING_GAIN}x batching-off pairs/s at concurrency {concurrency}",
    }
    levels = {
        mode: {level["level"]: level for level in server.get(mode, {}).get("closed_loop", [])}
        for mode in ("batching", "no_batching")
    }
    common = sorted(set(levels["batching"]) & set(levels["no_batching"]))
    if not common:
        return [_unmeasured(goal, "no closed-loop server levels ran") for goal in (vs_offline, vs_off)]
    at = concurrency if concurrency in common else common[-1]
    where = "" if at == concurrency else f" (concurrency {concurrency} was not run)"
    on, off = levels["batching"][at], levels["no_batching"][at]
    if on["pairs_per_s"] <= 0 or off["pairs_per_s"] <= 0:
        why = f"a server answered no request at concurrency {at} (levels too short for this machine?)"
        return [_unmeasured(goal, why) for goal in (vs_offline, vs_off)]
    row = next((c for c in cost if c["mode"] == "batching" and c["concurrency"] == at), None)
    if row is None:
        offline_goal = _unmeasured(vs_offline, "no offline figures for the served runner")
    else:
        offline_goal = {
            **vs_offline,
            "met": row["ratio"] >= SERVER_VS_OFFLINE,
            "measured": {"concurrency": at, **{k: v for k, v in row.items() if k not in ("mode", "concurrency")}},
            "summary": f"{row['ratio']:.2f}x at concurrency {at}{where}: {row['server_pairs_per_s']:.0f} vs "
            f"{row['offline_pairs_per_s']:.0f} pairs/s offline (batch {row['offline_basis']['batch_size']})",
        }
    gain = on["pairs_per_s"] / off["pairs_per_s"]
    gain_goal = {
        **vs_off,
        "met": gain >= BATCHING_GAIN,
        "measured": {
            "concurrency": at,
            "batching_pairs_per_s": on["pairs_per_s"],
            "no_batching_pairs_per_s": off["pairs_per_s"],
            "gain": gain,
        },
        "summary": f"{gain:.2f}x at concurrency {at}{where}: {on['pairs_per_s']:.0f} vs {off['pairs_per_s']:.0f} pairs/s",
    }
    return [offline_goal, gain_goal]


# Issue 14's target: 1.15x the 156 pairs/s the issue measured for the int8 server on 2 cores, real customers.
SERVED_INT8_PAIRS_PER_S = 180.0


def serving_path_goals(
    server: Mapping[str, Any], yardstick: Mapping[str, Any] | None, concurrencies: Sequence[int], precision: str
) -> list[dict[str, Any]]:
    """The batching server's CPU per pair vs an in-process default ONNX Runtime session on the same batches,
    and (int8) its pairs/s, at each of `concurrencies` (closed loop)."""
    from edgerec.benchmarks.yardstick import DEFAULT_SESSION, server_cpu_per_pair

    cpu_goal = {
        "name": "server CPU per pair vs default ONNX Runtime session",
        "target": f"<= the in-process default session's CPU ms per pair at concurrency {', '.join(map(str, concurrencies))}",
    }
    speed_goal = {
        "name": "served int8 pairs/s",
        "target": f">= {SERVED_INT8_PAIRS_PER_S:.0f} pairs/s at concurrency {', '.join(map(str, concurrencies))}",
    }
    levels = {level["level"]: level for level in server.get("batching", {}).get("closed_loop", [])}
    missing = [c for c in concurrencies if c not in levels]
    if missing or not levels:
        why = f"closed-loop concurrency {missing} did not run"
        return [_unmeasured(cpu_goal, why), _unmeasured(speed_goal, why)]
    goals_out = []
    default = next((w for w in (yardstick or {}).get("ways", []) if w["name"] == DEFAULT_SESSION), None)
    if default is None:
        goals_out.append(_unmeasured(cpu_goal, "the in-process yardstick did not run"))
    else:
        per_level = {c: server_cpu_per_pair(levels[c]) for c in concurrencies}
        met = all(np.isfinite(v) and v <= default["cpu_ms_per_pair"] for v in per_level.values())
        text = ", ".join(f"c={c}: {v:.2f}" for c, v in per_level.items())
        goals_out.append(
            {
                **cpu_goal,
                "met": met,
                "measured": {"server_cpu_ms_per_pair": per_level, "default_session_cpu_ms_per_pair": default["cpu_ms_per_pair"]},
                "summary": f"server {text} ms vs default session {default['cpu_ms_per_pair']:.2f} ms per pair",
            }
        )
    if not precision.startswith("int8"):
        goals_out.append(_unmeasured(speed_goal, f"the server ran {precision}, not int8"))
    else:
        rates = {c: levels[c]["pairs_per_s"] for c in concurrencies}
        goals_out.append(
            {
                **speed_goal,
                "met": all(r >= SERVED_INT8_PAIRS_PER_S for r in rates.values()),
                "measured": {"pairs_per_s": rates, "p99_ms": {c: levels[c].get("p99_ms") for c in concurrencies}},
                "summary": ", ".join(f"c={c}: {r:.0f} pairs/s" for c, r in rates.items()),
            }
        )
    return goals_out
