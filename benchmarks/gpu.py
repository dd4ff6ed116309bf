"""`edgerec bench-gpu`: both models in PyTorch on a CUDA GPU, fp32/fp16/bf16, eager and CUDA graphs.

Why it exists: the lendable GPU machine has PyTorch CUDA but neither
onnxruntime-gpu nor TensorRT, so PyTorch is the GPU engine that can be timed
there. One command of at most 8 minutes measures:
- the cross-encoder (`export/model.py`, served form: probability and
  quantity) over a batch x sequence grid;
- the two-tower ranker's user side + head (`export/ranker.py`
  `TwoTowerRanker.score`; item embeddings are precomputed, so no BERT) for
  100 candidates and for the whole catalog, per number of customers a call;
each in fp32 (the reference), fp16 and bf16, run eagerly and replayed from a
CUDA graph captured once per shape (`torch.cuda.CUDAGraph`; chosen over
`torch.compile(mode="reduce-overhead")` because capture takes milliseconds
and nothing is compiled per shape, so the whole grid fits the budget).

Per cell: p50/p99 latency of one call (inputs already on the device, host
copies excluded, synchronised after every call), rows/s (pairs, or customer x
candidate rows) and the largest |Δ probability| and relative Δ quantity
against fp32 eager on the same inputs.

Weights: the trained checkpoints when present (`artifacts/checkpoint`,
`artifacts/export/ranker/checkpoint`), else random weights of the same
architecture, recorded in the JSON (latency does not depend on the weights'
values; agreement figures are then on random weights). The random path needs
nothing but this repository: the pretrained MiniLM's architecture is below.

A time guard starts no cell once `budget_s` has passed and records each cell
it skipped. Without CUDA (the default device) the run says so, writes a
results.json recording the skip and why, and exits 0; `--device cpu` runs the
whole path on the CPU (CUDA graph cells are recorded as skipped there), which
the tests do with `--tiny` models and a small grid.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgerec.core.settings import (
    add_arguments,
    dump_json,
    from_arguments,
    setting,
    to_jsonable,
)

DTYPES = ("fp32", "fp16", "bf16")
MODES = ("eager", "cuda-graph")
RESULTS = "results.json"
CATALOG_ITEMS = 3659  # the shop's catalog (the export's items.json)
# all-MiniLM-L6-v2's config.json (the pretrained BERT, ../shared/FACTS.md): random weights need no package or file.
MINILM = {
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "hidden_act": "gelu",
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}
CROSS_ENCODER_LAYERS = 2  # `edgerec train`'s default (TrainConfig.num_layers)
CROSS_ENCODER_POOLING = "candidate_mean"  # TrainConfig.pooling's default
CLS, SEP = 101, 102  # the tokenizer's [CLS] and [SEP] ids


@dataclasses.dataclass(frozen=True)
class GpuBenchConfig:
    """Every setting of `edgerec bench-gpu`, with its default."""

    device: str = setting(
        "cuda",
        "cuda: the GPU (where none is present the run is skipped, the reason recorded, exit 0); "
        "cpu: the whole path on the CPU, CUDA graph cells skipped (tests, with --tiny and a small grid)",
    )
    output_dir: Path = setting(Path("artifacts/bench-gpu"), "folder for results.json and the plots")
    checkpoint: Path = setting(
        Path("artifacts/checkpoint"), "cross-encoder checkpoint; random weights of the same architecture if absent"
    )
    ranker_dir: Path = setting(
        Path("artifacts/export/ranker/checkpoint"),
        "ranker.json + ranker.safetensors of `make export EXPORT_FLAGS=--ranker`; random weights if absent",
    )
    tiny: bool = setting(False, "tiny random models (2 layers, 32 wide) instead of the real architecture (tests)")
    attention: str = setting(
        "sdpa",
        "BERT attention kernel: sdpa (PyTorch's fused attention, what a GPU would serve) or eager "
        "(the implementation the ONNX export traces)",
    )
    dtypes: tuple[str, ...] = setting(DTYPES, "precisions (fp32, fp16, bf16); fp32 eager always runs, as the reference")
    modes: tuple[str, ...] = setting(MODES, "eager and/or cuda-graph (one torch.cuda.CUDAGraph captured per shape)")
    batch_sizes: tuple[int, ...] = setting((1, 8, 32, 128, 512), "cross-encoder: pairs per call")
    sequence_lengths: tuple[int, ...] = setting((32, 64, 128), "cross-encoder: tokens per pair (every pair this long)")
    ranker_customers: tuple[int, ...] = setting((1, 8, 32), "ranker: customers per call")
    ranker_candidates: tuple[int, ...] = setting(
        (100, CATALOG_ITEMS), f"ranker: candidates per customer (100, and the whole catalog: {CATALOG_ITEMS})"
    )
    ranker_history: int = setting(200, "ranker: history slots per customer (RankerConfig.max_history, the cap)")
    warmup_runs: int = setting(3, "untimed calls before each cell is timed")
    min_rounds: int = setting(10, "timed calls per cell at least")
    max_rounds: int = setting(2000, "timed calls per cell at most")
    seconds_per_cell: float = setting(0.75, "time budget of one cell's timed calls (past min_rounds)")
    budget_s: float = setting(
        400.0,
        "no cell starts once this many seconds have passed since the start (the command must end within 8 "
        "minutes: this leaves room for start-up, the last cell and the plots); skipped cells are recorded",
    )
    seed: int = setting(0, "seed of the random weights and inputs")


def configure(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, GpuBenchConfig)


def run(args: argparse.Namespace) -> int:
    return bench(from_arguments(GpuBenchConfig, args))


# -- the run ----------------------------------------------------------------------------------------------


class Clock:
    """Seconds since the run started, and whether another cell may start."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def over(self) -> bool:
        return self.elapsed() >= self.budget_s


