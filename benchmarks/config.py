"""Every setting of `edgerec bench`, with its default, in one place.

Four groups: which phases run, what is measured offline (the engine grid),
what the load generator does to the server, and where the inputs and
outputs live. The
defaults size a full run to about ten minutes on two CPU cores (offline grid
about four, server about five); `QUICK_*` shrink each phase to a second or two
so the tests can run the whole benchmark end to end.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgerec.settings import setting

CPU_ENGINES = ("pytorch-fp32", "ort-fp32", "ort-fp32-optimized", "ort-int8-dynamic", "ort-int8-static")
GPU_ENGINES = ("pytorch-cuda-fp16", "ort-cuda-fp16", "ort-tensorrt-fp16")


@dataclasses.dataclass(frozen=True)
class OfflineConfig:
    """The offline engine benchmark: engines x batch sizes x sequence lengths."""

    engines: tuple[str, ...] = setting(
        CPU_ENGINES + GPU_ENGINES,
        "engines to time; GPU engines are skipped (with the reason recorded) where no GPU or provider is present",
    )
    batch_sizes: tuple[int, ...] = setting((1, 8, 32, 64), "batch sizes (pairs per call) of the grid")
    sequence_lengths: tuple[int, ...] = setting((32, 64, 128), "tokens per pair of the grid (every pair exactly this long)")
    warmup_runs: int = setting(1, "untimed calls per engine before each grid cell is timed")
    min_rounds: int = setting(5, "timed calls per engine and cell at least, even past the cell's time budget")
    max_rounds: int = setting(300, "timed calls per engine and cell at most")
    seconds_per_cell: float = setting(
        18.0, "time budget of one grid cell, all engines together (rounds alternate the engines)"
    )
    threads: int = setting(0, "intra-op threads of every engine (ONNX Runtime and torch alike); 0: physical cores")
    spin_wait: bool = setting(
        True,
        "let ONNX Runtime's threads spin between operators, as the server does by default; "
        "off: an idle session's spinning cannot slow the next engine of a round",
    )
    quality_baskets: int = setting(
        40, "validation baskets (~60 pairs each) scored for engines whose AUC/NDCG@10 the bundle's gate did not record"
    )
    quality_batch_size: int = setting(64, "pairs per call when scoring validation baskets for quality")
    goal_batch_size: int = setting(32, "batch size of the int8-vs-PyTorch speed goal")
    goal_sequence_length: int = setting(128, "sequence length of the int8-vs-PyTorch speed goal")
    seed: int = setting(0, "seed of the synthetic inputs")


@dataclasses.dataclass(frozen=True)
class LoadConfig:
    """The server benchmark: one server with batching on and one with it off, loaded back to back."""

    concurrencies: tuple[int, ...] = setting((1, 4, 16, 64), "closed-loop concurrency levels (streams in flight)")
    open_loop_loads: tuple[float, ...] = setting(
        (0.25, 0.5, 0.75, 1.0, 1.25, 1.5),
        "open-loop (Poisson) arrival rates as fractions of the batching server's measured closed-loop capacity",
    )
    seconds_per_level: float = setting(10.0, "duration of each load level (each concurrency and each rate, per server)")
    max_requests_per_level: int = setting(20000, "requests sent at most per load level, whatever its duration")
    warmup_requests: int = setting(8, "untimed requests sent to each server before the first level")
    max_in_flight: int = setting(512, "open loop: requests outstanding at most; arrivals beyond it count as dropped")
    drain_s: float = setting(
        5.0, "how long requests in flight when a level stops sending may take before they count as unfinished"
    )
    request_timeout_s: float = setting(30.0, "gRPC deadline of each request")
    min_candidates: int = setting(10, "fewest candidates in one request")
    max_candidates: int = setting(100, "most candidates in one request")
    max_history_items: int = setting(
        64, "most recent past items one request carries (the featurizer reads ~10-20; the server caps the context)"
    )
    request_pool: int = setting(400, "distinct requests built from the test split and sent round-robin")
    engine: str = setting("", "precision the servers serve; empty: the bundle's default CPU engine")
    max_batch_size: int = setting(0, "batching server's max batch size in pairs; 0: the server's default")
    goal_concurrency: int = setting(64, "concurrency of the server goals (vs offline, vs batching off)")
    startup_timeout_s: float = setting(60.0, "longest wait for a server to become ready")
    seed: int = setting(0, "seed of the request pool and of the Poisson arrivals")


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
    open_loop_loads=(0.5, 1.5),
    seconds_per_level=0.6,
    max_requests_per_level=400,
    warmup_requests=4,
    max_in_flight=64,
    drain_s=1.0,
    min_candidates=4,
    max_candidates=12,
    request_pool=32,
    goal_concurrency=4,
    startup_timeout_s=30.0,
)


@dataclasses.dataclass(frozen=True)
class BenchPaths:
    """Where the benchmark reads its inputs and writes its results."""

    bundle: Path = setting(Path("artifacts/bundles/latest"), "bundle folder or .tar.gz to benchmark")
    output_dir: Path = setting(Path("artifacts/bench"), "folder for results.json, REPORT.md and the plots")
    checkpoint: Path = setting(Path("artifacts/checkpoint"), "checkpoint of the PyTorch reference engine")
    samples_dir: Path | None = setting(
        None,
        "folder with valid.jsonl.gz / test.jsonl.gz baskets (the export's sample cache); "
        "unset: artifacts/data/<the bundle's data fingerprint>",
    )
    export_dir: Path = setting(
        Path("artifacts/export"), "the export's work folder, searched for engines the bundle does not carry"
    )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Which phases run, and at what size."""

    quick: bool = setting(
        False, "tiny grid and short load levels (a second or two per phase) for tests and smoke runs; flags still override"
    )
    offline: bool = setting(True, "run the offline engine benchmark (grid and quality)")
    server: bool = setting(True, "run the server benchmark (batching on and off)")
