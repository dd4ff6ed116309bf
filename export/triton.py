"""Writes a Triton Inference Server model repository for the bundle's CPU engine.

For teams that already run Triton: `<repository>/<model_name>/config.pbtxt`
(ONNX Runtime backend, dynamic batching, CPU instances) and
`<repository>/<model_name>/1/model.onnx`. The batch axis is implicit in
Triton (`max_batch_size`), so inputs are declared `[-1]` (sequence) and the
outputs, which are `[batch]` in the model, are declared `[1]` reshaped to `[]`.
Triton does not featurize: clients send token ids built with the bundle's
tokenizer and catalog.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from edgerec.export.model import INPUT_NAMES, OUTPUT_NAMES
from edgerec.runtime.config import BatcherConfig
from edgerec.settings import setting


@dataclasses.dataclass(frozen=True)
class TritonConfig:
    """The Triton model configuration written beside the bundle."""

    max_batch_size: int = setting(
        BatcherConfig().max_batch_size, "largest batch Triton forms (as edgerec serve's default max_batch_size)"
    )
    preferred_batch_sizes: tuple[int, ...] = setting((8, 16, 32), "batch sizes Triton's dynamic batcher aims for")
    max_queue_delay_us: int = setting(
        int(BatcherConfig().max_queue_delay_ms * 1000), "longest a request waits for a batch to fill, microseconds"
    )
    instances: int = setting(1, "model instances (each runs one batch at a time)")
    intra_op_threads: int = setting(0, "ONNX Runtime threads per instance; 0: ONNX Runtime's default (all cores)")


def config_pbtxt(model_name: str, config: TritonConfig = TritonConfig()) -> str:
    """The text of `config.pbtxt` (protobuf text format of Triton's ModelConfig)."""
    inputs = ",\n".join(f'  {{ name: "{name}" data_type: TYPE_INT64 dims: [ -1 ] }}' for name in INPUT_NAMES)
    outputs = ",\n".join(
        f'  {{ name: "{name}" data_type: TYPE_FP32 dims: [ 1 ] reshape: {{ shape: [ ] }} }}' for name in OUTPUT_NAMES
    )
    preferred = ", ".join(str(size) for size in config.preferred_batch_sizes)
    return (
        f'name: "{model_name}"\n'
        'backend: "onnxruntime"\n'
        f"max_batch_size: {config.max_batch_size}\n"
        f"input [\n{inputs}\n]\n"
        f"output [\n{outputs}\n]\n"
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {preferred} ]\n"
        f"  max_queue_delay_microseconds: {config.max_queue_delay_us}\n"
        "}\n"
        f"instance_group [ {{ count: {config.instances} kind: KIND_CPU }} ]\n"
        'parameters { key: "intra_op_thread_count" '
        f'value: {{ string_value: "{config.intra_op_threads}" }} }}\n'
    )


def write_repository(repository: Path, model_name: str, engine: Path, config: TritonConfig = TritonConfig()) -> Path:
    """Write `<repository>/<model_name>/` (config.pbtxt and version 1's model.onnx); returns that folder."""
    if any(size > config.max_batch_size for size in config.preferred_batch_sizes):
        raise ValueError(f"preferred batch sizes {config.preferred_batch_sizes} exceed max_batch_size {config.max_batch_size}")
    folder = Path(repository) / model_name
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "1").mkdir(parents=True)
    shutil.copyfile(engine, folder / "1" / "model.onnx")
    (folder / "config.pbtxt").write_text(config_pbtxt(model_name, config))
    return folder
