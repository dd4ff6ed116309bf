"""Assembles a model bundle folder, and packs one into a .tar.gz (`edgerec bundle`).

A bundle is everything an edge box needs to serve one model version: the
engines, the tokenizer, the pre-tokenized item catalog and a manifest that
describes the engines and lists every file's sha256 (format and loading:
`edgerec.runtime.bundle`). Bundles live in `<bundles_dir>/<name>-<version>/`
and `<bundles_dir>/latest` points at the newest one.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgerec.runtime.bundle import open_bundle, pack, write_manifest
from edgerec.runtime.errors import EdgeRecError
from edgerec.runtime.featurize import Featurizer, save_catalog
from edgerec.settings import to_jsonable

log = logging.getLogger(__name__)

LATEST = "latest"
TOKENIZER = "tokenizer.json"
CATALOG = "catalog.json"
# Where each precision is meant to run: fp16 needs a GPU, the rest are CPU engines.
DEVICE_OF = {"fp32": "cpu", "fp32-optimized": "cpu", "int8-dynamic": "cpu", "int8-static": "cpu", "fp16": "gpu"}


@dataclasses.dataclass(frozen=True)
class EngineArtifact:
    """One engine file produced by the export, with its gate result."""

    precision: str
    path: Path
    gate: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def device(self) -> str:
        return DEVICE_OF[self.precision]

    @property
    def file_name(self) -> str:
        return f"model.{self.precision}.onnx"


def build_bundle(
    bundles_dir: Path,
    *,
    model_name: str,
    version: str,
    engines: Sequence[EngineArtifact],
    default_engine: Mapping[str, str],
    tokenizer_path: Path,
    items: Mapping[str, str],
    featurizer: Featurizer,
    description: Mapping[str, Any],
) -> Path:
    """Write `<bundles_dir>/<model_name>-<version>/` and point `latest` at it; returns the folder.

    `description` holds the manifest's descriptive keys (inputs, outputs, opset,
    exporter, metrics, data_fingerprint, fusions, ...); this function adds the
    engines, featurizer, tokenizer and catalog entries and the checksums.
    """
    precisions = {engine.precision for engine in engines}
    missing = {device: p for device, p in default_engine.items() if p not in precisions}
    if missing:
        raise ValueError(f"default engine(s) {missing} are not among the bundled engines {sorted(precisions)}")
    root = Path(bundles_dir) / f"{model_name}-{version}"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for engine in engines:
        shutil.copyfile(engine.path, root / engine.file_name)
    shutil.copyfile(tokenizer_path, root / TOKENIZER)
    save_catalog(root / CATALOG, items, featurizer)
    manifest = {
        **to_jsonable(dict(description)),
        "model_name": model_name,
        "version": version,
        "default_engine": dict(default_engine),
        "engines": [
            {"file": e.file_name, "precision": e.precision, "device": e.device, "gate": to_jsonable(e.gate)}
            for e in engines
        ],
        "featurizer": to_jsonable(featurizer.config),
        "tokenizer": TOKENIZER,
        "catalog": CATALOG,
    }
    write_manifest(root, manifest)
    point_latest(root)
    log.info("bundle %s written (%d engines)", root, len(engines))
    return root


def point_latest(root: Path) -> None:
    """Make `<root's parent>/latest` a relative symlink to `root`, replacing any older link atomically."""
    link = root.parent / LATEST
    temporary = root.parent / f".{LATEST}.{os.getpid()}"
    if temporary.is_symlink() or temporary.exists():
        temporary.unlink()
    temporary.symlink_to(root.name, target_is_directory=True)
    os.replace(temporary, link)


def archive_path(root: Path) -> Path:
    """The default archive for a bundle folder: beside it, `<folder name>.tar.gz`."""
    root = Path(root).resolve()
    return root.parent / f"{root.name}.tar.gz"


def pack_bundle(root: Path, archive: Path | None = None) -> Path:
    """Verify `root` and pack it into `archive` (default: beside the folder)."""
    return pack(Path(root).resolve(), archive or archive_path(root))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="bundle folder to pack (e.g. artifacts/bundles/latest)")
    parser.add_argument(
        "-o", "--output", type=Path, default=None, help="archive to write (default: <folder>.tar.gz beside the folder)"
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("edgerec").setLevel(logging.INFO)  # our steps; libraries stay at WARNING
    try:
        archive = pack_bundle(args.folder, args.output)
        with tempfile.TemporaryDirectory(prefix="edgerec-verify-") as scratch:
            bundle = open_bundle(archive, unpack_dir=Path(scratch))  # proves the archive unpacks and verifies
            files = len(bundle.manifest["files"])
    except EdgeRecError as exc:
        print(f"edgerec bundle: {exc}", file=sys.stderr)
        return 1
    print(f"{archive} ({archive.stat().st_size / 1e6:.1f} MB, {files} files verified)")
    return 0
