"""A model version: one loaded, verified and warmed-up bundle, ready to swap in atomically.

It holds the bundle's featurizer and one *instance* per model it serves: the
model's backend (`runtime.backends`) with its own batcher, so each model's
batches are cut and run independently. The request pipeline
(`runtime.pipeline`) is composed over the instances; the transports only see
`ModelVersion.pipeline` and the identity properties below. Lifecycle: `load`
(blocking: open, verify, initialize and warm every backend), `start` (the
batchers), `retire` (finish admitted work, free the backends, delete an
unpacked archive).

The models served are those of the bundle whose name this runtime knows
(`edgerec.core.signatures.SIGNATURES`) with a matching signature; the
cross-encoder is required, other unknown models are skipped with a log line.
A bundle that also holds the two-tower ranker (`item_tower` and `ranker`
with their data files) gets a `RankerStage`: `runtime.ranker.RankerScorer`
behind its own batcher (`Config.ranker_batcher`, metrics `edgerec_ranker_*`),
and the pipeline is `runtime.two_stage.TwoStagePipeline` over both.

The tokenizer must agree with the model (`embeddable_ids`): every id it can
produce must be one the cross-encoder can embed, or the bundle is refused at
load (and so at hot reload) with FAILED_PRECONDITION. The manifest records the
model's vocabulary size (`vocab_size`, written by the export); the model
itself is probed too, with the tokenizer's largest id and the recorded size -
1 (ONNX Runtime fails on an id past the embedding table, at least on the CPU),
so a bundle without the key, or with a wrong one, is caught as well. KServe
ids are then checked against the model's vocabulary, not the tokenizer's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgerec.core.bundle import VOCAB_SIZE, Bundle, open_bundle
from edgerec.core.errors import EdgeRecError, ErrorCode
from edgerec.core.featurize import Featurizer, FeaturizerConfig
from edgerec.core.sessions import RowRunner, available_cpus
from edgerec.core.settings import from_jsonable
from edgerec.core.signatures import CROSS_ENCODER, RANKER_SIGNATURES, SIGNATURES, ModelSignature
from edgerec.runtime.backends.base import Backend
from edgerec.runtime.backends.onnx import OnnxBackend
from edgerec.runtime.batcher import Batcher
from edgerec.runtime.config import BatcherConfig, Config
from edgerec.runtime.metrics import Metrics
from edgerec.runtime.pipeline import CrossEncoderPipeline
from edgerec.runtime.ranker import RankerScorer
from edgerec.runtime.scheduler import Segment
from edgerec.runtime.two_stage import RankerStage, SegmentRunner, TwoStagePipeline, prepare_segments

log = logging.getLogger(__name__)


class Rows(Protocol):
    """What a request hands an instance's batcher: `lengths` (int64, tokens per row), the pad value of
    each input whose rows are padded, and `feeds(indices)`: those rows as the model's inputs."""

    lengths: np.ndarray
    pad_values: dict[str, int]

    def feeds(self, indices: np.ndarray) -> dict[str, np.ndarray]: ...


def merge_feeds(segments: Sequence[Segment]) -> dict[str, np.ndarray]:
    """One batch's inputs from the scheduler's segments, rows in segment order; inputs of rank >= 2 are
    padded along axis 1 to the longest segment with the payload's pad value (0 unless it names one)."""
    parts = [segment.payload.feeds(segment.indices) for segment in segments]
    if len(parts) == 1:
        return parts[0]
    pads = segments[0].payload.pad_values
    merged = {}
    for name in parts[0]:
        arrays = [part[name] for part in parts]
        if arrays[0].ndim < 2:
            merged[name] = np.concatenate(arrays)
            continue
        rows = sum(len(array) for array in arrays)
        width = max(array.shape[1] for array in arrays)
        out = np.full((rows, width, *arrays[0].shape[2:]), pads.get(name, 0), dtype=arrays[0].dtype)
        row = 0
        for array in arrays:
            out[row : row + len(array), : array.shape[1]] = array
            row += len(array)
        merged[name] = out
    return merged


def split_feeds(segments: Sequence[Segment]) -> list[dict[str, np.ndarray]]:
    """One batch's rows as separate inputs, in segment order, each row cut to its own length (no padding)."""
    return [
        segment.payload.feeds(segment.indices[row : row + 1])
        for segment in segments
        for row in range(len(segment.indices))
    ]


