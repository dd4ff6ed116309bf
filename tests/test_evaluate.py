"""Scoring keeps candidate order, slices hold the right candidates, `edgerec eval` writes both reports."""

import json
import math
import shutil

import numpy as np
import pytest

from edgerec.cli import main
from edgerec.export.evaluate import basket_pairs, cold_only, ranking_report, score_baskets, torch_scorer
from edgerec.export.model import load_checkpoint
from edgerec.export.samples import Basket


def test_score_baskets_restores_basket_and_candidate_order(tiny_checkpoint, tiny_data):
    featurizer = load_checkpoint(tiny_checkpoint).featurizer
    baskets = tiny_data.splits["test"][:6]

    def scorer(batch):  # a pure function of each row, so order mistakes show
        ids = batch.input_ids * batch.attention_mask
        return (ids % 9973).sum(axis=1) / 1e6, batch.attention_mask.sum(axis=1).astype(float)

    probs, lengths = score_baskets(baskets, featurizer, scorer, batch_size=7, progress=False)
    expected = [scorer(featurizer.pack([pair])) for pair in basket_pairs(baskets, featurizer)]
    assert probs.shape == (sum(len(b.candidates) for b in baskets),)
    np.testing.assert_allclose(probs, [e[0][0] for e in expected])
    np.testing.assert_allclose(lengths, [e[1][0] for e in expected])


def test_torch_scorer_returns_probabilities_and_positive_quantities(tiny_checkpoint, tiny_data):
    checkpoint = load_checkpoint(tiny_checkpoint)
    probs, quantities = score_baskets(
        tiny_data.splits["valid"][:3], checkpoint.featurizer, torch_scorer(checkpoint.model), progress=False
    )
    assert np.all((probs > 0) & (probs < 1)) and np.all(quantities > 0)


def make_basket(customer, rows):
    """rows: (item, label, quantity, repeat, cold, kind)."""
    items, labels, quantities, repeat, cold, kinds = zip(*rows)
    return Basket(customer, "inv-" + customer, "2011-11-02 10:00:00", (("h", 1),), items, labels, quantities, repeat, cold, kinds)


def test_ranking_report_slices_on_a_hand_made_basket():
    basket = make_basket(
        "u1",
        [
            ("a", 1, 4.0, True, False, "positive"),
            ("b", 0, 0.0, True, False, "history"),
            ("c", 1, 2.0, False, False, "positive"),
            ("d", 0, 0.0, False, False, "popular"),
            ("e", 0, 0.0, False, True, "cold"),  # a dedicated cold negative: cold slice only
            ("f", 1, 1.0, False, True, "positive"),
        ],
    )
    probs = np.array([0.9, 0.8, 0.3, 0.4, 0.95, 0.1])
    quantities = np.array([4.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    report = ranking_report([basket], probs, quantities)
    # all (e left out): ranking a, b, d, c, f -> positives at ranks 1, 4, 5
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert report["all"]["ndcg@10"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(6)) / ideal)
    assert report["all"]["candidates"] == 5 and report["all"]["positives"] == 3
    assert report["all"]["auc"] == pytest.approx(2 / 6)  # of 6 pairs, a beats b and d; c and f beat neither
    assert report["repeat"]["auc"] == pytest.approx(1.0) and report["repeat"]["mrr"] == pytest.approx(1.0)
    assert report["new"]["candidates"] == 3 and report["new"]["mrr"] == pytest.approx(0.5)
    assert report["cold"]["candidates"] == 2 and report["cold"]["auc"] == pytest.approx(0.0)
    assert report["all"]["rmse_quantity"] == pytest.approx(math.sqrt((0 + 1 + 0) / 3))
    assert report["all"]["rmse_log_quantity"] == pytest.approx(math.sqrt(math.log(2) ** 2 / 3))
    assert report["all"]["ranked_baskets"] == 1 and report["all"]["customers"] == 1
    assert cold_only([basket])[0].candidates == ("e", "f")


def test_ranking_report_rejects_misaligned_scores():
    basket = make_basket("u1", [("a", 1, 1.0, False, False, "positive"), ("b", 0, 0.0, False, False, "uniform")])
    with pytest.raises(ValueError, match="scores"):
        ranking_report([basket], np.array([0.5]))


def test_edgerec_eval_writes_json_and_markdown_reports(tiny_checkpoint, tmp_path, capsys):
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, checkpoint)
    code = main(
        ["eval", "--checkpoint", str(checkpoint), "--data-dir", str(tmp_path / "data"), "--baskets", "8", "--cold-baskets", "8"]
    )
    assert code == 0
    report = json.loads((checkpoint / "eval_report.json").read_text())
    assert report["sizes"]["baskets"] == 8 and report["sizes"]["split"] == "test"
    models = report["results"]
    assert {"popularity", "repeat frequency", "co-occurrence", "ALS (implicit)"} <= set(models)
    model = next(name for name in models if name.startswith("edgerec"))
    for slice_name in ("all", "repeat", "new", "cold"):
        for metric in ("auc", "gauc", "ndcg@10", "hr@10", "mrr", "rmse_log_quantity", "ranked_baskets"):
            assert metric in models[model][slice_name]
    assert not math.isnan(models[model]["all"]["ndcg@10"])
    assert not math.isnan(models[model]["all"]["rmse_log_quantity"])
    table = (checkpoint / "eval_report.md").read_text()
    assert "| popularity |" in table and "cold-start items vs cold negatives" in table
    assert "Offline evaluation" in capsys.readouterr().out
