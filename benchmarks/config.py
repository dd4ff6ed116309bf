"""Every setting of `edgerec bench`, with its default, in one place.

Five groups: which phases run, what is measured offline (the cross-encoder's
runner grid), what the load generator does to the cross-encoder servers, what
it does to the two-stage server (ranker, re-rank, Recommend), and where the
inputs and outputs live. The defaults size a full run to about ten minutes on
two CPU cores (offline grid about two, cross-encoder servers about three,
two-stage server about four); `QUICK_*` shrink each phase to a second or two
so the tests can run the whole benchmark end to end.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgerec.benchmarks.harness.config import LoadTestConfig
from edgerec.core.settings import setting

CPU_RUNNERS = ("pytorch-fp32", "ort-fp32", "ort-fp32-optimized", "ort-int8-dynamic", "ort-int8-static")
GPU_RUNNERS = ("pytorch-cuda-fp16", "ort-cuda-fp16", "ort-tensorrt-fp16")


@dataclasses.dataclass(frozen=True)
class OfflineConfig:
    """The offline benchmark: runners x batch sizes x sequence lengths."""

    runners: tuple[str, ...] = setting(
        CPU_RUNNERS + GPU_RUNNERS,
        "runners to time (see `edgerec.benchmarks.runners.KINDS`); GPU runners are skipped (with the reason "
        "recorded) where no GPU or provider is present",
    )
    batch_sizes: tuple[int, ...] = setting((1, 8, 32, 64), "batch sizes (pairs per call) of the grid")
    sequence_lengths: tuple[int, ...] = setting((32, 64, 128), "tokens per pair of the grid (every pair exactly this long)")
    warmup_runs: int = setting(1, "untimed calls per runner before each grid cell is timed")
    min_rounds: int = setting(5, "timed calls per runner and cell at least, even past the cell's time budget")
    max_rounds: int = setting(300, "timed calls per runner and cell at most")
    seconds_per_cell: float = setting(
        10.0, "time budget of one grid cell, all runners together (rounds alternate the runners)"
    )
    threads: int = setting(0, "intra-op threads of every runner (ONNX Runtime and torch alike); 0: physical cores")
    spin_wait: bool = setting(
        False,
        "let ONNX Runtime's threads spin between operators; off as in the server's default, and so that an "
        "idle session's spinning cannot slow the next runner of a round",
    )
    quality_baskets: int = setting(
        40, "validation baskets (~60 pairs each) scored for runners whose AUC/NDCG@10 the bundle's gate did not record"
    )
    quality_batch_size: int = setting(64, "pairs per call when scoring validation baskets for quality")
    goal_batch_size: int = setting(32, "batch size of the int8-vs-PyTorch speed goal")
    goal_sequence_length: int = setting(128, "sequence length of the int8-vs-PyTorch speed goal")
    seed: int = setting(0, "seed of the synthetic inputs")


@dataclasses.dataclass(frozen=True)
class LoadConfig(LoadTestConfig):
    """The server benchmark: one server with batching on and one with it off, loaded back to back."""

    concurrencies: tuple[int, ...] = setting((1, 4, 16, 64), "closed-loop concurrency levels (streams in flight)")
    open_loop_loads: tuple[float, ...] = setting(
        (0.5, 0.75, 1.0, 1.5),
        "open-loop (Poisson) arrival rates as fractions of the batching server's measured closed-loop capacity",
    )
    seconds_per_level: float = setting(6.0, "duration of each load level (each concurrency and each rate, per server)")
    max_requests_per_level: int = setting(20000, "requests sent at most per load level, whatever its duration")
    warmup_requests: int = setting(8, "untimed requests sent to each server before the first level")
    max_in_flight: int = setting(512, "open loop: requests outstanding at most; arrivals beyond it count as dropped")
    drain_s: float = setting(
        5.0, "how long requests in flight when a level stops sending may take before they count as unfinished"
    )
    request_pool: int = setting(400, "distinct requests built from the test split and sent round-robin")
    max_batch_size: int = setting(0, "batching server's max batch size in pairs; 0: the server's default")
    goal_concurrency: int = setting(64, "concurrency of the server goals (vs offline, vs batching off)")
    serving_cost_concurrencies: tuple[int, ...] = setting(
        (4, 16), "closed-loop levels whose server CPU per pair and pairs/s are judged against the yardstick"
    )
    yardstick_seconds: float = setting(
        5.0, "time budget of each in-process way (default session, serving session, rows alone), in whole passes"
    )
    yardstick_pairs: int = setting(
        1500, "pairs of the request pool (every k-th request, so their lengths follow the pool's) the in-process yardstick runs each way over"
    )


@dataclasses.dataclass(frozen=True)
class TwoStageConfig:
    """The two-stage server: one `edgerec serve` of a bundle with the ranker, Rank and Recommend under load.

    Scenarios (each with every closed-loop level and the open-loop sweep): Rank
    of `candidates` candidates with each of `rank_rerank_tops` (0: the ranker
    alone; `candidates`: every candidate re-scored, the cross-encoder alone on
    the same candidates), and Recommend over the whole catalog with each of
    `recommend_rerank_tops`. The levels of all scenarios are interleaved, so
    that a noisy neighbour slows each of them alike.
    """

    candidates: int = setting(100, "candidates in one Rank request")
    k: int = setting(10, "items one Rank or Recommend request asks for")
    rank_rerank_tops: tuple[int, ...] = setting(
        (0, 10, 20, 100),
        "Rank scenarios by rerank_top: 0 the ranker alone, R its best R re-scored by the cross-encoder, "
        "`candidates` the cross-encoder on every candidate (the cross-encoder path)",
    )
    recommend_rerank_tops: tuple[int, ...] = setting((0, 10), "Recommend (whole catalog) scenarios by rerank_top")
    concurrencies: tuple[int, ...] = setting((1, 4, 16, 64), "closed-loop concurrency levels of every scenario")
    open_loop_loads: tuple[float, ...] = setting(
        (0.5, 1.0, 1.5), "open-loop (Poisson) arrival rates as fractions of each scenario's closed-loop capacity"
    )
    seconds_per_level: float = setting(3.0, "how long each level sends (each scenario, concurrency and rate)")
    drain_s: float = setting(
        60.0,
        "how long requests in flight when a level stops sending may take (64 cross-encoder requests of 100 "
        "candidates queue ~30 s of work on 2 cores; their latency is measured, not cut off)",
    )
    max_requests_per_level: int = setting(20000, "requests sent at most per level, whatever its duration")
    max_in_flight: int = setting(256, "open loop: requests outstanding at most; arrivals beyond it count as dropped")
    warmup_requests: int = setting(4, "untimed requests of each scenario before the first level")
    request_pool: int = setting(200, "distinct test-split customers sent round-robin")
    max_history_items: int = setting(64, "most recent past items one request carries as context")
    goal_concurrency: int = setting(4, "concurrency of the latency goals")
    goal_rerank_top: int = setting(20, "rerank_top of the re-rank latency goal")
    ranker_max_queue_candidates: int = setting(
        1 << 22,
        "the served ranker's admission bound in candidates, raised so that 64 callers of whole-catalog "
        "Recommend queue instead of being refused (as admission's time bound is off): the sweep measures "
        "queueing, `edgerec reliability` the bounds",
    )
    request_timeout_s: float = setting(120.0, "gRPC deadline of every request")
    seed: int = setting(0, "seed of the customers drawn, their candidates and the Poisson arrivals")


QUICK_OFFLINE = OfflineConfig(
    batch_sizes=(1, 8),
    sequence_lengths=(32,),
    warmup_runs=1,
    min_rounds=3,
    max_rounds=50,
    seconds_per_cell=0.3,
    quality_baskets=12,
    quality_batch_size=32,
)
QUICK_LOAD = LoadConfig(
    concurrencies=(1, 4),
    open_loop_loads=(1.0,),
    seconds_per_level=0.4,
    max_requests_per_level=400,
    warmup_requests=4,
    max_in_flight=64,
    drain_s=1.0,
    min_candidates=4,
    max_candidates=12,
    request_pool=32,
    goal_concurrency=4,
    serving_cost_concurrencies=(1, 4),
    yardstick_seconds=0.2,
    yardstick_pairs=200,
    startup_timeout_s=30.0,
)
QUICK_TWO_STAGE = TwoStageConfig(
    candidates=12,
    rank_rerank_tops=(0, 4, 12),
    recommend_rerank_tops=(0, 4),
    concurrencies=(1, 4),
    open_loop_loads=(1.0,),
    seconds_per_level=0.25,
    drain_s=5.0,
    max_requests_per_level=300,
    max_in_flight=32,
    warmup_requests=2,
    request_pool=16,
    goal_rerank_top=4,
    request_timeout_s=30.0,
)


@dataclasses.dataclass(frozen=True)
class BenchPaths:
    """Where the benchmark reads its inputs and writes its results."""

    bundle: Path = setting(Path("artifacts/bundles/latest"), "bundle folder or .tar.gz to benchmark")
    output_dir: Path = setting(Path("artifacts/bench"), "folder for results.json, REPORT.md and the plots")
    checkpoint: Path = setting(Path("artifacts/checkpoint"), "checkpoint of the PyTorch reference runner")
    samples_dir: Path | None = setting(
        None,
        "folder with valid.jsonl.gz / test.jsonl.gz baskets (the export's sample cache); "
        "unset: artifacts/data/<the bundle's data fingerprint>",
    )
    export_dir: Path = setting(
        Path("artifacts/export"),
        "the export's work folder, searched for variants the bundle does not carry and for the ranker's "
        "evaluation (ranker/ranker_report.json) when the bundle's manifest does not hold it",
    )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Which phases run, and at what size."""

    quick: bool = setting(
        False, "tiny grid and short load levels (a second or two per phase) for tests and smoke runs; flags still override"
    )
    offline: bool = setting(True, "run the offline runner benchmark (grid and quality)")
    server: bool = setting(True, "run the cross-encoder server benchmark (batching on and off)")
    two_stage: bool = setting(
        True, "run the two-stage server benchmark (ranker, re-rank, Recommend); skipped, with the reason, without a ranker"
    )
