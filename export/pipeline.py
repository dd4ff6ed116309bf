"""`edgerec export`: from shop data to a validated, bundled model version, in one command.

Steps:
1. train with `edgerec train`'s defaults, if `<artifacts>/checkpoint` holds no
   checkpoint (run `edgerec train` first for other settings);
2. evaluate on the test split, if the checkpoint has no evaluation report;
3. sample validation and calibration baskets;
4. the cross-encoder's variants: export to ONNX, fuse, quantize (int8
   dynamic, int8 static) and convert to fp16 (`variants.py`);
5. the validation gate: every variant against PyTorch on validation baskets,
   then the CPU default: the faster of the int8 variants that pass, timed in
   sessions configured like the server's;
6. the two-tower ranker (on by default; `--no-ranker` leaves it out): train,
   export, gate, evaluate on the whole test split (`ranker_export.py`);
7. the bundle folder (`edgerec.core.bundle` format; `--cpu-only` leaves the
   GPU-only fp16 variant out);
8. the TensorRT engine cache of the bundle's GPU variant, built as the server
   will load it (skipped, in one line, without TensorRT; `tensorrt.py`);
9. the bundle's .tar.gz;
10. a Triton model repository beside it;
11. the offline latency of the served variants (`latency.py`).
Each step logs its seconds; `<artifacts>/export/export_report.json` keeps them
with the bundle's size (folder and archive) and the latency table.
After the gate it prints a table of the variants: size, gate verdict, AUC and
NDCG@10. A failing gate stops the export before anything is bundled (exit status 1).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from edgerec.core.bundle import DEVICE_OF, VOCAB_SIZE, ModelFiles, sha256_file
from edgerec.core.featurize import EncodedBatch
from edgerec.core.settings import add_arguments, from_arguments, from_jsonable, setting, to_jsonable
from edgerec.core.signatures import CROSS_ENCODER
from edgerec.export.bundle import build_bundle, pack_bundle
from edgerec.export.data import DataConfig
from edgerec.export.evaluate import EVAL_SCORES, EvalConfig, evaluate, main_only
from edgerec.export.latency import LatencyConfig
from edgerec.export.latency import measure as measure_latency
from edgerec.export.model import Checkpoint, load_checkpoint
from edgerec.export.onnx_export import OPSET
from edgerec.export.optimize import expected_fusions
from edgerec.export.quantize import QuantizeConfig
from edgerec.export.ranker_export import RankerBuild, build_ranker
from edgerec.export.ranker_export import summary_table as ranker_summary_table
from edgerec.export.ranker_train import RankerConfig
from edgerec.export.samples import prepare
from edgerec.export.tensorrt import build_engine_cache
from edgerec.export.train import TrainConfig, train
from edgerec.export.triton import TritonConfig, write_repository
from edgerec.export.validate import GateConfig, GateFailed, GateResult, OnnxScorer, enforce, run_gate
from edgerec.export.variants import PRECISIONS, VariantSet, build_variants, encode_batches, sample

log = logging.getLogger(__name__)

DEFAULT_PRECISIONS = tuple(p for p in PRECISIONS if p != "int8-static")
INT8 = ("int8-dynamic", "int8-static")
EVAL_REPORT = "eval_report.json"  # written next to the checkpoint by `edgerec eval`


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What `edgerec export` builds and where."""

    artifacts: Path = setting(Path("artifacts"), "root of checkpoint/, data/, export/, bundles/ and triton/")
    bundle_name: str = setting(
        "edgerec", "bundle name: the model version's name the server reports (KServe model name) and the Triton model name"
    )
    version: str = setting("", "bundle version; empty: the first 12 hex digits of the weights' sha256")
    precisions: tuple[str, ...] = setting(
        DEFAULT_PRECISIONS,
        "variants (precision files) of the cross-encoder to build, gate and bundle (also: int8-static). "
        "int8 static (QDQ, calibrated) is left out by default: on the real model it lost 0.66% NDCG@10 "
        "against the 0.5% gate and ran slower than int8 dynamic",
    )
    validation_baskets: int = setting(
        96,
        "validation baskets every variant is gated on: ~60 candidates each, so ~5800 pairs scored by PyTorch "
        "and by each variant (41 s on 2 free VNNI cores with 64-token pairs). Fewer is noise: on 32 baskets NDCG@10 "
        "of the same int8 variant moved 1.1%, on 96 it moved 0.0%, against a 0.5% bound",
    )
    calibration_baskets: int = setting(64, "training baskets whose pairs calibrate int8 static")
    sample_seed: int = setting(0, "seed of the validation and calibration basket samples")
    batch_size: int = setting(64, "pairs per batch when scoring validation baskets")
    threads: int = setting(
        0,
        "ONNX Runtime intra-op threads for validation and timing (sessions otherwise configured like the "
        "server's); 0: one per physical core",
    )
    timing_batches: int = setting(6, "validation batches timed per int8 variant to choose the CPU default")
    timing_rounds: int = setting(3, "timing rounds (variants interleaved; the best round counts)")
    opset: int = setting(OPSET, "ONNX opset of the export")
    cpu_default: str = setting(
        "", "force the bundle's CPU default variant (a precision); empty: the faster passing int8 variant"
    )
    ranker: bool = setting(
        True,
        "also train, export, gate, evaluate and bundle the two-tower ranker (`export/ranker_export.py`; about "
        "4 minutes on 2 cores); --no-ranker leaves it out (a cross-encoder-only bundle)",
    )
    cpu_only: bool = setting(
        False,
        "leave GPU-only variants (fp16) out of the bundle: a smaller bundle for a CPU-only edge box. The "
        "manifest's GPU default is then the plain fp32 variant (it runs under CUDA too), so a GPU server "
        "still opens the bundle",
    )
    latency: bool = setting(
        True,
        "measure the served variants' offline latency (ranker: 1, 100 and all catalog candidates; cross-encoder: "
        "100) on real test customers after bundling (`export/latency.py`, well under 30 s) into the export report",
    )

    @property
    def bundled_precisions(self) -> tuple[str, ...]:
        """The cross-encoder precisions built and bundled: `precisions`, less GPU-only ones with `cpu_only`."""
        return tuple(p for p in self.precisions if not (self.cpu_only and DEVICE_OF.get(p) == "gpu"))

    @property
    def checkpoint_dir(self) -> Path:
        return self.artifacts / "checkpoint"

    @property
    def data_dir(self) -> Path:
        return self.artifacts / "data"


