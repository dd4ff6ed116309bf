"""Assembles a bundle folder from the export's models, and packs one into a .tar.gz (`edgerec bundle`).

A bundle is everything an edge box needs to serve one model version: each
model's variants (precision files), the tokenizer, the pre-tokenized item
catalog and a manifest that describes them and lists every file's sha256
(format, layout, writing and loading: `edgerec.core.bundle`). The export
hands `build_bundle` one `edgerec.core.bundle.ModelFiles` per model (today
the cross-encoder; a second model is one more entry). Bundles live in
`<bundles_dir>/<name>-<version>/` and `<bundles_dir>/latest` points at the
newest one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgerec.core.bundle import MANIFEST, ModelFiles, open_bundle, pack, verify, write_bundle, write_manifest
from edgerec.core.errors import EdgeRecError
from edgerec.core.featurize import Featurizer
from edgerec.core.settings import to_jsonable

log = logging.getLogger(__name__)

LATEST = "latest"
# Manifest keys of a model entry that the bundle writer owns; `record_model_info` may not set them.
_MODEL_KEYS = ("signature", "variants", "default_variant")


def build_bundle(
    bundles_dir: Path,
    *,
    name: str,
    version: str,
    models: Sequence[ModelFiles],
    tokenizer_path: Path,
    items: Mapping[str, str],
    featurizer: Featurizer,
    data: Mapping[str, Path] | None = None,
) -> Path:
    """Write `<bundles_dir>/<name>-<version>/` (`edgerec.core.bundle.write_bundle`) and point `latest` at it.

    One `ModelFiles` per model (its signature, a variant file per precision,
    default variants, gate verdicts, descriptive keys). An older folder of the
    same name and version is replaced; `data` (`core.bundle.DATA_KINDS` name -> file)
    is copied in beside the models. Returns the folder. Raises ValueError for repeated
    model names, default variants that are not among a model's variants, or unknown data.
    """
    names = [model.name for model in models]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"a bundle needs models of distinct names, got {names}")
    root = Path(bundles_dir) / f"{name}-{version}"
    write_bundle(
        root, name=name, version=version, models=models, tokenizer_path=tokenizer_path, items=items,
        featurizer=featurizer, data=data,
    )
    point_latest(root)
    counts = ", ".join(f"{model.name}: {len(model.variants)} variants" for model in models)
    log.info("bundle %s written (%s)", root, counts)
    return root


def record_model_info(root: Path, model: str, info: Mapping[str, Any]) -> None:
    """Add descriptive keys to one model's manifest entry of a written bundle, and rewrite the checksums.

    For steps that run on the finished bundle (the TensorRT engine cache).
    Raises EdgeRecError if the bundle does not verify, KeyError for an unknown
    model, ValueError for a key `build_bundle` owns.
    """
    clashing = sorted(set(info) & set(_MODEL_KEYS))
    if clashing:
        raise ValueError(f"record_model_info may not set {clashing}")
    root = Path(root)
    verify(root)  # never re-checksum files that no longer match their manifest
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["models"][model].update(to_jsonable(dict(info)))
    write_manifest(root, {k: v for k, v in manifest.items() if k not in ("format", "files")})


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
    """Verify `root` and pack it into `archive` (default: beside the folder); dot-folders are left out."""
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
