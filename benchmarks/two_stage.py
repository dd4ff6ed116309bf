"""The two-stage server under load: the ranker alone, with a cross-encoder re-rank, and the cross-encoder alone.

One `edgerec serve` of a bundle that holds the two-tower ranker runs on
127.0.0.1 with the cross-encoder servers' flags (`server_bench.serve_flags`:
admission's time bound off, the benchmark's threads) plus a `max_rerank_top`
as large as the largest scenario's and a raised ranker admission bound
(`two_stage_flags`). It is sent test-split customers
(`workload.customer_pool`: their history as context, with counts and days
since each item's last purchase) in scenarios (`scenarios`):

- Rank of N candidates (the k best), once per rerank_top R of the settings:
  R = 0 is the ranker alone; 0 < R < N the ranker, then the cross-encoder on
  its R best; R = N the cross-encoder path, every candidate re-scored by the
  cross-encoder (the same server measures it: the ranker's pass over the
  candidates first costs a few milliseconds, visible as the gap to the
  cross-encoder's own CPU per candidate);
- Recommend over the whole catalog (the k best), once per rerank_top.

Every scenario runs each closed-loop concurrency, then the open-loop sweep at
fractions of its own closed-loop capacity, with the shared driver
(`harness.driver`) and `server_bench.measure_level`; the levels of all
scenarios are interleaved (alternating their order), so a noisy neighbour
slows each alike. Per level, besides the driver's figures (p50/p95/p99,
requests/s): candidates/s (answered requests x the candidates each ranks: N
for Rank, the catalog items the server scored for Recommend), the server's CPU
per answered request (its process's CPU time over the level), and what each
stage scored (the server's `edgerec_stage_candidates_total`).

Nothing here measures quality: each scenario states what the export's
evaluation recorded for it (`export_quality`, `scenario_quality`), or that the
evaluation has no figure for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edgerec.benchmarks.config import LoadConfig, TwoStageConfig
from edgerec.benchmarks.harness.driver import Call, LoadRun, closed_loop, open_loop, send
from edgerec.benchmarks.harness.requests import RequestPool
from edgerec.benchmarks.harness.results import Tally
from edgerec.benchmarks.harness.server import ServerUnderTest
from edgerec.benchmarks.server_bench import measure_level, serve_flags
from edgerec.benchmarks.workload import Customer
from edgerec.core.bundle import Bundle, sha256_file
from edgerec.core.signatures import CROSS_ENCODER, RANKER
from edgerec.proto import recommender_pb2, recommender_pb2_grpc
from edgerec.runtime.config import BatcherConfig
from edgerec.runtime.recommender_service import build_recommend_request, build_score_request

RANKER_REPORT = Path("ranker") / "ranker_report.json"  # under the export's work folder (`export/pipeline.py`)
EMBEDDINGS = "item_embeddings"  # the bundle data file the ranker report's export wrote beside it


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One configuration of the two-stage server: an RPC and how many of the ranker's best are re-ranked."""

    rpc: str  # "Rank" or "Recommend"
    rerank_top: int
    candidates: int  # candidates a request ranks (Recommend: the catalog's items)
    k: int

    @property
    def name(self) -> str:
        return f"{self.rpc.lower()}-r{self.rerank_top}"

    @property
    def path(self) -> str:
        """"ranker", "ranker + cross-encoder" or "cross-encoder" (every candidate re-scored)."""
        if self.rerank_top == 0:
            return "ranker"
        return "cross-encoder" if self.rerank_top >= self.candidates else "ranker + cross-encoder"

    @property
    def label(self) -> str:
        what = f"Rank of {self.candidates}" if self.rpc == "Rank" else f"Recommend over {self.candidates:,} items"
        how = {
            "ranker": "ranker alone",
            "ranker + cross-encoder": f"ranker, cross-encoder re-ranks top {self.rerank_top}",
            "cross-encoder": "cross-encoder alone (every candidate)",
        }[self.path]
        return f"{what}, {how}"


def scenarios(config: TwoStageConfig, catalog_size: int) -> list[Scenario]:
    """Rank scenarios (one per `rank_rerank_tops`), then Recommend scenarios (one per `recommend_rerank_tops`)."""
    rank = [Scenario("Rank", r, config.candidates, config.k) for r in config.rank_rerank_tops]
    recommend = [Scenario("Recommend", r, catalog_size, config.k) for r in config.recommend_rerank_tops]
    return rank + recommend


def requests_for(scenario: Scenario, customers: Sequence[Customer]) -> list:
    """The scenario's requests, one per customer: Rank (k of the customer's candidates) or Recommend."""
    if scenario.rpc == "Recommend":
        return [build_recommend_request(c.context, k=scenario.k, rerank_top=scenario.rerank_top) for c in customers]
    out = []
    for customer in customers:
        score = build_score_request(customer.candidates, customer.context)
        rank = recommender_pb2.RankRequest(context=score.context, candidates=score.candidates, k=scenario.k)
        rank.rerank_top = scenario.rerank_top
        out.append(rank)
    return out