# -- progress ----------------------------------------------------------------
@contextlib.contextmanager
def _step(number: int, total: int, title: str, seconds: dict[str, float] | None = None) -> Iterator[None]:
    """Log the step's start and its seconds (also into `seconds[title]`)."""
    start = time.perf_counter()
    log.info("[%d/%d] %s ...", number, total, title)
    yield
    elapsed = time.perf_counter() - start
    if seconds is not None:
        seconds[title] = round(elapsed, 1)
    log.info("[%d/%d] %s: done in %.1f s", number, total, title, elapsed)


def folder_bytes(root: Path) -> int:
    """Bytes of every file under `root` (links followed once, dot-folders included)."""
    return sum(path.stat().st_size for path in Path(root).rglob("*") if path.is_file())


# -- int8 choice -------------------------------------------------------------
def time_variants(
    variants: Mapping[str, Path], batches: Sequence[EncodedBatch], rounds: int, threads: int
) -> dict[str, float]:
    """Best-of-`rounds` seconds each variant takes for `batches`; variants interleave within a round.

    Each runs in a CPU session configured like the server's, fed as the server feeds it
    (`validate.OnnxScorer`).
    """
    scorers = {precision: OnnxScorer(path, threads) for precision, path in variants.items()}
    for scorer in scorers.values():  # warm-up
        scorer(batches[0])
    best = {p: float("inf") for p in scorers}
    for _ in range(rounds):
        for precision, scorer in scorers.items():
            start = time.perf_counter()
            for batch in batches:
                scorer(batch)
            best[precision] = min(best[precision], time.perf_counter() - start)
    return best


