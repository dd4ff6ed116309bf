"""Bundles made wrong on purpose, for the fault scenarios.

Each starts as a slim copy of the bundle under test (manifest, tokenizer,
catalog and the one engine served) and is then broken the way real bundles
break: a model file truncated or altered after signing (the checksum must
catch it), a model file that is signed but is no ONNX model (loading must
catch it), or an engine that loads and warms up but raises at run time on
any batch holding one marked token (a poisoned batch).
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgerec.runtime.bundle import MANIFEST, open_bundle, write_manifest
from edgerec.runtime.featurize import Featurizer

ENGINE_OPSET = 17
POISON_WORDS = ("volcano", "zeppelin", "tornado", "penguin", "walrus", "glacier")


def slim_copy(source: Path, target: Path, version: str | None = None, precision: str | None = None) -> Path:
    """A signed bundle at `target` holding only `source`'s engine for `precision` (default: its CPU default)."""
    bundle = open_bundle(source)
    entry = bundle.engine(precision or None, "cpu")
    target.mkdir(parents=True)
    manifest = dict(bundle.manifest)
    for name in {manifest["tokenizer"], manifest["catalog"], entry.file}:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(bundle.path(name), target / name)
    manifest.pop("files", None)
    manifest["engines"] = [e for e in manifest["engines"] if e["file"] == entry.file]
    manifest["default_engine"] = {"cpu": entry.precision, "gpu": entry.precision}
    if version is not None:
        manifest["version"] = version
    write_manifest(target, manifest)
    return target


def engine_file(root: Path) -> Path:
    """The one engine file of a slim bundle."""
    manifest = json.loads((root / MANIFEST).read_text())
    return root / manifest["engines"][0]["file"]


def expected_checksum(root: Path, path: Path) -> str:
    return json.loads((root / MANIFEST).read_text())["files"][str(path.relative_to(root))]


def truncate(path: Path) -> None:
    """Cut a file to half its size (an interrupted copy)."""
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def alter(path: Path) -> None:
    """Flip one byte in the middle of a file (bit rot, tampering); the size stays the same."""
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))


def resign(root: Path) -> None:
    """Rewrite the manifest's checksums for the files as they are now."""
    manifest = json.loads((root / MANIFEST).read_text())
    manifest.pop("files", None)
    write_manifest(root, manifest)


def pack_truncated(root: Path, archive: Path) -> Path:
    """`root` packed as .tar.gz, then cut to half its size."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname=root.name)
    truncate(archive)
    return archive


def poison_token(featurizer: Featurizer) -> tuple[str, int]:
    """A word that is one token the catalog never uses: free text with it marks a batch."""
    used = {token for tokens in featurizer.catalog.values() for token in tokens}
    for word in POISON_WORDS:
        ids = featurizer.encode_texts([word])[0]
        if len(ids) == 1 and ids[0] not in used:
            return word, ids[0]
    raise RuntimeError(f"none of {POISON_WORDS} is a single token unused by the catalog")


def poisoned_engine(poison_id: int) -> onnx.ModelProto:
    """The serving signature; answers 0.5 / 1.0 per row, and raises (Gather out of range) on `poison_id`.

    Rows without the token look up index 0 of a one-entry table; a row holding
    it looks up index `poison_id`, which ONNX Runtime refuses at run time.
    """
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])
    types = helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["batch", "sequence"])
    probability = helper.make_tensor_value_info("purchase_probability", TensorProto.FLOAT, ["batch"])
    quantity = helper.make_tensor_value_info("expected_quantity", TensorProto.FLOAT, ["batch"])
    initializers = [
        numpy_helper.from_array(np.array(poison_id, dtype=np.int64), "poison"),
        numpy_helper.from_array(np.zeros(1, dtype=np.float32), "table"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Equal", ["input_ids", "poison"], ["is_poison"]),
        helper.make_node("Cast", ["is_poison"], ["poison_flag"], to=TensorProto.INT64),
        helper.make_node("Mul", ["poison_flag", "input_ids"], ["lookup"]),
        helper.make_node("Gather", ["table", "lookup"], ["looked_up"], axis=0),
        helper.make_node("Mul", ["attention_mask", "token_type_ids"], ["mask_types"]),
        helper.make_node("Cast", ["mask_types"], ["mask_types_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["looked_up", "mask_types_f"], ["row_terms"]),
        helper.make_node("ReduceSum", ["row_terms", "axis1"], ["logit"], keepdims=0),
        helper.make_node("Sigmoid", ["logit"], ["purchase_probability"]),
        helper.make_node("Exp", ["logit"], ["expected_quantity"]),
    ]
    graph = helper.make_graph(nodes, "poisoned", [ids, mask, types], [probability, quantity], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ENGINE_OPSET)], producer_name="edgerec-reliability")
    onnx.checker.check_model(model)
    return model


def poisoned_bundle(source: Path, target: Path) -> tuple[Path, str]:
    """A signed bundle whose engine fails on every batch holding the returned poison word."""
    slim_copy(source, target, version="poisoned")
    bundle = open_bundle(target)
    featurizer = Featurizer.from_files(bundle.tokenizer_path, catalog_path=bundle.catalog_path)
    word, token = poison_token(featurizer)
    onnx.save(poisoned_engine(token), engine_file(target))
    resign(target)
    return target, word


def point_link(link: Path, target: Path) -> None:
    """Atomically point the symlink `link` at `target` (what a deployment script does)."""
    scratch = link.with_name(link.name + ".new")
    scratch.unlink(missing_ok=True)
    scratch.symlink_to(target.resolve())
    scratch.replace(link)

