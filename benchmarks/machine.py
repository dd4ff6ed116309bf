"""A description of the machine a benchmark ran on, stored with its results.

Numbers from two machines are only comparable with the machines beside them:
CPU model, cores, memory, GPU, the versions of every library in the timed
path and the ONNX Runtime providers this install offers.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

import onnxruntime as ort
import psutil

from edgerec.core.sessions import cpu_flags

LIBRARIES = (
    "edgerec",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnx",
    "torch",
    "transformers",
    "tokenizers",
    "numpy",
    "grpcio",
    "protobuf",
    "prometheus-client",
)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def gpu_description() -> dict[str, Any]:
    """The CUDA GPU torch sees, or why there is none (torch is imported only if installed)."""
    try:
        import torch
    except ImportError:
        return {"present": False, "reason": "torch is not installed"}
    if not torch.cuda.is_available():
        return {"present": False, "reason": "no CUDA GPU (torch.cuda.is_available() is False)"}
    properties = torch.cuda.get_device_properties(0)
    return {
        "present": True,
        "name": properties.name,
        "memory_bytes": int(properties.total_memory),
        "count": torch.cuda.device_count(),
        "cuda": torch.version.cuda,
    }


def describe_machine() -> dict[str, Any]:
    flags = cpu_flags()
    return {
        "cpu_model": cpu_model(),
        "architecture": platform.machine(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_simd": sorted(f for f in flags if f.startswith(("avx", "fma", "amx")) or f in ("f16c",)),
        "memory_bytes": psutil.virtual_memory().total,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "os": platform.platform(),
        "gpu": gpu_description(),
        "libraries": library_versions(),
        "onnxruntime_providers": ort.get_available_providers(),
    }