class Instance:
    """One served model of a model version: its backend and the batcher that feeds it.

    When the backend runs rows alone (`Backend.rows_alone`), the batcher
    still queues, cuts and answers batches as usual, but each row of a batch
    is its own call, cut to its own length, `Backend.row_workers` rows at
    once on a small thread pool: no row's outputs depend on its batch-mates
    or on padding (`BackendConfig.execution`). Otherwise a batch is one
    padded call.
    """

    def __init__(self, backend: Backend, config: BatcherConfig, metrics: Metrics, name: str) -> None:
        self.backend = backend
        self._output_names = backend.signature.output_names
        self._rows: RowRunner | None = None
        if backend.rows_alone:
            self._rows = RowRunner(self._execute, backend.row_workers, f"{name}-rows")
            self.batcher = Batcher(config, split_feeds, self._rows, metrics, name, padded=False)
        else:
            self.batcher = Batcher(config, merge_feeds, self._execute, metrics, name)

    @property
    def rows_alone(self) -> bool:
        return self.backend.rows_alone

    def _execute(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        outputs = self.backend.execute(feeds)
        return tuple(outputs[name] for name in self._output_names)

    def close(self) -> None:
        """Stop the row threads (after the batcher has drained) and free the backend."""
        if self._rows is not None:
            self._rows.close()
        self.backend.finalize()

    async def submit(self, rows: Rows, lengths: np.ndarray, timeout: float | None = None) -> tuple[np.ndarray, ...]:
        """Run `rows` through the batcher; the model's outputs in signature order, one entry per row.

        Raises the batcher's EdgeRecError (RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, UNAVAILABLE, INTERNAL).
        """
        return await self.batcher.submit(rows, lengths, timeout)

    @property
    def model(self) -> str:
        return self.backend.signature.name

    @property
    def signature(self) -> ModelSignature:
        return self.backend.signature

    @property
    def precision(self) -> str:
        return self.backend.variant.precision

    @property
    def provider(self) -> str:
        return self.backend.provider


def served_models(bundle: Bundle) -> list[str]:
    """The bundle's models this runtime serves, in manifest order.

    Raises EdgeRecError FAILED_PRECONDITION when the bundle has no
    cross-encoder, or a known model's signature (names, dtypes, shapes)
    differs from the one this runtime feeds.
    """
    served = []
    for name, model in bundle.models.items():
        known = SIGNATURES.get(name)
        if known is None and name in RANKER_SIGNATURES:
            continue  # served by the ranker stage (`load_ranker`)
        if known is None:
            log.warning("bundle %s %s: model %s is not served by this edgerec version", bundle.name, bundle.version, name)
            continue
        if _shape_of(model.signature) != _shape_of(known):
            raise EdgeRecError(
                ErrorCode.FAILED_PRECONDITION,
                f"bundle {bundle.name} {bundle.version}: model {name} has signature {_shape_of(model.signature)}; "
                f"this server feeds {_shape_of(known)}",
            )
        served.append(name)
    if CROSS_ENCODER.name not in served:
        raise EdgeRecError(
            ErrorCode.FAILED_PRECONDITION,
            f"bundle {bundle.name} {bundle.version} has no {CROSS_ENCODER.name} model (it has: {', '.join(bundle.models)})",
        )
    return served




def has_ranker(bundle: Bundle) -> bool:
    """Whether the bundle holds the two-tower ranker: both its models and its data files."""
    return all(name in bundle.models for name in RANKER_SIGNATURES) and {"item_embeddings", "behaviour_tables"} <= set(
        bundle.data
    )


def load_ranker(
    bundle: Bundle, config: Config, metrics: Metrics, featurizer: Featurizer | None = None
) -> RankerStage:
    """The bundle's ranker (its CPU default variants: a small MLP and the item tower) behind its batcher.

    Raises EdgeRecError FAILED_PRECONDITION when a model does not load, its embeddings do not match the
    catalog, or a whole-catalog request could never be admitted (catalog > ranker_max_queue_candidates).
    """
    for name, known in RANKER_SIGNATURES.items():
        if _shape_of(bundle.model(name).signature) != _shape_of(known):
            raise EdgeRecError(
                ErrorCode.FAILED_PRECONDITION,
                f"bundle {bundle.name} {bundle.version}: model {name} has signature "
                f"{_shape_of(bundle.model(name).signature)}; this server feeds {_shape_of(known)}",
            )
    sessions = dataclasses.replace(
        config.backend.session_config(bundle.root, 1, 1),
        providers=tuple(p for p in config.backend.providers if p != "tensorrt") or ("cpu",),
        intra_op_threads=config.ranker.ranker_threads,
    )
    scorer = RankerScorer(bundle, sessions, config.ranker.text_cache_size, featurizer)
    batching = config.ranker_batcher()
    if scorer.catalog_size > batching.max_queue_pairs:
        raise EdgeRecError(
            ErrorCode.FAILED_PRECONDITION,
            f"bundle {bundle.name} {bundle.version}: {scorer.catalog_size} catalog items, more than "
            f"ranker_max_queue_candidates ({batching.max_queue_pairs}); Recommend could never be admitted",
        )
    name = f"{bundle.name}-{bundle.version}"
    workers = config.ranker.ranker_threads or available_cpus()
    runner, tower_runner = SegmentRunner(workers, f"{name}-ranker"), SegmentRunner(1, f"{name}-item-tower")
    batcher = Batcher(batching, prepare_segments, runner, metrics.for_stage("ranker"), f"{name}-ranker", padded=False)
    tower_batcher = Batcher(
        batching, prepare_segments, tower_runner, metrics.for_stage("item_tower"), f"{name}-item-tower", padded=False
    )
    return RankerStage(scorer, batcher, tower_batcher, (runner, tower_runner))


def embeddable_ids(bundle: Bundle, featurizer: Featurizer, backend: Backend) -> int:
    """How many token ids the cross-encoder embeds (ids 0 .. n-1), checked against its tokenizer.

    The manifest's `vocab_size` when recorded, else the tokenizer's size; either way the model is run
    on one row holding the tokenizer's largest id and one holding `vocab_size - 1`, so a claim the
    model does not bear out is caught. Raises EdgeRecError FAILED_PRECONDITION naming the tokenizer's
    size and the model's when the tokenizer can produce an id the model cannot embed.
    """
    tokens = featurizer.tokenizer.get_vocab_size()
    recorded = bundle.model(CROSS_ENCODER.name).info.get(VOCAB_SIZE)
    where = f"bundle {bundle.name} {bundle.version}: model {CROSS_ENCODER.name}"
    if recorded is not None and (not isinstance(recorded, int) or isinstance(recorded, bool) or recorded < 1):
        raise EdgeRecError(ErrorCode.FAILED_PRECONDITION, f"{where}: manifest {VOCAB_SIZE} {recorded!r} is no size")
    if recorded is not None and tokens > recorded:
        raise EdgeRecError(
            ErrorCode.FAILED_PRECONDITION,
            f"{where}: the tokenizer has {tokens} tokens but the model embeds {recorded} (manifest {VOCAB_SIZE}); "
            f"ids {recorded}..{tokens - 1} would fail the model",
        )
    size = recorded if recorded is not None else tokens
    for probe in sorted({tokens - 1, size - 1}, reverse=True):
        failure = _failure_on(backend, featurizer, probe)
        if failure is not None:
            log.error("%s fails on token id %d: %s", where, probe, failure)
            embedded = _embedded_ids(backend, featurizer, probe)
            claim = f"manifest {VOCAB_SIZE} {recorded}" if recorded is not None else f"no {VOCAB_SIZE} in the manifest"
            raise EdgeRecError(
                ErrorCode.FAILED_PRECONDITION,
                f"{where}: the tokenizer has {tokens} tokens but the model embeds {embedded} ({claim}); "
                f"token id {probe} fails the model",
            )
    return size


def _failure_on(backend: Backend, featurizer: Featurizer, token_id: int) -> Exception | None:
    """Why the model fails on one well-formed row holding `token_id` in the context and the candidate; None if it runs."""
    feeds = featurizer.pack([((token_id,), (token_id,))]).as_feeds()
    try:
        backend.execute(feeds)
    except Exception as exc:  # ONNX Runtime refuses an id past the embedding table
        return exc
    return None


def _embedded_ids(backend: Backend, featurizer: Featurizer, failing: int) -> int:
    """The model's vocabulary size below a failing id, found by bisection (ids below it run, it fails)."""
    low, high = 0, failing  # the answer n: ids < n embed; id `failing` does not
    if _failure_on(backend, featurizer, 0) is not None:
        return 0
    while high - low > 1:  # invariant: id `low` embeds, id `high` fails
        middle = (low + high) // 2
        low, high = (middle, high) if _failure_on(backend, featurizer, middle) is None else (low, middle)
    return high


def _shape_of(signature: ModelSignature) -> tuple[Any, ...]:
    return tuple((t.name, t.dtype, tuple(t.shape)) for t in signature.inputs), tuple(
        (t.name, t.dtype, tuple(t.shape)) for t in signature.outputs
    )


class ModelVersion:
    """A verified, warmed-up bundle: its featurizer, one instance per served model, the request pipeline."""

    def __init__(
        self,
        bundle: Bundle,
        featurizer: Featurizer,
        backends: Sequence[Backend],
        config: Config,
        metrics: Metrics,
        unpacked_to: Path | None = None,
        vocab_size: int | None = None,
        ranker: RankerStage | None = None,
    ) -> None:
        """`vocab_size`: token ids the cross-encoder embeds (`embeddable_ids`); None: the tokenizer's size.
        `ranker`: the bundle's ranker stage (`load_ranker`), None for a cross-encoder-only bundle."""
        self.bundle = bundle
        self.featurizer = featurizer
        self.config = config
        self._unpacked_to = unpacked_to
        self.instances: dict[str, Instance] = {
            backend.signature.name: Instance(
                backend, config.batcher, metrics, f"{bundle.name}-{bundle.version}-{backend.signature.name}"
            )
            for backend in backends
        }
        self.ranker = ranker
        cross = CrossEncoderPipeline(
            featurizer, self.instances[CROSS_ENCODER.name], config.server, bundle.name, bundle.version, vocab_size
        )
        self.pipeline = TwoStagePipeline(cross, ranker, config.ranker, metrics)

    @classmethod
    def load(cls, path: Path, config: Config, metrics: Metrics) -> "ModelVersion":
        """Open (unpacking a .tar.gz), verify, load and warm up a bundle. Blocking: run it in a thread.

        Raises EdgeRecError (NOT_FOUND, DATA_LOSS, FAILED_PRECONDITION) naming what is wrong.
        """
        path = Path(path)
        unpacked_to = Path(tempfile.mkdtemp(prefix="edgerec-bundle-")) if path.is_file() else None
        backends: list[Backend] = []
        vocab_size = None
        ranker = None
        try:
            bundle = open_bundle(path, unpacked_to)
            featurizer_config = from_jsonable(FeaturizerConfig, bundle.featurizer_settings)
            featurizer = Featurizer.from_files(bundle.tokenizer_path, featurizer_config, bundle.catalog_path)
            max_batch, max_length = config.batcher.max_batch_size, featurizer_config.max_length
            sessions = config.backend.session_config(bundle.root, max_batch, max_length)
            for model in served_models(bundle):
                backend = OnnxBackend(bundle, model, sessions, config.backend.precision, config.backend.execution)
                backend.initialize()
                backends.append(backend)
                if model == CROSS_ENCODER.name:
                    vocab_size = embeddable_ids(bundle, featurizer, backend)
                if config.backend.warm_up:
                    backend.warm_up((1, max_batch), (max(4, max_length // 4), max_length))
            if has_ranker(bundle):
                ranker = load_ranker(bundle, config, metrics, featurizer)
                if config.backend.warm_up:
                    ranker.scorer.catalog_rows([], np.arange(ranker.scorer.catalog_size)).run(
                        np.arange(ranker.scorer.catalog_size)
                    )
        except BaseException:
            for backend in backends:
                backend.finalize()
            if unpacked_to is not None:
                shutil.rmtree(unpacked_to, ignore_errors=True)
            raise
        return cls(bundle, featurizer, backends, config, metrics, unpacked_to, vocab_size, ranker)

    # -- identity -----------------------------------------------------------
    @property
    def name(self) -> str:
        """The bundle's name (the KServe model name)."""
        return self.bundle.name

    @property
    def version(self) -> str:
        return self.bundle.version

    def variants(self) -> dict[str, tuple[str, str]]:
        """Model name -> (variant precision, provider that runs it), for logs and metrics."""
        variants = {name: (i.precision, i.provider) for name, i in self.instances.items()}
        if self.ranker is not None:
            variants.update(self.ranker.scorer.variants())
        return variants

    def _batchers(self) -> list[Batcher]:
        ranker = [] if self.ranker is None else [self.ranker.batcher, self.ranker.tower_batcher]
        return [instance.batcher for instance in self.instances.values()] + ranker

    # -- lifecycle ----------------------------------------------------------
    async def start(self) -> "ModelVersion":
        for batcher in self._batchers():
            await batcher.start()
        return self

    @property
    def ready(self) -> bool:
        return all(batcher.accepting for batcher in self._batchers())

    @property
    def admitted_requests(self) -> int:
        """Requests admitted by any instance and not yet answered."""
        return sum(batcher.admitted_requests for batcher in self._batchers())

    async def retire(self, timeout: float | None = None) -> bool:
        """Stop admitting, finish admitted work (up to `timeout` s), then free the backends.
        True if everything finished in time."""
        started = time.perf_counter()
        calls_done = await self.pipeline.wait_idle(timeout)  # a two-stage call still needs its second batcher
        left = None if timeout is None else max(0.0, timeout - (time.perf_counter() - started))
        finished = await asyncio.gather(*(batcher.drain(left) for batcher in self._batchers()))
        for instance in self.instances.values():
            instance.close()
        if self.ranker is not None:
            self.ranker.close()
        if self._unpacked_to is not None:
            shutil.rmtree(self._unpacked_to, ignore_errors=True)
        return calls_done and all(finished)
