"""The physical limit: how many pairs per second the hardware could score at best.

A measured speed means little without the ceiling it is measured against.
One forward pass of the BERT cross-encoder costs a known number of
floating-point operations (from the model's config); the CPU can do at most
cores x clock x operations-per-cycle of them per second. Their ratio is the
best pairs/s any runner could reach; each runner's share of it shows how much
headroom is left.

The peak is an estimate, documented here and recorded with the results:
- fp32: cores x GHz x FLOP/cycle/core, where FLOP/cycle comes from the widest
  fused multiply-add the CPU has: 2 FMA pipes x (16 fp32 lanes with AVX-512,
  8 with AVX2) x 2 operations (multiply and add) = 64 or 32; 8 without FMA.
- int8: AVX-512 VNNI (or AVX-VNNI) multiplies-and-accumulates four int8
  pairs per fp32 lane in one instruction: 4x the fp32 peak. Without VNNI,
  AVX2 needs two instructions (vpmaddubsw, vpmaddwd) per four pairs: 2x.
- the clock is the nominal frequency the OS reports; boost clocks can be
  higher, so a real runner may come close to, but should not pass, this line.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from edgerec.core.sessions import cpu_flags, has_vnni


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """What the FLOP count of a BERT encoder depends on."""

    layers: int
    hidden: int
    intermediate: int

    @classmethod
    def from_config_file(cls, path: Path) -> "ModelShape":
        """Read a Hugging Face BERT `config.json` (no transformers import needed)."""
        config = json.loads(Path(path).read_text())
        return cls(config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"])

    def flops_per_pair(self, sequence_length: int) -> float:
        """FLOPs of one pair's forward pass (2 per multiply-accumulate).

        Per layer: Q, K, V and output projections 4·s·h², the feed-forward
        2·s·h·i, attention scores and their weighted sum 2·s²·h
        multiply-accumulates. Embeddings, LayerNorms, softmax and the heads
        are a fraction of a percent and are left out.
        """
        s, h, i = sequence_length, self.hidden, self.intermediate
        macs_per_layer = 4 * s * h * h + 2 * s * h * i + 2 * s * s * h
        return 2.0 * self.layers * macs_per_layer


@dataclasses.dataclass(frozen=True)
class PeakEstimate:
    """The CPU's estimated peak operations per second, and how it was estimated."""

    cores: int
    ghz: float
    fp32_flops_per_cycle: int
    int8_factor: float
    instruction_set: str

    @property
    def fp32_gflops(self) -> float:
        return self.cores * self.ghz * self.fp32_flops_per_cycle

    @property
    def int8_gops(self) -> float:
        return self.fp32_gflops * self.int8_factor

    def peak_gops(self, precision: str) -> float:
        """The ceiling for a runner of `precision` (int8 variants: the int8 peak)."""
        return self.int8_gops if precision.startswith("int8") else self.fp32_gflops

    def as_json(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "fp32_gflops": self.fp32_gflops,
            "int8_gops": self.int8_gops,
            "basis": (
                f"{self.cores} cores x {self.ghz:.2f} GHz x {self.fp32_flops_per_cycle} fp32 FLOP/cycle "
                f"({self.instruction_set}); int8 {self.int8_factor:g}x fp32"
            ),
        }


def cpu_ghz() -> float:
    """The nominal clock: psutil's max frequency, else the current one, else /proc/cpuinfo's."""
    frequency = psutil.cpu_freq()
    if frequency is not None and (frequency.max or frequency.current):
        return (frequency.max or frequency.current) / 1000.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1]) / 1000.0
    except OSError:
        pass
    return 2.0


def estimate_peak(cores: int | None = None, ghz: float | None = None, flags: set[str] | None = None) -> PeakEstimate:
    """The peak of this machine (or of the given cores, clock and flags)."""
    flags = cpu_flags() if flags is None else flags
    cores = cores or psutil.cpu_count(logical=False) or os.cpu_count() or 1
    ghz = ghz or cpu_ghz()
    if "avx512f" in flags:
        per_cycle, isa = 64, "AVX-512 FMA"
    elif "avx2" in flags and "fma" in flags:
        per_cycle, isa = 32, "AVX2 FMA"
    else:
        per_cycle, isa = 8, "SSE"
    vnni = has_vnni(flags)
    int8_factor = 4.0 if vnni else 2.0
    isa += ", VNNI" if vnni else ", no VNNI"
    return PeakEstimate(
        cores=cores, ghz=round(ghz, 3), fp32_flops_per_cycle=per_cycle, int8_factor=int8_factor, instruction_set=isa
    )


def limits_table(shape: ModelShape, peak: PeakEstimate, lengths: Sequence[int]) -> dict[str, Any]:
    """The model's shape and, per sequence length, its GFLOP per pair and the pairs/s the peak allows."""
    per_length = {}
    for length in sorted(lengths):
        flops = shape.flops_per_pair(length)
        per_length[str(length)] = {
            "gflop_per_pair": flops / 1e9,
            "fp32_limit_pairs_per_s": peak.fp32_gflops * 1e9 / flops,
            "int8_limit_pairs_per_s": peak.int8_gops * 1e9 / flops,
        }
    return {**dataclasses.asdict(shape), "per_sequence_length": per_length}
