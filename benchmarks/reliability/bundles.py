"""Bundles made wrong on purpose, for the fault scenarios.

Each starts as a slim copy of the bundle under test (a format-2 manifest,
tokenizer, catalog and the one variant served of each model, under
`models/<model>/`) and is then broken the way real bundles break: a variant
file truncated or altered after signing (the checksum must catch it), a
variant file that is signed but is no ONNX model (loading must catch it), or
a cross-encoder that loads and warms up but raises at run time on any batch
holding one marked token (a poisoned batch).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgerec.core.bundle import MANIFEST, open_bundle, write_manifest
from edgerec.core.featurize import Featurizer
from edgerec.core.signatures import CROSS_ENCODER, TensorSpec

MODEL_OPSET = 17
POISON_WORDS = ("volcano", "zeppelin", "tornado", "penguin", "walrus", "glacier")


def slim_copy(source: Path, target: Path, version: str | None = None, precision: str | None = None) -> Path:
    """A signed bundle at `target` holding only the variant each model serves on the CPU.

    `precision` picks the cross-encoder's variant (default: its CPU default);
    every other model keeps its CPU default. The manifest is format 2, whatever
    format `source` has.
    """
    bundle = open_bundle(source)
    target.mkdir(parents=True)
    models = {}
    for name, model in bundle.models.items():
        variant = model.variant(precision if name == CROSS_ENCODER.name else None, "cpu")
        models[name] = {
            **bundle.manifest["models"][name],
            "variants": [dataclasses.asdict(variant)],
            "default_variant": {"cpu": variant.precision, "gpu": variant.precision},
        }
    manifest = {key: value for key, value in bundle.manifest.items() if key not in ("files", "format")}
    manifest["models"] = models
    if version is not None:
        manifest["version"] = version
    kept = [manifest["tokenizer"], manifest["catalog"], *(entry["variants"][0]["file"] for entry in models.values())]
    for name in kept:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(bundle.path(name), target / name)
    write_manifest(target, manifest)
    return target


def variant_path(root: Path) -> Path:
    """The cross-encoder's one variant file in a slim bundle (read from the manifest, checksums unchecked)."""
    manifest = json.loads((root / MANIFEST).read_text())
    return root / manifest["models"][CROSS_ENCODER.name]["variants"][0]["file"]


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
    write_manifest(root, {key: value for key, value in manifest.items() if key not in ("files", "format")})


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


def _value_info(spec: TensorSpec) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(spec.name, helper.np_dtype_to_tensor_dtype(spec.numpy_dtype), list(spec.shape))


def poisoned_model(poison_id: int) -> onnx.ModelProto:
    """The cross-encoder's signature; answers 0.5 / 1.0 per row, and raises (Gather out of range) on `poison_id`.

    Rows without the token look up index 0 of a one-entry table; a row holding
    it looks up index `poison_id`, which ONNX Runtime refuses at run time.
    """
    ids, mask, types = CROSS_ENCODER.input_names
    probability, quantity = CROSS_ENCODER.output_names
    initializers = [
        numpy_helper.from_array(np.array(poison_id, dtype=np.int64), "poison"),
        numpy_helper.from_array(np.zeros(1, dtype=np.float32), "table"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Equal", [ids, "poison"], ["is_poison"]),
        helper.make_node("Cast", ["is_poison"], ["poison_flag"], to=TensorProto.INT64),
        helper.make_node("Mul", ["poison_flag", ids], ["lookup"]),
        helper.make_node("Gather", ["table", "lookup"], ["looked_up"], axis=0),
        helper.make_node("Mul", [mask, types], ["mask_types"]),
        helper.make_node("Cast", ["mask_types"], ["mask_types_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["looked_up", "mask_types_f"], ["row_terms"]),
        helper.make_node("ReduceSum", ["row_terms", "axis1"], ["logit"], keepdims=0),
        helper.make_node("Sigmoid", ["logit"], [probability]),
        helper.make_node("Exp", ["logit"], [quantity]),
    ]
    graph = helper.make_graph(
        nodes,
        "poisoned",
        [_value_info(spec) for spec in CROSS_ENCODER.inputs],
        [_value_info(spec) for spec in CROSS_ENCODER.outputs],
        initializers,
    )
    opsets = [helper.make_opsetid("", MODEL_OPSET)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="edgerec-reliability")
    onnx.checker.check_model(model)
    return model


def poisoned_bundle(source: Path, target: Path) -> tuple[Path, str]:
    """A signed bundle whose cross-encoder fails on every batch holding the returned poison word."""
    slim_copy(source, target, version="poisoned")
    word, token = poison_token(open_bundle(target).featurizer())
    onnx.save(poisoned_model(token), variant_path(target))
    resign(target)
    return target, word


def point_link(link: Path, target: Path) -> None:
    """Atomically point the symlink `link` at `target` (what a deployment script does)."""
    scratch = link.with_name(link.name + ".new")
    scratch.unlink(missing_ok=True)
    scratch.symlink_to(target.resolve())
    scratch.replace(link)

