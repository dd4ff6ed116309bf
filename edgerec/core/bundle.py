"""The bundle format: the one folder (or .tar.gz) that is copied to an edge box.

A bundle is one *model version*: every model it holds was trained and
exported together. Layout of `<name>-<version>/`:
- `manifest.json`: format, name, version, featurizer settings, the models and
  the sha256 of every other file;
- `tokenizer.json`: the tokenizer all models share;
- `catalog.json`: item id → {text, token_ids}, pre-tokenized (`featurize.save_catalog`);
- `models/<model>/model.<precision>.onnx`: one file per *variant* (precision) of each model;
- `data/<name>.<ext>`: arrays the models need beside their weights, named in
  the manifest's `data` (`DATA_KINDS`: the catalog's item embeddings, the
  behavioural feature tables).

The manifest's `models` maps a model name (`signatures.SIGNATURES`, e.g.
`cross_encoder`) to its signature, its variants (file, precision, device,
gate verdict) and its default variant per device, plus descriptive keys.

Loading verifies every checksum before anything is served: a truncated or
altered file is refused with its name and both checksums. Bundles written in
the first format (`edgerec-bundle/1`: one model, `engines` at the top level)
load as a bundle holding one model, `cross_encoder`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgerec.core.errors import EdgeRecError, ErrorCode
from edgerec.core.featurize import Featurizer, FeaturizerConfig, save_catalog
from edgerec.core.settings import from_jsonable, to_jsonable
from edgerec.core.signatures import CROSS_ENCODER, ModelSignature

MANIFEST = "manifest.json"
FORMAT = "edgerec-bundle/2"
FORMAT_V1 = "edgerec-bundle/1"
TOKENIZER = "tokenizer.json"
VOCAB_SIZE = "vocab_size"  # key of a token model's manifest entry: rows of its token embedding table
TRT_CACHE = ".trt-cache"  # TensorRT engine cache inside a bundle: built by the export, used by the server
CATALOG = "catalog.json"
DATA_DIR = "data"
# What a bundle's `data` may hold: name -> (file suffix, what it is). Every data file is checksummed like the rest.
DATA_KINDS = {
    "item_embeddings": (".npy", "float32 [catalog items, dim]: each catalog item's embedding from the exported "
                                "item tower, rows in catalog.json order"),
    "behaviour_tables": (".npz", "the behavioural feature tables of the training window (`core.behaviour.BehaviourTables`)"),
}
# Where each precision is meant to run: fp16 needs a GPU, the rest are CPU variants.
DEVICE_OF = {"fp32": "cpu", "fp32-optimized": "cpu", "int8-dynamic": "cpu", "int8-static": "cpu", "fp16": "gpu"}


def variant_file(model: str, precision: str) -> str:
    """Where a variant lives inside a bundle folder."""
    return f"models/{model}/model.{precision}.onnx"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One precision variant of a model: its file, precision, device and gate verdict."""

    file: str
    precision: str  # "fp32", "fp32-optimized", "int8-dynamic", "int8-static", "fp16"
    device: str  # "cpu" or "gpu": where this precision is meant to run
    gate: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class BundleModel:
    """One model of a bundle: its signature, its variants and its default variant per device."""

    name: str
    signature: ModelSignature
    variants: tuple[Variant, ...]
    default_variant: dict[str, str]
    info: dict[str, Any]

    @classmethod
    def from_manifest(cls, name: str, entry: dict[str, Any]) -> "BundleModel":
        known = {"signature", "variants", "default_variant"}
        return cls(
            name=name,
            signature=ModelSignature.from_manifest(entry["signature"]),
            variants=tuple(Variant(**v) for v in entry["variants"]),
            default_variant=dict(entry["default_variant"]),
            info={k: v for k, v in entry.items() if k not in known},
        )

    @property
    def precisions(self) -> list[str]:
        return [v.precision for v in self.variants]

    def variant(self, precision: str | None = None, device: str = "cpu") -> Variant:
        """The variant of that precision, or the default for `device`; NOT_FOUND names what there is."""
        wanted = precision or self.default_variant.get(device)
        for variant in self.variants:
            if variant.precision == wanted:
                return variant
        raise EdgeRecError(
            ErrorCode.NOT_FOUND,
            f"model {self.name} has no {wanted!r} variant (it has: {', '.join(self.precisions)})",
        )


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk: one model version."""

    root: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def models(self) -> dict[str, BundleModel]:
        return {name: BundleModel.from_manifest(name, entry) for name, entry in self.manifest["models"].items()}

    def model(self, name: str) -> BundleModel:
        """The named model; NOT_FOUND names the models the bundle holds."""
        models = self.models
        if name not in models:
            raise EdgeRecError(
                ErrorCode.NOT_FOUND, f"bundle {self.name} {self.version} has no model {name!r} (it has: {', '.join(models)})"
            )
        return models[name]

    def path(self, relative: str) -> Path:
        return self.root / relative

    def variant_path(self, model: str, precision: str | None = None, device: str = "cpu") -> Path:
        return self.path(self.model(model).variant(precision, device).file)

    @property
    def tokenizer_path(self) -> Path:
        return self.root / self.manifest["tokenizer"]

    @property
    def catalog_path(self) -> Path:
        return self.root / self.manifest["catalog"]

    @property
    def data(self) -> dict[str, str]:
        """The bundle's data files: name (`DATA_KINDS`) -> path relative to the bundle root."""
        return dict(self.manifest.get("data", {}))

    def data_path(self, name: str) -> Path:
        """The data file `name`; NOT_FOUND names the data the bundle holds (a bundle without a ranker has none)."""
        data = self.data
        if name not in data:
            raise EdgeRecError(
                ErrorCode.NOT_FOUND,
                f"bundle {self.name} {self.version} has no data {name!r} (it has: {', '.join(data) or 'none'})",
            )
        return self.root / data[name]

    @property
    def trt_cache_path(self) -> Path:
        """Where TensorRT engines built for this bundle are cached (not checksummed, not packed)."""
        return self.root / TRT_CACHE

    @property
    def featurizer_settings(self) -> dict[str, Any]:
        return self.manifest["featurizer"]

    @property
    def featurizer_config(self) -> FeaturizerConfig:
        return from_jsonable(FeaturizerConfig, self.featurizer_settings)

    def featurizer(self) -> Featurizer:
        """The bundle's featurizer: its tokenizer, settings and pre-tokenized catalog."""
        return Featurizer.from_files(self.tokenizer_path, self.featurizer_config, self.catalog_path)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the format and the sha256 of every file under `root` (dot-folders excepted) to `manifest`; write it."""
    root = Path(root)
    files = sorted(
        p for p in root.rglob("*")
        if p.is_file() and p.name != MANIFEST and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    manifest = {**manifest, "format": FORMAT, "files": {str(p.relative_to(root)): sha256_file(p) for p in files}}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    """What one model brings to a bundle: its signature, a source file per precision, defaults, gate verdicts."""

    name: str
    signature: ModelSignature
    variants: Mapping[str, Path]  # precision -> ONNX file to copy in
    default_variant: Mapping[str, str]  # device ("cpu", "gpu") -> precision
    gates: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)  # precision -> gate verdict
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # descriptive manifest keys

    def manifest_entry(self) -> dict[str, Any]:
        missing = {device: p for device, p in self.default_variant.items() if p not in self.variants}
        if missing:
            raise ValueError(f"model {self.name}: default variant(s) {missing} are not among {sorted(self.variants)}")
        return {
            **to_jsonable(dict(self.info)),
            "signature": self.signature.as_manifest(),
            "default_variant": dict(self.default_variant),
            "variants": [
                {
                    "file": variant_file(self.name, precision),
                    "precision": precision,
                    "device": DEVICE_OF[precision],
                    "gate": to_jsonable(dict(self.gates.get(precision, {}))),
                }
                for precision in self.variants
            ],
        }


def write_bundle(
    root: Path,
    *,
    name: str,
    version: str,
    models: Sequence[ModelFiles],
    tokenizer_path: Path,
    items: Mapping[str, str],
    featurizer: Featurizer,
    description: Mapping[str, Any] | None = None,
    data: Mapping[str, Path] | None = None,
) -> Bundle:
    """Write the bundle folder `root` (replacing it): variant files, tokenizer, catalog, data, manifest;
    returns it verified.

    `items` (item id -> text) becomes the pre-tokenized catalog; `description`
    adds bundle-level descriptive keys to the manifest; `data` maps a `DATA_KINDS`
    name to the file copied in as `data/<name><suffix>`. Raises ValueError for a
    model named twice, an unknown data name or a file with the wrong suffix.
    """
    root = Path(root)
    names = [model.name for model in models]
    if len(set(names)) != len(names):
        raise ValueError(f"a bundle holds each model once; got {names}")
    data = {kind: Path(source) for kind, source in (data or {}).items()}
    for kind, source in data.items():
        if kind not in DATA_KINDS:
            raise ValueError(f"unknown bundle data {kind!r}; known: {', '.join(DATA_KINDS)}")
        if source.suffix != DATA_KINDS[kind][0]:
            raise ValueError(f"bundle data {kind!r} must be a {DATA_KINDS[kind][0]} file, got {source}")
    entries = {model.name: model.manifest_entry() for model in models}
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for model in models:
        for precision, source in model.variants.items():
            target = root / variant_file(model.name, precision)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    shutil.copyfile(tokenizer_path, root / TOKENIZER)
    save_catalog(root / CATALOG, items, featurizer)
    placed = {}
    for kind, source in data.items():
        relative = f"{DATA_DIR}/{kind}{DATA_KINDS[kind][0]}"
        (root / DATA_DIR).mkdir(exist_ok=True)
        shutil.copyfile(source, root / relative)
        placed[kind] = relative
    manifest = {
        **to_jsonable(dict(description or {})),
        "name": name,
        "version": version,
        "featurizer": to_jsonable(featurizer.config),
        "tokenizer": TOKENIZER,
        "catalog": CATALOG,
        "models": entries,
        **({"data": placed} if placed else {}),
    }
    write_manifest(root, manifest)
    return verify(root)


def _upgrade_v1(manifest: dict[str, Any]) -> dict[str, Any]:
    """A first-format manifest as the current format: its engines become the `cross_encoder` model's variants."""
    descriptive = {
        k: v for k, v in manifest.items()
        if k not in ("engines", "default_engine", "model_name", "inputs", "outputs", "format", "files", "featurizer",
                     "tokenizer", "catalog", "version")
    }
    model = {
        "signature": CROSS_ENCODER.as_manifest(),
        "variants": manifest["engines"],
        "default_variant": manifest["default_engine"],
        **descriptive,
    }
    return {
        "format": FORMAT,
        "name": manifest["model_name"],
        "version": manifest["version"],
        "featurizer": manifest["featurizer"],
        "tokenizer": manifest["tokenizer"],
        "catalog": manifest["catalog"],
        "files": manifest["files"],
        "models": {CROSS_ENCODER.name: model},
    }


