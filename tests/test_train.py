"""Fine-tuning on the synthetic shop with a tiny random BERT: the loss falls, the seed fixes the run."""

import argparse
import json

import pytest
import torch
from safetensors.torch import load_file

from edgerec.export.model import load_checkpoint
from edgerec.export.train import TrainConfig, config_from_arguments, configure, train


def tiny_settings(tiny_data, tmp_path, **overrides) -> TrainConfig:
    values = dict(
        data=tiny_data.config,
        output_dir=tmp_path / "checkpoint",
        data_dir=tmp_path / "data",
        tiny=True,
        steps=120,
        batch_size=32,
        learning_rate=2e-3,
        valid_baskets=6,
        threads=1,
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    return train(tiny_settings(tiny_data, tmp_path_factory.mktemp("train")))


def test_loss_falls(trained):
    curve = [step["loss"] for step in json.loads((trained / "train_report.json").read_text())["loss_curve"]]
    assert len(curve) == 120
    first, last = sum(curve[:20]) / 20, sum(curve[-20:]) / 20
    assert last < 0.9 * first, (first, last)


def test_checkpoint_and_report(trained, tiny_data):
    checkpoint = load_checkpoint(trained)
    assert checkpoint.items == tiny_data.items  # every item, cold ones included
    assert checkpoint.featurizer.config.max_item_tokens == 16
    assert checkpoint.model.pooling == "candidate_mean"  # saved in config.json, restored on load
    assert checkpoint.info["data_fingerprint"] == tiny_data.fingerprint
    report = json.loads((trained / "train_report.json").read_text())
    assert report["data_fingerprint"] == tiny_data.fingerprint
    assert report["settings"]["steps"] == 120 and report["settings"]["tiny"] is True
    assert report["samples"]["train_pairs"] == 120 * 32
    assert report["timings"]["seconds_per_step"] > 0
    assert set(report["validation"]["slices"]) == {"all", "repeat", "new", "cold"}
    assert (trained / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_model_other_seed_other_model(tiny_data, tmp_path):
    def run(seed, folder):
        path = train(tiny_settings(tiny_data, tmp_path / folder, steps=6, valid_baskets=0, seed=seed))
        curve = [s["loss"] for s in json.loads((path / "train_report.json").read_text())["loss_curve"]]
        return curve, load_file(str(path / "model.safetensors"))

    curve_a, weights_a = run(0, "a")
    curve_b, weights_b = run(0, "b")
    curve_c, _ = run(1, "c")
    assert curve_a == curve_b
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert curve_a != curve_c


def test_flags_reach_every_settings_group(tmp_path):
    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(
        ["--steps", "3", "--max-length", "64", "--csv-path", str(tmp_path / "x.csv.gz"), "--tiny", "--sample-seed", "5"]
    )
    config = config_from_arguments(args)
    assert config.steps == 3 and config.tiny
    assert config.featurizer.max_length == 64 and config.featurizer.max_item_tokens == 16
    assert config.data.csv_path == tmp_path / "x.csv.gz" and config.data.sample_seed == 5
    assert "--learning-rate" in parser.format_help()