def cuda_absent_reason() -> str:
    """Why there is no CUDA device here ("" where there is one)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        build = torch.version.cuda or "none (a CPU-only build)"
        return f"no CUDA device is present (torch {torch.__version__}, CUDA build: {build}; torch.cuda.is_available() is False)"
    return ""


def machine() -> dict[str, Any]:
    try:
        from edgerec.benchmarks.machine import describe_machine

        return describe_machine()
    except Exception as exc:  # noqa: BLE001 - the description is context, never a reason to fail the run
        return {"error": f"{type(exc).__name__}: {exc}"}


def bench(config: GpuBenchConfig) -> int:
    """Run the grid (or record why not) and write results.json and the plots; returns the exit status."""
    unknown = [d for d in config.dtypes if d not in DTYPES] + [m for m in config.modes if m not in MODES]
    if unknown or config.device not in ("cuda", "cpu") or config.attention not in ("sdpa", "eager"):
        raise SystemExit(f"edgerec bench-gpu: unknown dtype, mode, device or attention: {unknown or config}")
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": to_jsonable(config),
    }
    reason = cuda_absent_reason() if config.device == "cuda" else ""
    if reason:
        print(f"edgerec bench-gpu: {reason}: the GPU benchmark is skipped (nothing measured); see {output / RESULTS}")
        results.update(status="skipped", reason=reason, machine=machine())
        dump_json(output / RESULTS, results)
        return 0

    import torch

    clock = Clock(config.budget_s)
    device = torch.device(config.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 is the reference: true fp32 matrix products
    torch.backends.cudnn.allow_tf32 = False
    print(f"edgerec bench-gpu on {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU'})")
    cells: list[dict[str, Any]] = []

    def save_partial(new_cells: Sequence[dict[str, Any]]) -> None:
        """After each shape: what is measured so far survives a run killed from outside."""
        cells.extend(new_cells)
        dump_json(output / RESULTS, {**results, "status": "incomplete", "cells": cells})

    with torch.no_grad():  # no_grad, not inference_mode: the documented context for CUDA graph capture
        encoder, encoder_info = cross_encoder(config)
        results["weights"] = {"cross_encoder": encoder_info}
        cross_encoder_grid(encoder, config, device, clock, save_partial)
        del encoder
        ranker, ranker_info = two_tower_ranker(config)
        ranker_grid(ranker, config, device, clock, save_partial)
    measured = [c for c in cells if c["status"] == "measured"]
    results.update(
        status="completed",
        machine=machine(),
        torch=torch.__version__,
        weights={"cross_encoder": encoder_info, "ranker": ranker_info},
        method={
            "latency": "one call, inputs already on the device (host copies excluded), synchronised after each call",
            "rows_per_s": "rows per call x timed calls / their summed latency (cross-encoder: pairs; ranker: "
            "customers x candidates)",
            "agreement": "largest |probability - fp32 eager probability| over the cell's rows, same inputs; "
            "quantity: largest relative difference",
            "cuda_graph": "torch.cuda.CUDAGraph captured once per shape and dtype (after warm-up on a side stream), "
            "replayed on static inputs",
            "fp32": "TF32 off (true fp32 products)",
            "attention_mask": "with an all-ones mask, transformers drops the mask in eager calls (one host sync per "
            "call to check it) but keeps it while a CUDA graph is captured (no sync there), so with sdpa the two "
            "modes may run different attention kernels; that is how each would be served",
            "inputs": "cross-encoder: random token ids, every pair exactly the sequence length, context then "
            "candidate segment; ranker: random item embeddings (the catalog), histories of random length up to "
            "ranker_history, random behaviour features in [0, 1]",
        },
        cells=cells,
        counts={s: sum(c["status"] == s for c in cells) for s in ("measured", "skipped", "failed")},
        elapsed_s=round(clock.elapsed(), 1),
    )
    results["plots"] = write_plots(cells, output)
    dump_json(output / RESULTS, results)
    print(summary(cells))
    print(f"{len(measured)} of {len(cells)} cells measured in {clock.elapsed():.0f} s; {output / RESULTS}")
    return 0


# -- the models ---------------------------------------------------------------------------------------------


def cross_encoder(config: GpuBenchConfig):
    """The served cross-encoder (`ScoringModel`, fp32, on the CPU) and where its weights came from."""
    import torch
    from edgerec.export.model import CrossEncoderRecommender, ScoringModel, tiny_config
    from safetensors.torch import load_file
    from transformers import BertConfig

    checkpoint = Path(config.checkpoint)
    torch.manual_seed(config.seed)
    if config.tiny:
        bert = tiny_config()
        bert.edgerec_pooling = CROSS_ENCODER_POOLING
        info = {"weights": "random", "architecture": "tiny (tests)"}
        model = CrossEncoderRecommender(bert)
    elif (checkpoint / "model.safetensors").exists() and (checkpoint / "config.json").exists():
        bert = BertConfig.from_json_file(str(checkpoint / "config.json"))
        model = CrossEncoderRecommender(bert)
        model.load_state_dict(load_file(str(checkpoint / "model.safetensors")))
        info = {"weights": "trained", "checkpoint": str(checkpoint)}
    else:
        bert = BertConfig(**{**MINILM, "num_hidden_layers": CROSS_ENCODER_LAYERS})
        bert.edgerec_pooling = CROSS_ENCODER_POOLING
        model = CrossEncoderRecommender(bert)
        info = {
            "weights": "random",
            "why": f"no checkpoint at {checkpoint}",
            "architecture": f"all-MiniLM-L6-v2 cut to {CROSS_ENCODER_LAYERS} layers, {CROSS_ENCODER_POOLING} pooling",
            "note": "latency does not depend on the weights' values; agreement figures are on random weights",
        }
    model.encoder.config._attn_implementation = config.attention  # read by every attention layer at call time
    info.update(
        layers=model.config.num_hidden_layers,
        hidden=model.config.hidden_size,
        pooling=model.pooling,
        attention=config.attention,
        parameters=sum(p.numel() for p in model.parameters()),
    )
    return ScoringModel(model).eval(), info


def scorer(ranker):
    """`TwoTowerRanker.score` as a module of its own, so it is cast, copied and called like the cross-encoder."""
    import torch

    class RankerScorer(torch.nn.Module):
        def __init__(self, ranker) -> None:
            super().__init__()
            self.ranker = ranker

        def forward(self, *inputs):
            return self.ranker.score(*inputs)

    return RankerScorer(ranker)


def two_tower_ranker(config: GpuBenchConfig):
    """The ranker's user side + head (fp32, on the CPU) and where its weights came from."""
    import torch
    from edgerec.export.ranker import TwoTowerRanker, load_ranker

    folder = Path(config.ranker_dir)
    torch.manual_seed(config.seed)
    if config.tiny:
        model = TwoTowerRanker(item_dim=32, proj_dim=8, hidden=16).eval()
        info = {"weights": "random", "architecture": "tiny (tests)"}
    elif (folder / "ranker.json").exists() and (folder / "ranker.safetensors").exists():
        model = load_ranker(folder)
        info = {"weights": "trained", "checkpoint": str(folder)}
    else:
        model = TwoTowerRanker(item_dim=MINILM["hidden_size"]).eval()  # its defaults are RankerConfig's
        info = {
            "weights": "random",
            "why": f"no ranker at {folder}",
            "note": "latency does not depend on the weights' values; agreement figures are on random weights",
        }
    info.update(hparams=dict(model.hparams), parameters=sum(p.numel() for p in model.parameters()))
    return scorer(model).eval(), info