def two_stage_flags(config: TwoStageConfig, plan: Sequence[Scenario]) -> list[str]:
    """Serve flags of the two-stage server beyond `serve_flags`: re-rank as deep as the deepest scenario, and
    the ranker's admission bound raised (see `TwoStageConfig.ranker_max_queue_candidates`)."""
    deepest = max((s.rerank_top for s in plan), default=0)
    return ["--max-rerank-top", str(deepest), "--ranker-max-queue-candidates", str(config.ranker_max_queue_candidates)]


def level_figures(level: dict[str, Any], scenario: Scenario) -> dict[str, Any]:
    """`level` (a `measure_level` summary) with the scenario's figures: candidates/s, CPU per request and
    candidates each stage scored per answered request."""
    answered = level["answered"]
    side = level["server"]
    stages = side.get("stage_candidates", {})
    per_request = {stage: n / answered for stage, n in stages.items()} if answered else {}
    return {
        **level,
        "candidates_per_s": level["requests_per_s"] * scenario.candidates,
        "cpu_ms_per_request": 1000.0 * side["cpu_seconds"] / answered if answered else None,
        "stage_candidates_per_request": per_request,
    }


def _capacity(levels: Sequence[Mapping[str, Any]]) -> float:
    """Requests/s the scenario sustains: its best closed-loop level (0 if none answered)."""
    return max((level["requests_per_s"] for level in levels), default=0.0)


async def _benchmark(
    server: ServerUnderTest, plan: Sequence[Scenario], pools: Mapping[str, RequestPool], config: TwoStageConfig
) -> list[dict[str, Any]]:
    results = {s.name: {"closed_loop": [], "open_loop": []} for s in plan}
    scored: dict[str, int] = {}
    async with server.channel() as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        calls: dict[str, Call] = {}
        for scenario in plan:
            pool = pools[scenario.name]
            calls[scenario.name] = pool.calls(stub, config.request_timeout_s)
            if scenario.rpc == "Recommend":  # what the server scores for one customer
                reply = await stub.Recommend(pool.requests[0], timeout=config.request_timeout_s)
                scored[scenario.name] = int(reply.scored_items)
            for _ in range(config.warmup_requests):  # one at a time, unmeasured
                await send(Tally(), calls[scenario.name])
        plan = [dataclasses.replace(s, candidates=scored.get(s.name, s.candidates)) for s in plan]
        bar = tqdm(total=len(plan) * (len(config.concurrencies) + len(config.open_loop_loads)), desc="two-stage", unit="level")
        for index, concurrency in enumerate(config.concurrencies):
            for scenario in plan if index % 2 == 0 else plan[::-1]:
                bar.set_postfix_str(f"{scenario.name}, closed loop, concurrency {concurrency}")

                def closed(call: Call, tally: Tally, c: int = concurrency) -> Awaitable[LoadRun]:
                    return closed_loop(
                        call, tally, c, config.seconds_per_level, config.max_requests_per_level, config.drain_s
                    )

                level = await measure_level(server, calls[scenario.name], "closed", concurrency, closed)
                results[scenario.name]["closed_loop"].append(level_figures(level, scenario))
                bar.update()
        capacity = {s.name: _capacity(results[s.name]["closed_loop"]) for s in plan}
        rng = np.random.default_rng(config.seed)
        for index, load in enumerate(config.open_loop_loads):
            for scenario in plan if index % 2 == 0 else plan[::-1]:
                rate = max(load * capacity[scenario.name], 0.1)
                bar.set_postfix_str(f"{scenario.name}, open loop, {rate:.1f} requests/s")

                def opened(call: Call, tally: Tally, r: float = rate) -> Awaitable[LoadRun]:
                    return open_loop(
                        call, tally, r, config.seconds_per_level, rng, config.drain_s,
                        config.max_requests_per_level, config.max_in_flight,
                    )  # fmt: skip

                level = await measure_level(server, calls[scenario.name], "open", rate, opened)
                level["offered_fraction_of_capacity"] = load
                results[scenario.name]["open_loop"].append(level_figures(level, scenario))
                bar.update()
        bar.close()
    return [
        {
            **dataclasses.asdict(s),
            "name": s.name,
            "label": s.label,
            "path": s.path,
            "capacity_requests_per_s": capacity[s.name],
            **results[s.name],
        }
        for s in plan
    ]


def run_two_stage_bench(
    bundle: Path,
    customers: Sequence[Customer],
    config: TwoStageConfig,
    load: LoadConfig,
    threads: int,
    spin_wait: bool,
    catalog_size: int,
) -> dict[str, Any]:
    """Start the two-stage server, run every scenario's levels, stop it; the server's flags and each scenario's
    levels (`scenarios` order)."""
    plan = scenarios(config, catalog_size)
    pools = {s.name: RequestPool(requests_for(s, customers)) for s in plan}
    max_batch = load.max_batch_size or BatcherConfig().max_batch_size
    flags = serve_flags(max_batch, load.precision, threads, spin_wait) + two_stage_flags(config, plan)
    with ServerUnderTest(bundle, flags, startup_timeout_s=load.startup_timeout_s, stop_grace_s=15.0) as server:
        levels = asyncio.run(_benchmark(server, plan, pools, config))
    return {"server_flags": flags, "scenarios": levels}


