"""A model bundle: the one folder (or .tar.gz) that is copied to an edge box.

Layout of `<name>-<version>/`:
- `manifest.json` — see `Manifest`; lists the sha256 of every other file;
- `tokenizer.json` — the model's tokenizer;
- `catalog.json` — item id → {text, token_ids}, pre-tokenized (see `featurize.save_catalog`);
- one `.onnx` file per engine (precision).

Loading verifies every checksum before anything is served: a truncated or
altered file is refused with its name and both checksums.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from edgerec.runtime.errors import EdgeRecError, ErrorCode

MANIFEST = "manifest.json"
FORMAT = "edgerec-bundle/1"


@dataclasses.dataclass(frozen=True)
class EngineEntry:
    """One model file of the bundle and what it is for."""

    file: str
    precision: str  # "fp32", "fp32-optimized", "int8-dynamic", "int8-static", "fp16"
    device: str  # "cpu" or "gpu": where this precision is meant to run
    gate: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk."""

    root: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.manifest["model_name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def engines(self) -> list[EngineEntry]:
        return [EngineEntry(**e) for e in self.manifest["engines"]]

    def engine(self, precision: str | None = None, device: str = "cpu") -> EngineEntry:
        """The engine of that precision, or the bundle's default for `device`."""
        wanted = precision or self.manifest["default_engine"][device]
        for entry in self.engines:
            if entry.precision == wanted:
                return entry
        known = ", ".join(e.precision for e in self.engines)
        raise EdgeRecError(ErrorCode.NOT_FOUND, f"bundle {self.root} has no {wanted!r} engine (it has: {known})")

    def path(self, relative: str) -> Path:
        return self.root / relative

    @property
    def tokenizer_path(self) -> Path:
        return self.root / self.manifest["tokenizer"]

    @property
    def catalog_path(self) -> Path:
        return self.root / self.manifest["catalog"]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the sha256 of every file under `root` to `manifest` and write it."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {**manifest, "format": FORMAT, "files": {str(p.relative_to(root)): sha256_file(p) for p in files}}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


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
    if manifest.get("format") != FORMAT:
        raise EdgeRecError(ErrorCode.FAILED_PRECONDITION, f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
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
    return Bundle(root=root, manifest=manifest)


def pack(root: Path, archive: Path) -> Path:
    """Pack a verified bundle folder into `archive` (.tar.gz) with one top-level folder."""
    bundle = verify(root)
    archive = Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle.root, arcname=bundle.root.name)
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
