"""Shared fixtures.

Torch-free (the runtime's tests run in the runtime-only install):
- `tiny_bundle`: a real bundle (format 2, one `cross_encoder` model with
  fp32, int8-dynamic and fp16 variants) assembled from the committed tiny
  ONNX models in `tests/data/tiny_model/` (built with `onnx.helper` by
  `tests/data/make_tiny_model.py`), the real tokenizer and the synthetic
  shop's catalog; `tiny_bundle_archive`: it packed as a .tar.gz;
  `tiny_two_stage_bundle`: the same with the tiny two-tower ranker beside it.
- `server` (one per test module): a real gRPC server on 127.0.0.1 serving
  `tiny_bundle`'s fp32 variant with small batches (at most 8 pairs, 10 ms
  window); `channel`: a channel to it; `offline`: the same fp32 variant
  scored in-process, for exact comparisons.

Through the training stack (torch is imported inside these fixtures only):
- `tiny_data`: the synthetic shop (`edgerec.export.synthetic`) prepared into
  train/valid/test baskets (`PreparedData`).
- `tiny_checkpoint`: a randomly initialised 2-layer, 32-wide BERT with the
  real 30522-token vocabulary and tokenizer, saved as a real checkpoint over
  the synthetic shop's items.
- `exported_bundle`: the bundle `edgerec export`'s own functions build from
  `tiny_checkpoint` (ONNX export -> fusion -> int8 dynamic / int8 static /
  fp16 -> gate -> bundle), in a few seconds: the end-to-end path.
- `tiny_gate`: the loose gate bounds a random tiny model can meet.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgerec.core.bundle import ModelFiles, pack, write_bundle
from edgerec.core.featurize import Featurizer, FeaturizerConfig
from edgerec.core.signatures import CROSS_ENCODER

TINY_MODEL_DIR = Path(__file__).parent / "data" / "tiny_model"
TINY_FEATURIZER = FeaturizerConfig(max_length=64, max_item_tokens=16)
TINY_VARIANTS = ("fp32", "int8-dynamic", "fp16")


def tiny_ranker_parts() -> tuple[list[ModelFiles], dict[str, Path]]:
    """The committed tiny two-tower ranker (`tests/data/make_tiny_model.py`): its two models and data."""
    from edgerec.core.signatures import ITEM_TOWER, RANKER

    models = [
        ModelFiles(
            name=signature.name, signature=signature, variants={"fp32": TINY_MODEL_DIR / f"{signature.name}.fp32.onnx"},
            default_variant={"cpu": "fp32", "gpu": "fp32"},
        )
        for signature in (ITEM_TOWER, RANKER)
    ]
    data = {
        "item_embeddings": TINY_MODEL_DIR / "ranker_embeddings.npy",
        "behaviour_tables": TINY_MODEL_DIR / "behaviour_tables.npz",
    }
    return models, data


def build_tiny_bundle(bundles_dir: Path, version: str = "test", name: str = "tiny", ranker: bool = False) -> Path:
    """Assemble `<bundles_dir>/<name>-<version>/` from the committed tiny models; no torch, no onnx.
    `ranker`: with the tiny two-tower ranker beside the cross-encoder (a two-stage bundle)."""
    featurizer = Featurizer.from_files(TINY_MODEL_DIR / "tokenizer.json", TINY_FEATURIZER)
    model = ModelFiles(
        name=CROSS_ENCODER.name,
        signature=CROSS_ENCODER,
        variants={p: TINY_MODEL_DIR / f"model.{p}.onnx" for p in TINY_VARIANTS},
        default_variant={"cpu": "int8-dynamic", "gpu": "fp16"},
        info={"note": "tiny hashed-embedding model built with onnx.helper (tests/data/make_tiny_model.py)"},
    )
    items = json.loads((TINY_MODEL_DIR / "items.json").read_text())
    root = Path(bundles_dir) / f"{name}-{version}"
    ranker_models, data = tiny_ranker_parts() if ranker else ([], None)
    write_bundle(
        root, name=name, version=version, models=[model, *ranker_models], tokenizer_path=TINY_MODEL_DIR / "tokenizer.json",
        items=items, featurizer=featurizer, data=data,
    )
    return root


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The torch-free tiny bundle (`build_tiny_bundle`), default variants cpu int8-dynamic, gpu fp16."""
    return build_tiny_bundle(tmp_path_factory.mktemp("bundles"))


@pytest.fixture(scope="session")
def tiny_two_stage_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("bundles"), version="two", ranker=True)


@pytest.fixture(scope="session")
def tiny_bundle_archive(tiny_bundle: Path) -> Path:
    """`tiny_bundle` packed into `<folder>.tar.gz` beside it."""
    return pack(tiny_bundle, tiny_bundle.parent / f"{tiny_bundle.name}.tar.gz")