def choose_int8(results: Mapping[str, GateResult], seconds: Mapping[str, float]) -> dict[str, Any]:
    """The CPU default: the fastest int8 variant among those that pass the gate (passing = equal quality)."""
    candidates = {
        p: {"seconds": seconds[p], "passed": results[p].passed, **{m: results[p].report.get(m) for m in ("auc", "ndcg@10")}}
        for p in seconds
    }
    passing = [p for p in seconds if results[p].passed]
    chosen = min(passing, key=seconds.__getitem__) if passing else min(seconds, key=seconds.__getitem__)
    return {
        "chosen": chosen,
        "rule": (
            "fastest int8 variant on this CPU, in sessions configured like the server's, among those that pass "
            "the validation gate (equal quality)"
        ),
        "candidates": candidates,
    }


# -- report ------------------------------------------------------------------
def summary_table(
    variants: Mapping[str, Path], results: Mapping[str, GateResult], reference: Mapping[str, float]
) -> str:
    """The gate's table: one row per variant (precision, file, size, verdict, metrics), plus the PyTorch reference."""
    header = ("variant", "file", "size (MB)", "gate", "AUC", "NDCG@10")
    rows = [
        (
            "pytorch (reference)", "", "", "",
            f"{reference.get('auc', float('nan')):.4f}", f"{reference.get('ndcg@10', float('nan')):.4f}",
        )
    ]  # fmt: skip
    for precision, path in variants.items():
        result = results.get(precision)
        gate = "-" if result is None else ("pass" if result.passed else "FAIL")
        auc = "" if result is None else f"{result.report.get('auc', float('nan')):.4f}"
        ndcg = "" if result is None else f"{result.report.get('ndcg@10', float('nan')):.4f}"
        rows.append((precision, Path(path).name, f"{Path(path).stat().st_size / 1e6:.1f}", gate, auc, ndcg))
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)) for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- the pipeline ------------------------------------------------------------
def ensure_checkpoint(config: ExportConfig, train_config: TrainConfig) -> None:
    """Train into `<artifacts>/checkpoint` unless a checkpoint is there already (without the training
    report's validation scoring: see below)."""
    if (config.checkpoint_dir / "model.safetensors").exists():
        log.info("checkpoint %s exists: training skipped", config.checkpoint_dir)
        return
    # valid_baskets=0: the gate's PyTorch reference scores `validation_baskets` validation baskets anyway
    # (into the manifest); the training report's own 48 cost ~30 s on 2 cores for the same figures.
    train(dataclasses.replace(train_config, output_dir=config.checkpoint_dir, data_dir=config.data_dir, valid_baskets=0))


def ensure_evaluation(config: ExportConfig, eval_config: EvalConfig) -> dict[str, Any]:
    """The checkpoint's test-split evaluation report, computed unless it is there already."""
    report = config.checkpoint_dir / EVAL_REPORT
    if report.exists():
        log.info("%s exists: evaluation skipped", report)
        return json.loads(report.read_text())
    return evaluate(dataclasses.replace(eval_config, checkpoint=config.checkpoint_dir, data_dir=config.data_dir))


def data_config_of(checkpoint: Checkpoint, fallback: DataConfig) -> DataConfig:
    """The data settings the checkpoint was trained with (validation must use the same samples)."""
    settings = checkpoint.info.get("train_settings", {}).get("data")
    return from_jsonable(DataConfig, settings) if settings is not None else fallback


@dataclasses.dataclass(frozen=True)
class GateOutcome:
    """The gate's verdicts and the CPU int8 variant chosen from them."""

    reference: dict[str, float]
    results: dict[str, GateResult]
    int8_choice: dict[str, Any] | None

    @property
    def default_cpu(self) -> str:
        return self.int8_choice["chosen"] if self.int8_choice else "fp32-optimized"


