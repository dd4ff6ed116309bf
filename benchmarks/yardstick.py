"""The serving path's cost, measured against an in-process ONNX Runtime session at its defaults.

Same pairs and same batch shapes as the server: the benchmark's request pool
is featurized as the server does (`Featurizer.catalog_pairs` into the
pipeline's `PairRows`), queued whole in the server's own scheduler
(`runtime.scheduler.Scheduler` with the server's `BatcherConfig`) and cut
into batches exactly as a server with a full queue cuts them, then merged
into feeds with the server's `merge_feeds`. Those batches run, in this
process and one after the other, through:

- `default session`: a session with ONNX Runtime's default
  `SessionOptions` (`SessionConfig.onnxruntime_defaults`) except the intra-op threads, set to the benchmark's
  (ONNX Runtime's own default on a box with that many cores) - what a
  server that leaves ONNX Runtime alone would run;
- `serving session, batched`: the server's session settings
  (`create_session` with `runtime.config.BackendConfig`'s defaults) fed
  the same padded batches (`execution = "batched"`);
- `serving session, rows alone`: what the server runs on the CPU by default
  (`execution = "auto"`): each pair one single-threaded call cut to its own
  length, `threads` pairs at once.

Each reports CPU milliseconds per pair (this process's user + system CPU
over the pairs scored; it holds no other busy thread meanwhile) and pairs/s
(wall clock). The server's own CPU per pair comes from its levels
(`server_bench`), so `serving_path_goals` compares the two in one run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import psutil

from edgerec.benchmarks.harness.requests import history_of
from edgerec.core.featurize import Featurizer
from edgerec.core.sessions import RowRunner, SessionConfig, create_session, cut_rows
from edgerec.core.signatures import CROSS_ENCODER
from edgerec.proto import recommender_pb2
from edgerec.runtime.config import BackendConfig, BatcherConfig
from edgerec.runtime.model_version import merge_feeds
from edgerec.runtime.pipeline import PairRows
from edgerec.runtime.scheduler import Request, Scheduler

Feeds = dict[str, np.ndarray]

DEFAULT_SESSION = "default session"
SERVING_SESSION = "serving session, batched"
ROWS_ALONE = "serving session, rows alone"


def server_batches(
    featurizer: Featurizer, requests: Sequence[recommender_pb2.ScoreRequest], config: BatcherConfig
) -> list[Feeds]:
    """The pool's pairs cut into batches by the server's scheduler with every request queued (int64 feeds)."""
    scheduler = Scheduler(config)
    for index, request in enumerate(requests):
        pairs = featurizer.catalog_pairs(history_of(request), [c.item_id for c in request.candidates])
        rows = PairRows(featurizer, pairs[0][0] if pairs else (), [candidate for _, candidate in pairs])
        scheduler.add(Request(rows, rows.lengths, arrival=float(index)))
    batches = []
    while (batch := scheduler.next_batch(now=float(len(requests)))) is not None:
        batches.append(merge_feeds(batch.segments))
    return batches


def default_session(path: Path, threads: int) -> ort.InferenceSession:
    """ONNX Runtime at its defaults, with `threads` intra-op threads, on the CPU."""
    return create_session(path, SessionConfig(providers=("cpu",), intra_op_threads=threads, onnxruntime_defaults=True)).session


@dataclasses.dataclass(frozen=True)
class Measured:
    """One way of running the batches: pairs scored, CPU ms per pair, pairs/s, passes over the batches."""

    name: str
    pairs: int
    cpu_ms_per_pair: float
    pairs_per_s: float
    passes: int

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _time(name: str, run: Callable[[Any], Any], batches: Sequence[Any], rows: int, seconds: float, min_passes: int) -> Measured:
    """Run a few batches untimed, then whole passes over `batches` (`rows` pairs in all) until `seconds`
    have gone, at least `min_passes`."""
    for feeds in batches[:4]:
        run(feeds)
    process = psutil.Process()
    cpu_before = sum(process.cpu_times()[:2])
    started = time.perf_counter()
    passes = 0
    while passes < min_passes or time.perf_counter() - started < seconds:
        for feeds in batches:
            run(feeds)
        passes += 1
    wall = time.perf_counter() - started
    cpu = sum(process.cpu_times()[:2]) - cpu_before
    pairs = rows * passes
    return Measured(name, pairs, 1000.0 * cpu / pairs, pairs / wall, passes)


def measure(
    path: Path,
    featurizer: Featurizer,
    requests: Sequence[recommender_pb2.ScoreRequest],
    batcher: BatcherConfig,
    threads: int,
    seconds: float = 8.0,
    min_passes: int = 1,
    max_pairs: int = 1500,
) -> dict[str, Any]:
    """Each way of running the server's batches of `requests` through the model file at `path`.

    Every k-th request of the pool is used, k chosen so that about
    `max_pairs` pairs remain (a whole pool of real customers takes minutes
    per pass on 2 cores), so the sample's pair lengths follow the pool's
    (`mean_pair_tokens` reports both). `seconds`: time budget of each way,
    in whole passes, at least `min_passes`; the three ways run one after the
    other in this process.
    """
    total = sum(len(request.candidates) for request in requests)
    stride = max(1, total // max(1, max_pairs))
    taken = list(requests[::stride])
    batches = server_batches(featurizer, taken, batcher)
    names = list(CROSS_ENCODER.output_names)
    default = default_session(path, threads)
    serving_config = BackendConfig().session_config(path.parent, batcher.max_batch_size, featurizer.config.max_length)
    serving = create_session(path, dataclasses.replace(serving_config, providers=("cpu",), intra_op_threads=threads))
    single = create_session(path, dataclasses.replace(serving_config, providers=("cpu",), intra_op_threads=1))
    alone = [cut_rows(feeds, CROSS_ENCODER.input_names[1]) for feeds in batches]
    rows_at_once = RowRunner(lambda feeds: single.session.run(names, feeds), threads)  # as the server's instances

    rows = sum(len(feeds[CROSS_ENCODER.input_names[0]]) for feeds in batches)
    measured = [
        _time(DEFAULT_SESSION, lambda feeds: default.run(names, feeds), batches, rows, seconds, min_passes),
        _time(SERVING_SESSION, lambda feeds: serving.session.run(names, feeds), batches, rows, seconds, min_passes),
        _time(ROWS_ALONE, rows_at_once, alone, rows, seconds, min_passes),
    ]
    rows_at_once.close()
    tokens = np.array([feeds[CROSS_ENCODER.input_names[1]].sum() for feeds in batches], dtype=float)
    padded = np.array([feeds[CROSS_ENCODER.input_names[1]].size for feeds in batches], dtype=float)
    return {
        "model_file": path.name,
        "requests": len(taken),
        "pool_requests": len(requests),
        "stride": stride,
        "mean_pair_tokens": float(tokens.sum() / rows),
        "threads": threads,
        "batches": len(batches),
        "mean_batch_size": rows / len(batches),
        "padding_ratio": float(1.0 - tokens.sum() / padded.sum()),
        "session_config": {k: v for k, v in dataclasses.asdict(serving_config).items() if k in _SESSION_KEYS},
        "ways": [m.as_json() for m in measured],
    }


_SESSION_KEYS = ("intra_op_threads", "inter_op_threads", "spin_wait", "cpu_memory_arena", "memory_pattern")


def server_cpu_per_pair(level: dict[str, Any]) -> float:
    """CPU ms per pair the server process spent at one level: its CPU cores used / its scored pairs/s."""
    server = level["server"]
    scored = server.get("scored_pairs_per_s") or 0.0
    return 1000.0 * server["cpu_cores_used"] / scored if scored else float("nan")