# -- the training stack (torch) ----------------------------------------------------
@pytest.fixture(scope="session")
def tiny_gate():
    """Gate bounds for the tiny random model: its scores are nearly tied, so int8 (and even fp16) reorder
    them; the gate checks the mechanics, not quality. Parity bounds stay real for fp32."""
    from edgerec.export.validate import GateConfig

    return GateConfig(int8_max_abs_diff=1.0, int8_max_quantity_rel_diff=1.0, int8_max_metric_drop=1.0, fp16_max_metric_drop=1.0)


def tiny_model(seed: int = 0):
    """The randomly initialised tiny model behind `tiny_checkpoint` (same seed: same weights)."""
    import torch

    from edgerec.export.model import CrossEncoderRecommender, tiny_config

    torch.manual_seed(seed)
    return CrossEncoderRecommender(tiny_config()).eval()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory):
    """The synthetic shop (40 customers, 60 items) prepared into train/valid/test baskets."""
    from edgerec.export.data import DataConfig
    from edgerec.export.samples import prepare
    from edgerec.export.synthetic import write_synthetic_csv

    csv = write_synthetic_csv(tmp_path_factory.mktemp("shop") / "online_retail.csv.gz")
    return prepare(DataConfig(csv_path=csv))


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`<tmp>/checkpoint`: tiny random BERT, the real tokenizer, the synthetic shop's items.

    Its `edgerec.json` records the synthetic data's settings like `edgerec train`
    does, so `edgerec eval` and `edgerec export --artifacts <tmp>` accept it.
    """
    from edgerec.core.settings import to_jsonable
    from edgerec.export.model import pretrained_path, save_checkpoint
    from edgerec.export.train import TrainConfig

    path = tmp_path_factory.mktemp("tiny") / "checkpoint"
    train_settings = TrainConfig(data=tiny_data.config, featurizer=TINY_FEATURIZER, tiny=True, steps=0)
    save_checkpoint(
        path,
        tiny_model(),
        pretrained_path() / "tokenizer.json",
        TINY_FEATURIZER,
        dict(tiny_data.items),
        {
            "data_fingerprint": tiny_data.fingerprint,
            "base_model": "tiny-random-bert (never trained)",
            "num_layers": 2,
            "train_settings": to_jsonable(train_settings),
        },
    )
    return path


@pytest.fixture(scope="session")
def exported_bundle(tiny_checkpoint: Path, tiny_data, tiny_gate) -> Path:
    """A bundle folder built from `tiny_checkpoint` by the real export path.

    ONNX export -> fusion -> int8 dynamic / int8 static / fp16 -> validation
    gate (on 8 synthetic validation baskets, with `tiny_gate` bounds) ->
    bundle, all with `edgerec export`'s own functions. It lives in
    `<tmp>/bundles/tiny-test/` (with `<tmp>/bundles/latest`) and holds every
    precision; default variants: cpu int8-dynamic, gpu fp16.
    """
    from edgerec.export.model import load_checkpoint
    from edgerec.export.pipeline import ExportConfig, bundle_export, gate_variants
    from edgerec.export.validate import enforce
    from edgerec.export.variants import PRECISIONS, build_variants, encode_batches

    config = ExportConfig(
        artifacts=tiny_checkpoint.parent, bundle_name="tiny", version="test", cpu_default="int8-dynamic", batch_size=32
    )
    checkpoint = load_checkpoint(tiny_checkpoint)
    featurizer = checkpoint.featurizer
    variants = build_variants(
        checkpoint.model,
        config.artifacts / "export" / "variants",
        PRECISIONS,
        calibration=encode_batches(tiny_data.splits["train"][:8], featurizer, batch_size=16),
        pad_id=featurizer.pad_id,
        progress=False,
    )
    outcome = gate_variants(variants, checkpoint, tiny_data.splits["valid"][:8], config, tiny_gate)
    enforce(outcome.results)
    return bundle_export(
        config,
        checkpoint,
        variants,
        outcome,
        evaluation={"note": "tiny random model: not evaluated"},
        data_fingerprint=tiny_data.fingerprint,
        gate=tiny_gate,
    )


@pytest.fixture(scope="module")
def server(tiny_bundle: Path):
    """`edgerec serve` in-process on 127.0.0.1: the fp32 variant (compared exactly with `offline`), small batches."""
    from edgerec.runtime.server import start_server
    from server_helpers import make_config

    handle = start_server(make_config(tiny_bundle, precision="fp32", max_batch_size=8, max_queue_delay_ms=10))
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def channel(server):
    import grpc

    with grpc.insecure_channel(server.target) as opened:
        yield opened


@pytest.fixture(scope="module")
def offline(tiny_bundle: Path):
    """`tiny_bundle`'s fp32 variant scored in-process, as the server scores it (`server_helpers.OfflineModel`)."""
    from server_helpers import OfflineModel

    return OfflineModel(tiny_bundle, "fp32")