def gate_variants(
    variants: VariantSet, checkpoint: Checkpoint, validation: Sequence, config: ExportConfig, gate: GateConfig
) -> GateOutcome:
    """Run the validation gate on every variant, then pick the CPU int8 variant (`choose_int8`).

    Does not raise for a failing variant: call `validate.enforce(outcome.results)`.
    """
    reference, results = run_gate(
        variants.paths, checkpoint.model, checkpoint.featurizer, validation, gate, config.batch_size, config.threads
    )
    int8 = {p: variants.paths[p] for p in INT8 if p in variants.paths}
    if config.cpu_default:
        choice = {"chosen": config.cpu_default, "rule": "set by --cpu-default", "candidates": {}}
    elif int8:
        if len(int8) > 1:
            batches = encode_batches(validation, checkpoint.featurizer, config.batch_size)[: config.timing_batches]
            seconds = time_variants(int8, batches, config.timing_rounds, config.threads)
        else:  # one int8 variant (the default: int8 static is not built): nothing to choose between, nothing to time
            seconds = {p: float("nan") for p in int8}
        choice = choose_int8(results, seconds)
        if len(int8) > 1:
            timed = {p: round(c["seconds"], 3) for p, c in choice["candidates"].items()}
            log.info("CPU int8 variant: %s (seconds over the timing batches: %s)", choice["chosen"], timed)
        else:
            log.info("CPU int8 variant: %s (the only int8 variant built, so not timed)", choice["chosen"])
    else:
        choice = None
    return GateOutcome(reference, results, choice)


def bundle_export(
    config: ExportConfig,
    checkpoint: Checkpoint,
    variants: VariantSet,
    outcome: GateOutcome,
    *,
    evaluation: Mapping[str, Any],
    data_fingerprint: str,
    gate: GateConfig,
    ranker: RankerBuild | None = None,
) -> Path:
    """Write the bundle folder of the gated variants (and the ranker's, if built) into `<artifacts>/bundles`.

    The version is the first 12 hex digits of the cross-encoder weights' sha256 or, with the
    ranker, of both weights' sha256s together (`config.version` overrides it). Returns the folder.
    """
    digest = sha256_file(config.checkpoint_dir / "model.safetensors")
    if ranker is not None:
        digest = hashlib.sha256((digest + sha256_file(ranker.weights)).encode()).hexdigest()
    return build_bundle(
        config.artifacts / "bundles",
        name=config.bundle_name,
        version=config.version or digest[:12],
        models=[
            cross_encoder_artifacts(checkpoint, variants, outcome, evaluation, data_fingerprint, config, gate),
            *(ranker.models if ranker is not None else ()),
        ],
        tokenizer_path=config.checkpoint_dir / "tokenizer.json",
        items=checkpoint.items,
        featurizer=checkpoint.featurizer,
        data=ranker.data if ranker is not None else None,
    )


