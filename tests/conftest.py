"""Shared fixtures: synthetic shop data, a tiny random checkpoint and a real bundle built from it.

- `tiny_data`: the synthetic shop (`edgerec.export.synthetic`) prepared into
  train/valid/test baskets (`PreparedData`).
- `tiny_checkpoint`: a randomly initialised 2-layer, 32-wide BERT with the
  real 30522-token vocabulary and tokenizer, saved as a real checkpoint over
  the synthetic shop's items.
- `tiny_bundle`: the bundle folder `edgerec export`'s own functions build from
  it (ONNX export -> fusion -> int8 dynamic / int8 static / fp16 -> gate ->
  bundle), in a few seconds; `tiny_bundle_archive`: it packed as a .tar.gz.
- `tiny_gate`: the loose gate bounds a random tiny model can meet.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgerec.export.bundle import pack_bundle
from edgerec.export.data import DataConfig
from edgerec.export.engines import PRECISIONS, build_engines, encode_batches
from edgerec.export.model import CrossEncoderRecommender, load_checkpoint, pretrained_path, save_checkpoint, tiny_config
from edgerec.export.pipeline import ExportConfig, bundle_export, gate_engines
from edgerec.export.samples import PreparedData, prepare
from edgerec.export.synthetic import write_synthetic_csv
from edgerec.export.train import TrainConfig
from edgerec.export.validate import GateConfig, enforce
from edgerec.runtime.featurize import FeaturizerConfig
from edgerec.settings import to_jsonable

# Precisions the tiny bundle holds: every engine the export makes.
TINY_PRECISIONS = PRECISIONS
# The tiny model is 32 wide with random weights: its scores are nearly tied, so int8 (and even
# fp16) reorder them; its gate checks the mechanics, not quality. Parity bounds stay real for fp32.
TINY_GATE = GateConfig(int8_max_abs_diff=1.0, int8_max_metric_drop=1.0, fp16_max_metric_drop=1.0)
TINY_FEATURIZER = FeaturizerConfig(max_length=64, max_item_tokens=16)


def tiny_model(seed: int = 0) -> CrossEncoderRecommender:
    """The randomly initialised tiny model behind `tiny_checkpoint` (same seed: same weights)."""
    torch.manual_seed(seed)
    return CrossEncoderRecommender(tiny_config()).eval()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    """The synthetic shop (40 customers, 60 items) prepared into train/valid/test baskets."""
    csv = write_synthetic_csv(tmp_path_factory.mktemp("shop") / "online_retail.csv.gz")
    return prepare(DataConfig(csv_path=csv))


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_data: PreparedData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`<tmp>/checkpoint`: tiny random BERT, the real tokenizer, the synthetic shop's items.

    Its `edgerec.json` records the synthetic data's settings like `edgerec train`
    does, so `edgerec eval` and `edgerec export --artifacts <tmp>` accept it.
    """
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
def tiny_bundle(tiny_checkpoint: Path, tiny_data: PreparedData) -> Path:
    """A bundle folder built from `tiny_checkpoint` by the real export path.

    ONNX export -> fusion -> int8 dynamic / int8 static / fp16 -> validation
    gate (on 8 synthetic validation baskets, with `TINY_GATE` bounds) ->
    bundle, all with `edgerec export`'s own functions. It lives in
    `<tmp>/bundles/tiny-test/` (with `<tmp>/bundles/latest`) and holds every
    precision; default engines: cpu int8-dynamic, gpu fp16.
    """
    config = ExportConfig(
        artifacts=tiny_checkpoint.parent, model_name="tiny", version="test", cpu_default="int8-dynamic", batch_size=32
    )
    checkpoint = load_checkpoint(tiny_checkpoint)
    featurizer = checkpoint.featurizer
    engines = build_engines(
        checkpoint.model,
        config.artifacts / "export" / "engines",
        TINY_PRECISIONS,
        calibration=encode_batches(tiny_data.splits["train"][:8], featurizer, batch_size=16),
        pad_id=featurizer.pad_id,
        progress=False,
    )
    outcome = gate_engines(engines, checkpoint, tiny_data.splits["valid"][:8], config, TINY_GATE)
    enforce(outcome.results)
    return bundle_export(
        config,
        checkpoint,
        engines,
        outcome,
        evaluation={"note": "tiny random model: not evaluated"},
        data_fingerprint=tiny_data.fingerprint,
        gate=TINY_GATE,
    )


@pytest.fixture(scope="session")
def tiny_gate() -> GateConfig:
    """Gate bounds for the tiny random model (`TINY_GATE`)."""
    return TINY_GATE


@pytest.fixture(scope="session")
def tiny_bundle_archive(tiny_bundle: Path) -> Path:
    """`tiny_bundle` packed into `<folder>.tar.gz` beside it."""
    return pack_bundle(tiny_bundle)