def verify(root: Path) -> Bundle:
    """Check a bundle folder's manifest and every checksum; raise DATA_LOSS naming the bad file."""
    root = Path(root)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise EdgeRecError(ErrorCode.FAILED_PRECONDITION, f"{root} is not a bundle: no {MANIFEST}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise EdgeRecError(ErrorCode.DATA_LOSS, f"{manifest_path} is not valid JSON: {exc}") from exc
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found not in (FORMAT, FORMAT_V1):
        raise EdgeRecError(ErrorCode.FAILED_PRECONDITION, f"{manifest_path}: format {found!r}, expected {FORMAT!r}")
    for relative, expected in manifest["files"].items():
        path = root / relative
        if not path.is_file():
            raise EdgeRecError(ErrorCode.DATA_LOSS, f"bundle file {path} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise EdgeRecError(
                ErrorCode.DATA_LOSS,
                f"bundle file {path} fails its checksum: sha256 {actual}, manifest says {expected}",
            )
    checksummed = set(manifest["files"])
    unchecked = sorted(relative for relative in manifest.get("data", {}).values() if relative not in checksummed)
    if unchecked:
        raise EdgeRecError(ErrorCode.DATA_LOSS, f"{manifest_path}: data files without a checksum: {', '.join(unchecked)}")
    if found == FORMAT_V1:
        manifest = _upgrade_v1(manifest)
    return Bundle(root=root, manifest=manifest)


def pack(root: Path, archive: Path) -> Path:
    """Pack a verified bundle folder into `archive` (.tar.gz) with one top-level folder (dot-folders left out)."""
    bundle = verify(root)
    archive = Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts[1:]
        return None if any(part.startswith(".") for part in parts) else info

    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle.root, arcname=bundle.root.name, filter=keep)
    return archive


def open_bundle(path: Path, unpack_dir: Path | None = None) -> Bundle:
    """Verify a bundle folder, or unpack a `.tar.gz` (safely) and verify what it held."""
    path = Path(path)
    if path.is_dir():
        return verify(path)
    if not path.is_file():
        raise EdgeRecError(ErrorCode.NOT_FOUND, f"no bundle at {path}")
    target = Path(unpack_dir) if unpack_dir else Path(tempfile.mkdtemp(prefix="edgerec-bundle-"))
    try:
        with tarfile.open(path, "r:gz") as tar:
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise EdgeRecError(ErrorCode.DATA_LOSS, f"cannot unpack bundle archive {path}: {exc}") from exc
    manifests = list(target.glob(f"*/{MANIFEST}")) or list(target.glob(MANIFEST))
    if len(manifests) != 1:
        raise EdgeRecError(ErrorCode.FAILED_PRECONDITION, f"{path} holds {len(manifests)} bundles; expected one")
    return verify(manifests[0].parent)