# -- inputs ---------------------------------------------------------------------------------------------------


def pair_inputs(batch: int, length: int, vocab: int, generator) -> tuple:
    """(input_ids, attention_mask, token_type_ids), int64 [batch, length]: `[CLS] context [SEP] candidate [SEP]`."""
    import torch

    ids = torch.randint(1000, vocab, (batch, length), generator=generator)
    middle = max(1, length // 2)
    ids[:, 0], ids[:, middle - 1], ids[:, -1] = CLS, SEP, SEP
    types = torch.zeros(batch, length, dtype=torch.long)
    types[:, middle:] = 1
    return ids, torch.ones(batch, length, dtype=torch.long), types


def ranker_inputs(catalog, customers: int, candidates: int, history: int, features: int, generator) -> tuple:
    """(history, counts, days, mask, items, features) for `TwoTowerRanker.forward`, float32 and bool."""
    import torch

    size, _ = catalog.shape
    past = torch.randint(0, size, (customers, history), generator=generator)
    lengths = torch.randint(1, history + 1, (customers,), generator=generator)
    lengths[0] = history  # the first customer has a full history: the widest case is always in the batch
    mask = torch.arange(history).unsqueeze(0) < lengths.unsqueeze(1)
    counts = torch.randint(1, 11, (customers, history), generator=generator).float()
    days = torch.rand(customers, history, generator=generator) * 365.0
    if candidates >= size:  # the whole catalog
        chosen = torch.arange(size).repeat(math.ceil(candidates / size))[:candidates].expand(customers, -1)
    else:
        chosen = torch.stack([torch.randperm(size, generator=generator)[:candidates] for _ in range(customers)])
    items = catalog[chosen].contiguous()  # [B, N, D], gathered as serving gathers the catalog rows
    behaviour = torch.rand(customers, candidates, features, generator=generator)
    return catalog[past].contiguous(), counts, days, mask, items, behaviour


def cast_inputs(inputs: Sequence, device, dtype) -> tuple:
    """Inputs on the device; floating ones in the model's dtype."""
    return tuple(t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device) for t in inputs)