def two_stage_estimate_s(config: TwoStageConfig, scenario_count: int) -> float:
    """Seconds the levels send (every scenario), without start-up and drains."""
    return scenario_count * (len(config.concurrencies) + len(config.open_loop_loads)) * config.seconds_per_level


# -- quality, from the export's evaluation -------------------------------------------------------------


def ranker_evaluation(bundle: Bundle, export_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """The ranker's test-split evaluation (`export.ranker_export.evaluate_on_test`'s dictionary) and where it
    came from: the bundle's manifest if it holds one, else `<export_dir>/ranker/ranker_report.json` when the
    item embeddings written beside it are the bundle's (same sha256). (None, why) otherwise."""
    info = bundle.manifest["models"].get(RANKER.name, {})
    evaluation = info.get("metrics", {}).get("evaluation")
    if isinstance(evaluation, Mapping) and "stored" in evaluation:
        return dict(evaluation), "the bundle's manifest (models.ranker.metrics.evaluation)"
    report = Path(export_dir) / RANKER_REPORT
    if not report.is_file():
        return None, f"not in this bundle (no ranker evaluation in its manifest, and no {report})"
    embeddings = report.parent / f"{EMBEDDINGS}.npy"
    bundle_sha = bundle.manifest.get("files", {}).get(bundle.data.get(EMBEDDINGS, ""))
    if not embeddings.is_file() or bundle_sha is None or sha256_file(embeddings) != bundle_sha:
        return None, f"not in this bundle ({report} belongs to another export: its item embeddings are not this bundle's)"
    evaluation = json.loads(report.read_text()).get("evaluation")
    if not isinstance(evaluation, Mapping) or "stored" not in evaluation:
        return None, f"not in this bundle ({report} holds no test-split evaluation)"
    return dict(evaluation), str(report)


def export_quality(bundle: Bundle, export_dir: Path) -> dict[str, dict[str, Any]]:
    """What the export's evaluation says of each path on the test split: "ranker" (all stored candidates of the
    whole test split) and "cross-encoder" (its evaluation subsample); an entry without figures says why."""
    out: dict[str, dict[str, Any]] = {}
    evaluation, source = ranker_evaluation(bundle, export_dir)
    if evaluation is None:
        out["ranker"] = {"reason": source}
    else:
        entry = evaluation["stored"].get("ranker", {}).get("all", {})
        sizes = evaluation.get("sizes", {}).get("stored", {})
        out["ranker"] = {
            "ndcg@10": entry.get("ndcg@10"),
            "ndcg@10_ci95": entry.get("ci95", {}).get("ndcg@10"),
            "gauc": entry.get("gauc"),
            "auc": entry.get("auc"),
            "baskets": sizes.get("baskets"),
            "source": f"{source}: whole test split, stored candidates",
        }
        from edgerec.export.ranker_export import TWO_STAGE  # the export's key of its two-stage rows

        two_stage = evaluation.get(TWO_STAGE, {})
        prefix = "ranker, cross-encoder re-ranks top "
        for name, slices in two_stage.items():
            if isinstance(slices, Mapping) and name.startswith(prefix):
                entry = slices.get("all", {})
                out[f"rerank {name[len(prefix):]}"] = {
                    "ndcg@10": entry.get("ndcg@10"),
                    "ndcg@10_ci95": entry.get("ci95", {}).get("ndcg@10"),
                    "gauc": entry.get("gauc"),
                    "auc": entry.get("auc"),
                    "baskets": two_stage.get("baskets"),
                    "source": f"{source}: the cross-encoder's test subsample, stored candidates",
                }
    results = bundle.model(CROSS_ENCODER.name).info.get("metrics", {}).get("evaluation", {}).get("results", {})
    mine = next((name for name in results if name.startswith("edgerec")), None)
    if mine is None:
        out["cross-encoder"] = {"reason": "not in this bundle (no cross-encoder evaluation in its manifest)"}
    else:
        entry = results[mine].get("all", {})
        out["cross-encoder"] = {
            "ndcg@10": entry.get("ndcg@10"),
            "gauc": entry.get("gauc"),
            "auc": entry.get("auc"),
            "baskets": entry.get("ranked_baskets"),
            "source": f"the bundle's manifest ({mine}): test-split subsample",
        }
    return out


def scenario_quality(scenario: Mapping[str, Any], quality: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The quality the export's evaluation recorded for a scenario's path; re-ranked paths (0 < R < N) have none."""
    if scenario["path"] == "ranker + cross-encoder":
        entry = quality.get(f"rerank {scenario['rerank_top']}")
        if entry is None:
            return {"reason": f"not in this bundle (the export's evaluation has no re-rank of the top {scenario['rerank_top']})"}
        entry = dict(entry)
    else:
        entry = dict(quality.get(scenario["path"], {"reason": "not in this bundle"}))
    if scenario["rpc"] == "Recommend" and "reason" not in entry:
        entry["note"] = "evaluated on the test baskets' candidates, not as retrieval over the whole catalog"
    return entry
