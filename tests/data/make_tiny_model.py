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
  free text tokenizes as in production;
- the tiny two-tower ranker, with the signatures `ITEM_TOWER` and `RANKER`:
  `item_tower.fp32.onnx` (hashed token embeddings, tanh, masked mean: an
  8-wide item embedding), `ranker.fp32.onnx` (user vector: the history's
  embeddings weighted by log count and recency; logit: candidate · user plus
  a linear term of the behavioural features; log quantity: linear in the
  features; every candidate's row scored by itself),
  `ranker_embeddings.npy` (the catalog embedded by that tower, one item per
  call as the export does) and `behaviour_tables.npz` (from a few synthetic
  purchases of the catalog's items).
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


def _model(nodes, name: str, signature, weights: dict) -> onnx.ModelProto:
    types = {"int64": TensorProto.INT64, "float32": TensorProto.FLOAT}
    inputs = [helper.make_tensor_value_info(t.name, types[t.dtype], list(t.shape)) for t in signature.inputs]
    outputs = [helper.make_tensor_value_info(t.name, types[t.dtype], list(t.shape)) for t in signature.outputs]
    graph = helper.make_graph(nodes, name, inputs, outputs, [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgerec-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def build_item_tower(seed: int = 1) -> onnx.ModelProto:
    """`ITEM_TOWER`: hashed token embeddings -> tanh -> mean over the attended tokens ([items, WIDTH])."""
    from edgerec.core.signatures import ITEM_TOWER

    rng = np.random.default_rng(seed)
    weights = {
        "E": rng.normal(0, 1.0, (BUCKETS, WIDTH)).astype(np.float32),
        "buckets": np.array(BUCKETS, dtype=np.int64),
        "one": np.array(1.0, dtype=np.float32),
        "axis1": np.array([1], dtype=np.int64),
        "last": np.array([-1], dtype=np.int64),
    }
    ids, mask = ITEM_TOWER.input_names
    n = helper.make_node
    nodes = [
        n("Mod", [ids, "buckets"], ["hashed"]),
        n("Gather", ["E", "hashed"], ["emb"]),
        n("Tanh", ["emb"], ["h"]),
        n("Cast", [mask], ["mask_f"], to=TensorProto.FLOAT),
        n("Unsqueeze", ["mask_f", "last"], ["m"]),
        n("Mul", ["h", "m"], ["hm"]),
        n("ReduceSum", ["hm", "axis1"], ["total"], keepdims=0),
        n("ReduceSum", ["m", "axis1"], ["count0"], keepdims=0),
        n("Max", ["count0", "one"], ["count"]),
        n("Div", ["total", "count"], [ITEM_TOWER.output_names[0]]),
    ]
    return _model(nodes, "tiny_item_tower", ITEM_TOWER, weights)


def build_ranker(seed: int = 2) -> onnx.ModelProto:
    """`RANKER` for one customer: user = sum_h w_h e_h / max(sum_h w_h, 1), w_h = mask * log(1 + count) *
    (1 - days / 730); logit = candidate · user * 3 + features · a + b; log quantity = features · c + 0.2."""
    from edgerec.core.behaviour import NUM_FEATURES
    from edgerec.core.signatures import RANKER

    rng = np.random.default_rng(seed)
    weights = {
        "A": rng.normal(0, 0.8, (NUM_FEATURES, 1)).astype(np.float32),
        "C": rng.normal(0, 0.3, (NUM_FEATURES, 1)).astype(np.float32),
        "b": np.array(-0.5, dtype=np.float32),
        "q0": np.array(0.2, dtype=np.float32),
        "scale": np.array(3.0, dtype=np.float32),
        "one": np.array(1.0, dtype=np.float32),
        "days_scale": np.array(1.0 / 730.0, dtype=np.float32),
        "axis0": np.array([0], dtype=np.int64),
        "axis1": np.array([1], dtype=np.int64),
        "last": np.array([-1], dtype=np.int64),
    }
    h_emb, h_counts, h_days, h_mask, c_emb, c_feat = RANKER.input_names
    logit, probability, log_quantity, quantity = RANKER.output_names
    n = helper.make_node
    nodes = [
        n("Cast", [h_mask], ["mask_f"], to=TensorProto.FLOAT),
        n("Add", [h_counts, "one"], ["counts1"]),
        n("Log", ["counts1"], ["log_counts"]),
        n("Mul", [h_days, "days_scale"], ["days_frac"]),
        n("Sub", ["one", "days_frac"], ["recency"]),
        n("Mul", ["log_counts", "recency"], ["w0"]),
        n("Mul", ["w0", "mask_f"], ["w"]),
        n("Unsqueeze", ["w", "last"], ["w_col"]),
        n("Mul", [h_emb, "w_col"], ["weighted"]),
        n("ReduceSum", ["weighted", "axis0"], ["user_sum"], keepdims=1),
        n("ReduceSum", ["w", "axis0"], ["w_sum0"], keepdims=1),
        n("Max", ["w_sum0", "one"], ["w_sum"]),
        n("Div", ["user_sum", "w_sum"], ["user"]),
        n("Mul", [c_emb, "user"], ["affinity"]),
        n("ReduceSum", ["affinity", "axis1"], ["dot"], keepdims=0),
        n("Mul", ["dot", "scale"], ["dot_scaled"]),
        n("MatMul", [c_feat, "A"], ["lin_col"]),
        n("Squeeze", ["lin_col", "axis1"], ["lin"]),
        n("Add", ["dot_scaled", "lin"], ["z0"]),
        n("Add", ["z0", "b"], [logit]),
        n("Sigmoid", [logit], [probability]),
        n("MatMul", [c_feat, "C"], ["q_col"]),
        n("Squeeze", ["q_col", "axis1"], ["q_lin"]),
        n("Add", ["q_lin", "q0"], [log_quantity]),
        n("Exp", [log_quantity], [quantity]),
    ]
    return _model(nodes, "tiny_ranker", RANKER, weights)


def ranker_data(items: dict[str, str]) -> None:
    """The catalog's embeddings by the tiny tower (one item per call, as the export and the server run
    it) and behaviour tables from synthetic purchases (a few customers buying the first items)."""
    import onnxruntime as ort

    from edgerec.core.behaviour import BehaviourTables
    from edgerec.core.featurize import Featurizer, FeaturizerConfig
    from edgerec.core.ranker_inputs import encode_item_texts

    featurizer = Featurizer.from_files(HERE / "tokenizer.json", FeaturizerConfig(max_length=64, max_item_tokens=16))
    session = ort.InferenceSession(str(HERE / "item_tower.fp32.onnx"), providers=["CPUExecutionProvider"])
    rows = []
    for item_id in sorted(items):  # catalog.json order (sorted ids)
        ids, mask = encode_item_texts(featurizer, [items[item_id]])
        rows.append(session.run(None, {"input_ids": ids, "attention_mask": mask})[0][0])
    np.save(HERE / "ranker_embeddings.npy", np.stack(rows).astype(np.float32))
    ids = sorted(items)
    rng = random.Random(3)
    invoices, customers, bought, quantities, times = [], [], [], [], []
    for invoice in range(40):
        customer = f"c{invoice % 7}"
        for item in rng.sample(ids[:20], 3):
            invoices.append(f"i{invoice}")
            customers.append(customer)
            bought.append(item)
            quantities.append(float(rng.randint(1, 6)))
            times.append(1.0e9 + invoice * 86400.0)
    BehaviourTables.build(invoices, customers, bought, quantities, times, cutoff=1.0e9 + 60 * 86400.0).save(
        HERE / "behaviour_tables.npz"
    )


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
    onnx.save(build_item_tower(), HERE / "item_tower.fp32.onnx")
    onnx.save(build_ranker(), HERE / "ranker.fp32.onnx")
    ranker_data(json.loads((HERE / "items.json").read_text()))
    print("\n".join(f"{p.name}: {p.stat().st_size} bytes" for p in sorted(HERE.iterdir())))


if __name__ == "__main__":
    main()