# -- timing ---------------------------------------------------------------------------------------------------


def time_calls(call: Callable[[], Any], sync: Callable[[], None], config: GpuBenchConfig) -> list[float]:
    """Seconds of each timed call: at least min_rounds, then until seconds_per_cell or max_rounds."""
    for _ in range(config.warmup_runs):
        call()
    sync()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < config.max_rounds and (
        len(times) < config.min_rounds or time.perf_counter() - started < config.seconds_per_cell
    ):
        mark = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - mark)
    return times


def graph_call(model, inputs: tuple, warmup: int) -> tuple[Callable[[], tuple], Any]:
    """A CUDA graph of `model(*inputs)` captured once: (replay -> its static outputs, the graph)."""
    import torch

    static = tuple(t.clone() for t in inputs)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as torch's CUDA graph notes advise
        for _ in range(max(1, warmup)):
            model(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = model(*static)

    def replay() -> tuple:
        graph.replay()
        return outputs

    return replay, graph


def agreement(outputs: tuple, reference: tuple) -> dict[str, float]:
    """Largest |Δ probability| and largest relative Δ quantity against the fp32 reference."""
    probability, quantity = (o.float().cpu() for o in outputs)
    ref_probability, ref_quantity = reference
    return {
        "max_abs_diff_probability": float((probability - ref_probability).abs().max()),
        "max_rel_diff_quantity": float(((quantity - ref_quantity).abs() / ref_quantity.abs().clamp(min=1e-12)).max()),
    }


def measure_shape(
    models: Mapping[str, Any],
    inputs: tuple,
    rows: int,
    base: dict[str, Any],
    config: GpuBenchConfig,
    device,
    clock: Clock,
) -> list[dict[str, Any]]:
    """Every (dtype, mode) cell of one shape: fp32 eager first (the reference), then the others."""
    import torch

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    variants = [(d, m) for d in DTYPES if d in config.dtypes or d == "fp32" for m in MODES if m in config.modes]
    if ("fp32", "eager") not in variants:
        variants.insert(0, ("fp32", "eager"))
    cells, reference = [], None
    for dtype_name, mode in variants:
        cell = {**base, "dtype": dtype_name, "mode": mode, "rows_per_call": rows}
        cells.append(cell)
        if mode == "cuda-graph" and not cuda:
            cell.update(status="skipped", reason="CUDA graphs need a CUDA device")
            continue
        if clock.over():
            cell.update(status="skipped", reason=f"time budget: {clock.elapsed():.0f} s of {clock.budget_s:.0f} s used")
            continue
        if reference is None and (dtype_name, mode) != ("fp32", "eager"):
            cell.update(status="skipped", reason="no fp32 eager reference for this shape (it failed)")
            continue
        call = graph = outputs = feeds = None
        try:
            model = models[dtype_name]
            feeds = cast_inputs(inputs, device, model.dtype)
            if mode == "eager":
                call = functools.partial(model, *feeds)
            else:
                call, graph = graph_call(model, feeds, config.warmup_runs)
            outputs = call()
            sync()
            if reference is None:
                reference = tuple(o.float().cpu() for o in outputs)
            times = time_calls(call, sync, config)
            latency_ms = np.asarray(times) * 1e3
            cell.update(
                status="measured",
                rounds=len(times),
                p50_ms=float(np.percentile(latency_ms, 50)),
                p99_ms=float(np.percentile(latency_ms, 99)),
                mean_ms=float(latency_ms.mean()),
                rows_per_s=rows * len(times) / float(np.sum(times)),
                **agreement(outputs if mode == "eager" else call(), reference),
            )
        except Exception as exc:  # noqa: BLE001 - one failed cell (memory, capture) must not end the grid
            cell.update(status="failed", reason=f"{type(exc).__name__}: {str(exc)[:300]}")
        finally:
            del call, graph, outputs, feeds  # the graph (and its memory pool) goes before the next cell
            if cuda:
                try:
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                except Exception:  # noqa: BLE001 - a broken context shows in the next cell's own failure
                    pass
    return cells


def typed_copies(model, config: GpuBenchConfig, device) -> dict[str, Any]:
    """The model in each precision on the device, each with a `dtype` attribute."""
    import torch

    torch_dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    copies = {}
    for name in DTYPES:
        if name in config.dtypes or name == "fp32":
            copies[name] = copy.deepcopy(model).to(device=device, dtype=torch_dtypes[name]).eval()
            copies[name].dtype = torch_dtypes[name]
    return copies


def cross_encoder_grid(model, config: GpuBenchConfig, device, clock: Clock, save: Callable) -> None:
    import torch

    models = typed_copies(model, config, device)
    vocab = model.model.config.vocab_size
    for length in config.sequence_lengths:
        for batch in config.batch_sizes:
            generator = torch.Generator().manual_seed(config.seed + 1000 * length + batch)
            inputs = pair_inputs(batch, length, vocab, generator)
            base = {"model": "cross_encoder", "batch": batch, "sequence_length": length}
            cells = measure_shape(models, inputs, batch, base, config, device, clock)
            save(cells)
            print(progress(cells, clock))


def ranker_grid(model, config: GpuBenchConfig, device, clock: Clock, save: Callable) -> None:
    import torch

    models = typed_copies(model, config, device)
    hparams = model.ranker.hparams
    generator = torch.Generator().manual_seed(config.seed)
    catalog = torch.randn(max(config.ranker_candidates), hparams["item_dim"], generator=generator)  # the largest N is the catalog
    for candidates in config.ranker_candidates:
        for customers in config.ranker_customers:
            features = hparams["num_features"]
            inputs = ranker_inputs(catalog, customers, candidates, config.ranker_history, features, generator)
            base = {"model": "ranker", "customers": customers, "candidates": candidates, "history": config.ranker_history}
            cells = measure_shape(models, inputs, customers * candidates, base, config, device, clock)
            save(cells)
            print(progress(cells, clock))


def progress(cells: Sequence[Mapping[str, Any]], clock: Clock) -> str:
    """One line for one shape's cells."""
    last = cells[-1]
    shape = (
        f"batch {last['batch']} x seq {last['sequence_length']}"
        if last["model"] == "cross_encoder"
        else f"{last['customers']} customers x {last['candidates']} candidates"
    )
    parts = []
    for cell in cells:
        figure = f"{cell['p50_ms']:.3f} ms" if cell["status"] == "measured" else cell["status"]
        parts.append(f"{cell['dtype']}/{cell['mode']} {figure}")
    return f"[{clock.elapsed():5.0f} s] {last['model']} {shape}: " + ", ".join(parts)


# -- the report -----------------------------------------------------------------------------------------------


def summary(cells: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table of the measured cells."""
    lines = [f"{'model':<14}{'shape':<22}{'dtype':<6}{'mode':<11}{'p50 ms':>9}{'p99 ms':>9}{'rows/s':>13}{'max|Δp|':>10}"]
    for c in cells:
        shape = f"b{c['batch']} s{c['sequence_length']}" if c["model"] == "cross_encoder" else f"u{c['customers']} n{c['candidates']}"
        if c["status"] != "measured":
            lines.append(f"{c['model']:<14}{shape:<22}{c['dtype']:<6}{c['mode']:<11}  {c['status']}: {c['reason']}")
            continue
        lines.append(
            f"{c['model']:<14}{shape:<22}{c['dtype']:<6}{c['mode']:<11}{c['p50_ms']:>9.3f}{c['p99_ms']:>9.3f}"
            f"{c['rows_per_s']:>13,.0f}{c['max_abs_diff_probability']:>10.1e}"
        )
    return "\n".join(lines)


VARIANT_STYLE = {"eager": "-", "cuda-graph": "--"}
DTYPE_COLOR = {"fp32": "tab:blue", "fp16": "tab:orange", "bf16": "tab:green"}


def write_plots(cells: Sequence[Mapping[str, Any]], output: Path) -> list[str] | dict[str, str]:
    """PNG plots of the measured cells (file names), or why none were drawn."""
    try:
        from edgerec.benchmarks import plots  # matplotlib, Agg backend
    except ImportError as exc:
        return {"skipped": f"matplotlib is not importable: {exc}"}
    measured = [c for c in cells if c["status"] == "measured"]
    written = []
    for name, x_key, panel_key, x_label, panel_label in (
        ("cross_encoder", "batch", "sequence_length", "pairs per call (batch)", "sequence length"),
        ("ranker", "customers", "candidates", "customers per call", "candidates per customer"),
    ):
        mine = [c for c in measured if c["model"] == name]
        if mine:
            path = output / f"{name}_latency_throughput.png"
            grid_plot(plots, mine, x_key, panel_key, x_label, panel_label, name.replace("_", "-"), path)
            written.append(path.name)
    if any(c["dtype"] != "fp32" for c in measured):
        path = output / "agreement.png"
        agreement_plot(plots, measured, path)
        written.append(path.name)
    return written


def grid_plot(plots, cells, x_key, panel_key, x_label, panel_label, title, path: Path) -> None:
    """p50 latency (top) and rows/s (bottom) against the batch, one column per panel value, one line per variant."""
    plt = plots.plt
    panels = sorted({c[panel_key] for c in cells})
    figure, axes = plt.subplots(2, len(panels), figsize=(max(8.0, 4.6 * len(panels)), 8.0), squeeze=False)
    for column, value in enumerate(panels):
        for dtype in DTYPES:
            for mode in MODES:
                line = sorted((c for c in cells if c[panel_key] == value and c["dtype"] == dtype and c["mode"] == mode),
                              key=lambda c: c[x_key])  # fmt: skip
                if not line:
                    continue
                x = [c[x_key] for c in line]
                style = {"color": DTYPE_COLOR[dtype], "linestyle": VARIANT_STYLE[mode], "marker": "o"}
                axes[0][column].plot(x, [c["p50_ms"] for c in line], label=f"{dtype} {mode}", **style)
                axes[1][column].plot(x, [c["rows_per_s"] for c in line], label=f"{dtype} {mode}", **style)
        for row, label in ((0, "p50 latency per call (ms, log)"), (1, "rows per second (log)")):
            plots._log_axes(axes[row][column])
            axes[row][column].set_xticks(sorted({c[x_key] for c in cells}))
            axes[row][column].set_xlabel(f"{x_label} (log)")
            axes[row][column].set_ylabel(label)
        axes[0][column].set_title(f"{panel_label} {value}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(6, max(1, len(labels))), fontsize=8, frameon=False)
    figure.suptitle(f"{title} on PyTorch: p50 latency and rows/s (solid: eager, dashed: CUDA graph)")
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def agreement_plot(plots, cells, path: Path) -> None:
    """Largest |Δ probability| against fp32 per cell, against the rows per call, per model and precision."""
    plt = plots.plt
    figure, axis = plt.subplots(figsize=(8, 5))
    floor = 1e-9  # a zero difference is drawn here (log axis)
    for model, marker in (("cross_encoder", "o"), ("ranker", "s")):
        for dtype in DTYPES[1:]:
            for mode in MODES:
                mine = [c for c in cells if c["model"] == model and c["dtype"] == dtype and c["mode"] == mode]
                if mine:
                    axis.scatter([c["rows_per_call"] for c in mine],
                                 [max(c["max_abs_diff_probability"], floor) for c in mine],
                                 color=DTYPE_COLOR[dtype], marker=marker, alpha=0.5 if mode == "cuda-graph" else 0.9,
                                 label=f"{model} {dtype} {mode}")  # fmt: skip
    plots._log_axes(axis)
    axis.set_xlabel("rows per call (log)")
    axis.set_ylabel("max |probability - fp32 probability| (log)")
    axis.set_title("Agreement with fp32 eager, per cell (same inputs)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