def export(
    config: ExportConfig,
    train_config: TrainConfig = TrainConfig(),
    eval_config: EvalConfig = EvalConfig(),
    quantize: QuantizeConfig = QuantizeConfig(),
    gate: GateConfig = GateConfig(),
    triton: TritonConfig = TritonConfig(),
    ranker_config: RankerConfig = RankerConfig(),
    latency_config: LatencyConfig = LatencyConfig(),
) -> Path:
    """Run every step; returns the bundle folder. Raises `GateFailed` if a variant fails its gate
    (with `config.ranker`, also if a ranker combination fails).

    Writes `<artifacts>/export/export_report.json`: each step's seconds, the bundle's version and size
    (folder and archive), the latency table (`config.latency`) and the ranker's evaluation summary.
    """
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    total = (10 if config.ranker else 9) + (1 if config.latency else 0)
    with _step(1, total, "checkpoint", seconds):
        ensure_checkpoint(config, train_config)
    with _step(2, total, "evaluation on the test split", seconds):
        evaluation = ensure_evaluation(config, eval_config)
    checkpoint = load_checkpoint(config.checkpoint_dir)
    featurizer = checkpoint.featurizer
    with _step(3, total, "validation and calibration samples", seconds):
        data = prepare(data_config_of(checkpoint, train_config.data), cache_dir=config.data_dir)
        validation = sample(data.splits["valid"], config.validation_baskets, config.sample_seed)
        calibration_baskets = sample(data.splits["train"], config.calibration_baskets, config.sample_seed)
        calibration = encode_batches(calibration_baskets, featurizer, quantize.calibration_batch_size)
        calibration = calibration[: max(1, quantize.calibration_pairs // quantize.calibration_batch_size)]
        log.info("%d validation baskets, %d calibration batches", len(validation), len(calibration))
    with _step(4, total, "variants: ONNX export, fusion, quantization, fp16", seconds):
        variants = build_variants(
            checkpoint.model,
            config.artifacts / "export" / "variants",
            config.bundled_precisions,
            calibration,
            featurizer.pad_id,
            quantize,
            config.opset,
        )
    with _step(5, total, "validation gate", seconds):
        outcome = gate_variants(variants, checkpoint, validation, config, gate)
    print(summary_table(variants.paths, outcome.results, outcome.reference))
    enforce(outcome.results)
    ranker = None
    step = 6
    if config.ranker:
        with _step(step, total, "two-tower ranker: train, export, gate, evaluate on the whole test split", seconds):
            ranker = build_ranker(
                data, config.artifacts / "export" / "ranker", ranker_config, gate,
                cross_encoder_scores=config.checkpoint_dir / EVAL_SCORES,
            )
            report_path = config.artifacts / "export" / "ranker" / "ranker_report.json"
            report_path.write_text(json.dumps(to_jsonable(ranker.report), indent=1))
            print(ranker_summary_table(ranker.report))
            log.info("ranker report: %s", report_path)
        step += 1
    with _step(step, total, "bundle folder", seconds):
        root = bundle_export(
            config, checkpoint, variants, outcome, evaluation=evaluation, data_fingerprint=data.fingerprint, gate=gate,
            ranker=ranker,
        )
    with _step(step + 1, total, "TensorRT engine cache", seconds):
        build_engine_cache(root, CROSS_ENCODER.name)
    with _step(step + 2, total, "archive", seconds):
        archive = pack_bundle(root)
        size = {"folder_mb": round(folder_bytes(root) / 1e6, 1), "archive_mb": round(archive.stat().st_size / 1e6, 1)}
        log.info("bundle %s (%.1f MB), archive %s (%.1f MB)", root, size["folder_mb"], archive, size["archive_mb"])
    with _step(step + 3, total, "Triton model repository", seconds):
        folder = write_repository(config.artifacts / "triton", config.bundle_name, variants.paths[outcome.default_cpu], triton)
        log.info("Triton model repository: %s", folder)
    latency = None
    if config.latency:
        with _step(step + 4, total, "offline latency of the served variants", seconds):
            latency = measure_latency(root, main_only(data.splits["test"]), latency_config)
            print(latency["markdown"])
    report = {
        "step_seconds": seconds,
        "total_seconds": round(time.perf_counter() - started, 1),
        "bundle": {
            "folder": str(root), "archive": str(archive), "version": root.name.rsplit("-", 1)[-1],
            "cpu_only": config.cpu_only, "cross_encoder_variants": list(variants.paths), **size,
        },
        "latency": latency,
        "ranker": None if ranker is None else {
            "timings": ranker.report["timings"], "evaluation_summary": ranker_summary_table(ranker.report),
        },
    }
    report_path = config.artifacts / "export" / "export_report.json"
    report_path.write_text(json.dumps(to_jsonable(report), indent=1))
    log.info("export report: %s (total %.1f s)", report_path, report["total_seconds"])
    return root


# What the cross-encoder's outputs mean, in output order (the names come from its signature).
OUTPUT_SEMANTICS = (
    "sigmoid of the purchase logit, inside the graph",
    "exp of the predicted log quantity (units expected if bought), inside the graph",
)


def cross_encoder_artifacts(
    checkpoint: Checkpoint,
    variants: VariantSet,
    outcome: GateOutcome,
    evaluation: Mapping[str, Any],
    fingerprint: str,
    config: ExportConfig,
    gate: GateConfig,
) -> ModelFiles:
    """The cross-encoder as the bundle holds it: its gated variants, default variants and descriptive keys."""
    info = dict(checkpoint.info)
    if info.get("data_fingerprint") not in (None, fingerprint):
        log.warning("the checkpoint was trained on data %s, validated here on %s", info.get("data_fingerprint"), fingerprint)
    paths = variants.paths
    fp32_size = paths["fp32"].stat().st_size if "fp32" in paths else None
    description = {
        "output_semantics": dict(zip(CROSS_ENCODER.output_names, OUTPUT_SEMANTICS)),
        "opset": variants.export.opset,
        "exporter": variants.export.exporter,
        "precision": {p: p.split("-")[0] for p in paths},
        "derived_from": dict(variants.sources),
        "metrics": {
            "training": {**info.get("training", {}), **_train_report_summary(config.checkpoint_dir)},
            "evaluation": {key: evaluation.get(key) for key in ("split", "sizes", "results", "timings")},
            "validation": {"pytorch": outcome.reference, "baskets": config.validation_baskets},
        },
        "base_model": info.get("base_model"),
        "num_layers": checkpoint.model.config.num_hidden_layers,
        VOCAB_SIZE: checkpoint.model.config.vocab_size,  # ids the model embeds; the server checks the tokenizer against it
        "gate": {"bounds": gate, "passed": all(r.passed for r in outcome.results.values())},
        "data_fingerprint": info.get("data_fingerprint", fingerprint),
        "fusions": {
            "fused": variants.optimize.fused,
            "expected": expected_fusions(checkpoint.model.config.num_hidden_layers),
            "nodes_before": variants.optimize.nodes_before,
            "nodes_after": variants.optimize.nodes_after,
            "findings": list(variants.optimize.findings),
        },
        "int8_choice": outcome.int8_choice,
        "cpu_only": config.cpu_only,  # GPU-only variants (fp16) left out; the GPU default is then fp32
        "sizes_mb": {p: round(path.stat().st_size / 1e6, 2) for p, path in paths.items()},
        "int8_size_ratio": {p: round(paths[p].stat().st_size / fp32_size, 4) for p in INT8 if p in paths and fp32_size},
    }
    return ModelFiles(
        name=CROSS_ENCODER.name,
        signature=CROSS_ENCODER,
        variants=dict(paths),
        default_variant={"cpu": outcome.default_cpu, "gpu": "fp16" if "fp16" in paths else "fp32"},
        gates={p: outcome.results[p].as_manifest() for p in paths},
        info=description,
    )


def _train_report_summary(checkpoint_dir: Path) -> dict[str, Any]:
    """Timings and sample counts from `train_report.json` (not its per-step loss curve)."""
    path = checkpoint_dir / "train_report.json"
    if not path.exists():
        return {}
    report = json.loads(path.read_text())
    return {key: report[key] for key in ("final_loss", "samples", "timings") if key in report}


# -- command line --------------------------------------------------------------
SECTIONS = (("", ExportConfig), ("quant_", QuantizeConfig), ("gate_", GateConfig), ("triton_", TritonConfig))


def configure(parser: argparse.ArgumentParser) -> None:
    for prefix, cls in SECTIONS:
        add_arguments(parser, cls, prefix)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("edgerec").setLevel(logging.INFO)  # our steps; libraries stay at WARNING
    config, quantize, gate, triton = (from_arguments(cls, args, prefix) for prefix, cls in SECTIONS)
    try:
        root = export(config, TrainConfig(), EvalConfig(), quantize, gate, triton)
    except GateFailed as exc:
        print(f"edgerec export: {exc}", file=sys.stderr)
        return 1
    print(f"bundle: {root}")
    return 0
