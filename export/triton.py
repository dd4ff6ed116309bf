"""Writes a Triton Inference Server model repository for the bundle's CPU variant.

For teams that already run Triton: `<repository>/<model_name>/config.pbtxt`
(ONNX Runtime backend, dynamic batching, CPU instances) and
`<repository>/<model_name>/1/model.onnx`. Inputs and outputs are written from
the model's signature (`edgerec.core.signatures`). The batch axis is implicit
in Triton (`max_batch_size`), so the cross-encoder's `[batch, sequence]`
inputs are declared `[-1]`, and its `[batch]` outputs, which would have no
dims left, are declared `[1]` reshaped to `[]`. Triton does not featurize:
clients send token ids built with the bundle's tokenizer and catalog.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from edgerec.core.settings import setting
from edgerec.core.signatures import CROSS_ENCODER, ModelSignature, TensorSpec
from edgerec.runtime.config import BatcherConfig


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


def tensor_pbtxt(spec: TensorSpec) -> str:
    """One input or output of config.pbtxt: the spec's dims without the batch axis (`[1]` reshaped to `[]` if none)."""
    if spec.shape[:1] != ("batch",):
        raise ValueError(f"{spec.name}: Triton batching needs the batch axis first, got shape {spec.shape}")
    dims = spec.kserve_shape[1:]
    shape = f"dims: [ {', '.join(str(d) for d in dims)} ]" if dims else "dims: [ 1 ] reshape: { shape: [ ] }"
    return f'  {{ name: "{spec.name}" data_type: TYPE_{spec.kserve_datatype} {shape} }}'


def config_pbtxt(model_name: str, config: TritonConfig = TritonConfig(), signature: ModelSignature = CROSS_ENCODER) -> str:
    """The text of `config.pbtxt` (protobuf text format of Triton's ModelConfig) for a model of `signature`."""
    inputs = ",\n".join(tensor_pbtxt(spec) for spec in signature.inputs)
    outputs = ",\n".join(tensor_pbtxt(spec) for spec in signature.outputs)
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


def write_repository(
    repository: Path,
    model_name: str,
    variant: Path,
    config: TritonConfig = TritonConfig(),
    signature: ModelSignature = CROSS_ENCODER,
) -> Path:
    """Write `<repository>/<model_name>/` (config.pbtxt, and the `variant` file as version 1's model.onnx); returns it.

    Raises ValueError if a preferred batch size exceeds `max_batch_size`.
    """
    if any(size > config.max_batch_size for size in config.preferred_batch_sizes):
        raise ValueError(f"preferred batch sizes {config.preferred_batch_sizes} exceed max_batch_size {config.max_batch_size}")
    folder = Path(repository) / model_name
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "1").mkdir(parents=True)
    shutil.copyfile(variant, folder / "1" / "model.onnx")
    (folder / "config.pbtxt").write_text(config_pbtxt(model_name, config, signature))
    return folder
