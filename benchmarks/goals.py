"""The issue's goals and the serving-path cost, computed from one run's own figures.

Nothing here measures: every number comes from the offline grid, the quality
table and the server levels of the same run, so a goal is never judged
against figures from another day or another machine.

- int8 on CPU: at least 2.5x PyTorch fp32's pairs/s at batch 32, sequence
  128, with AUC within 0.5% (relative) of PyTorch's on the same baskets;
- the batching server: at least 0.85x the offline runner's pairs/s at
  concurrency 64, and at least 3x the same server with batching off;
- the two-stage server (`two_stage_goals`): Rank of 100 candidates p99 <= 50
  ms at concurrency 4 with the ranker alone and <= 150 ms with the top 20
  re-ranked, Recommend over the whole catalog p99 <= 50 ms at concurrency 4,
  and the ranker path >= 20x the cross-encoder path's candidates/s.

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


RANKER_P99_MS = 50.0
RERANK_P99_MS = 150.0
RECOMMEND_P99_MS = 50.0
RANKER_VS_CROSS_ENCODER = 20.0


def _scenario(scenarios: Sequence[Mapping[str, Any]], rpc: str, path: str, rerank_top: int | None = None):
    return next(
        (
            s
            for s in scenarios
            if s["rpc"] == rpc and s["path"] == path and (rerank_top is None or s["rerank_top"] == rerank_top)
        ),
        None,
    )


def _p99_goal(goal: dict[str, Any], scenario: Mapping[str, Any] | None, concurrency: int, limit_ms: float) -> dict[str, Any]:
    """p99 of `scenario`'s closed-loop level at `concurrency` <= `limit_ms`, every request of the level answered."""
    if scenario is None:
        return _unmeasured(goal, "the scenario was not run (see the two-stage settings)")
    level = next((lv for lv in scenario["closed_loop"] if lv["level"] == concurrency), None)
    if level is None:
        return _unmeasured(goal, f"closed-loop concurrency {concurrency} was not run")
    p99 = level["p99_ms"]
    if p99 is None:
        return _unmeasured(goal, f"no request answered at concurrency {concurrency}")
    failed = sum(level["failures"].values()) + level["unfinished"]
    measured = {"concurrency": concurrency, "p50_ms": level["p50_ms"], "p99_ms": p99, "answered": level["answered"],
                "failed": failed, "requests_per_s": level["requests_per_s"]}  # fmt: skip
    summary = f"p99 {p99:,.1f} ms (p50 {level['p50_ms']:,.1f} ms, {level['answered']} requests) at concurrency {concurrency}"
    if failed:
        summary += f"; {failed} failed or unfinished"
    return {**goal, "met": p99 <= limit_ms and not failed, "measured": measured, "summary": summary}


def _best_candidates(scenario: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return max(scenario["closed_loop"], key=lambda lv: lv["candidates_per_s"], default=None)


def two_stage_goals(
    two_stage: Mapping[str, Any] | None, candidates: int, goal_concurrency: int, goal_rerank_top: int
) -> list[dict[str, Any]]:
    """The two-stage server's goals, from its scenarios' closed-loop levels (`benchmarks.two_stage`).

    Latency goals read the level at `goal_concurrency` of Rank (`candidates` candidates) and Recommend; the
    speed ratio takes each path's best closed-loop candidates/s (its capacity): Rank with the ranker alone
    against Rank with every candidate re-scored by the cross-encoder.
    """
    at = f"at concurrency {goal_concurrency}"
    goals_out = [
        {"name": "Rank p99, ranker alone", "target": f"p99 <= {RANKER_P99_MS:.0f} ms, Rank of {candidates} {at}"},
        {
            "name": f"Rank p99, re-rank top {goal_rerank_top}",
            "target": f"p99 <= {RERANK_P99_MS:.0f} ms, Rank of {candidates} {at}",
        },
        {"name": "Recommend p99, whole catalog, ranker alone", "target": f"p99 <= {RECOMMEND_P99_MS:.0f} ms {at}"},
        {
            "name": "ranker vs cross-encoder candidates/s",
            "target": f">= {RANKER_VS_CROSS_ENCODER:.0f}x the cross-encoder path's candidates/s "
            "(Rank, each at its best closed-loop level)",
        },
    ]
    if not two_stage or "skipped" in two_stage:
        why = (two_stage or {}).get("skipped", "the two-stage benchmark did not run")
        return [_unmeasured(goal, why) for goal in goals_out]
    scenarios = two_stage["scenarios"]
    ranker = _scenario(scenarios, "Rank", "ranker")
    reranked = _scenario(scenarios, "Rank", "ranker + cross-encoder", goal_rerank_top)
    recommend = _scenario(scenarios, "Recommend", "ranker")
    cross = _scenario(scenarios, "Rank", "cross-encoder")
    out = [
        _p99_goal(goals_out[0], ranker, goal_concurrency, RANKER_P99_MS),
        _p99_goal(goals_out[1], reranked, goal_concurrency, RERANK_P99_MS),
        _p99_goal(goals_out[2], recommend, goal_concurrency, RECOMMEND_P99_MS),
    ]
    ratio_goal = goals_out[3]
    if ranker is None or cross is None:
        out.append(_unmeasured(ratio_goal, "Rank with the ranker alone or with every candidate re-scored was not run"))
        return out
    fast, slow = _best_candidates(ranker), _best_candidates(cross)
    if fast is None or slow is None or slow["candidates_per_s"] <= 0:
        out.append(_unmeasured(ratio_goal, "the cross-encoder path answered no request"))
        return out
    ratio = fast["candidates_per_s"] / slow["candidates_per_s"]
    out.append(
        {
            **ratio_goal,
            "met": ratio >= RANKER_VS_CROSS_ENCODER,
            "measured": {
                "ranker_candidates_per_s": fast["candidates_per_s"],
                "ranker_concurrency": fast["level"],
                "cross_encoder_candidates_per_s": slow["candidates_per_s"],
                "cross_encoder_concurrency": slow["level"],
                "ratio": ratio,
            },
            "summary": f"{ratio:,.1f}x: {fast['candidates_per_s']:,.0f} candidates/s (concurrency {fast['level']}) vs "
            f"{slow['candidates_per_s']:,.0f} (concurrency {slow['level']})",
        }
    )
    return out
