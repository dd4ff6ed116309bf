"""Builds the tiny cross-encoder the runtime tests serve, without torch (run with the dev venv).

`python tests/data/make_tiny_model.py` writes into `tests/data/tiny_model/`:
- `model.fp32.onnx`: a 30 kB model with the cross-encoder's signature
  (`edgerec.core.signatures.CROSS_ENCODER`), built with `onnx.helper`: hashed
  token embeddings + segment embeddings, masked means of the context and the
  candidate segments, a 2-layer MLP -> sigmoid (purchase probability) and
  exp (expected quantity). Every score depends on every attended token of
  its row, and on nothing else (padding and batch mates do not count);
- `model.int8-dynamic.onnx` (ONNX Runtime's `quantize_dynamic`, as the export
  does: its activation scales are computed per batch) and `model.fp16.onnx`;
- `items.json`: the synthetic shop's catalog (item id -> text);
- `tokenizer.json`: the real all-MiniLM-L6-v2 tokenizer (Apache-2.0), so
  free text tokenizes as in production.
The files are committed: the runtime tests need neither torch nor onnx.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgerec.core.signatures import CROSS_ENCODER

HERE = Path(__file__).parent / "tiny_model"
BUCKETS, WIDTH, HIDDEN = 1024, 8, 16
OPSET = 17


def build(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    weights = {
        "E": rng.normal(0, 1.0, (BUCKETS, WIDTH)).astype(np.float32),
        "T": rng.normal(0, 0.5, (2, WIDTH)).astype(np.float32),
        "W1": rng.normal(0, 0.6, (2 * WIDTH, HIDDEN)).astype(np.float32),
        "B1": rng.normal(0, 0.1, (HIDDEN,)).astype(np.float32),
        "W2": rng.normal(0, 0.6, (HIDDEN, 2)).astype(np.float32),
        "B2": np.array([-1.0, 1.5], dtype=np.float32),
        "buckets": np.array(BUCKETS, dtype=np.int64),
        "one": np.array(1.0, dtype=np.float32),
        "axis1": np.array([1], dtype=np.int64),
        "last": np.array([-1], dtype=np.int64),
        "i0": np.array(0, dtype=np.int64),
        "i1": np.array(1, dtype=np.int64),
    }
    ids, mask, types = CROSS_ENCODER.input_names
    probability, quantity = CROSS_ENCODER.output_names
    n = helper.make_node
    nodes = [
        n("Mod", [ids, "buckets"], ["hashed"]),
        n("Gather", ["E", "hashed"], ["token_emb"]),
        n("Gather", ["T", types], ["type_emb"]),
        n("Add", ["token_emb", "type_emb"], ["emb"]),
        n("Tanh", ["emb"], ["h"]),
        n("Cast", [mask], ["mask_f"], to=TensorProto.FLOAT),
        n("Cast", [types], ["types_f"], to=TensorProto.FLOAT),
        n("Unsqueeze", ["mask_f", "last"], ["m"]),
        n("Unsqueeze", ["types_f", "last"], ["t"]),
        n("Mul", ["m", "t"], ["cand_m"]),
        n("Sub", ["m", "cand_m"], ["ctx_m"]),
    ]
    for part in ("cand", "ctx"):
        nodes += [
            n("Mul", ["h", f"{part}_m"], [f"{part}_h"]),
            n("ReduceSum", [f"{part}_h", "axis1"], [f"{part}_sum"], keepdims=0),
            n("ReduceSum", [f"{part}_m", "axis1"], [f"{part}_n0"], keepdims=0),
            n("Max", [f"{part}_n0", "one"], [f"{part}_n"]),
            n("Div", [f"{part}_sum", f"{part}_n"], [f"{part}_mean"]),
        ]
    nodes += [
        n("Mul", ["cand_mean", "ctx_mean"], ["interaction"]),
        n("Concat", ["interaction", "cand_mean"], ["features"], axis=1),
        n("MatMul", ["features", "W1"], ["z1"]),
        n("Add", ["z1", "B1"], ["z1b"]),
        n("Tanh", ["z1b"], ["hidden"]),
        n("MatMul", ["hidden", "W2"], ["z2"]),
        n("Add", ["z2", "B2"], ["z"]),
        n("Gather", ["z", "i0"], ["logit"], axis=1),
        n("Gather", ["z", "i1"], ["log_quantity"], axis=1),
        n("Sigmoid", ["logit"], [probability]),
        n("Exp", ["log_quantity"], [quantity]),
    ]
    inputs = [helper.make_tensor_value_info(s.name, TensorProto.INT64, list(s.shape)) for s in CROSS_ENCODER.inputs]
    outputs = [helper.make_tensor_value_info(s.name, TensorProto.FLOAT, list(s.shape)) for s in CROSS_ENCODER.outputs]
    graph = helper.make_graph(
        nodes, "tiny_cross_encoder", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in weights.items()]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgerec-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def catalog() -> dict[str, str]:
    """The synthetic shop's items (`edgerec.export.synthetic`), id -> text."""
    from edgerec.export.synthetic import _items

    return {code: text for code, text, _theme, _launch in _items(60, random.Random(0))}


def main() -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from edgerec.export.model import pretrained_path

    HERE.mkdir(parents=True, exist_ok=True)
    fp32 = HERE / "model.fp32.onnx"
    model = build()
    onnx.save(model, fp32)
    quantize_dynamic(fp32, HERE / "model.int8-dynamic.onnx", weight_type=QuantType.QInt8, per_channel=True)
    onnx.save(convert_float_to_float16(model, keep_io_types=True), HERE / "model.fp16.onnx")
    (HERE / "items.json").write_text(json.dumps(catalog(), indent=1, sort_keys=True) + "\n")
    shutil.copyfile(pretrained_path() / "tokenizer.json", HERE / "tokenizer.json")
    print("\n".join(f"{p.name}: {p.stat().st_size} bytes" for p in sorted(HERE.iterdir())))


if __name__ == "__main__":
    main()
