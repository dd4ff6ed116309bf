"""Scoring keeps candidate order, slices hold the right candidates, `edgerec eval` writes both reports."""

import collections
import json
import math
import shutil

import numpy as np
import pytest

from edgerec.cli import main
from edgerec.export.evaluate import (
    basket_pairs,
    bootstrap_intervals,
    bootstrap_replicates,
    cold_only,
    main_only,
    paired_intervals,
    popularity_negatives,
    ranking_report,
    resample_weights,
    score_baskets,
    torch_scorer,
    two_stage_scores,
)
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


# -- popularity-drawn negatives and bootstrap intervals (issue 12) ------------------------------------
ITEMS = [f"i{n}" for n in range(100)]
POPULARITY = {item: float(n + 1) for n, item in enumerate(ITEMS)}  # i99 is 100x as popular as i0


def synthetic_baskets(count: int = 90, customers: int = 30, seed: int = 0) -> list[Basket]:
    """Positives drawn by popularity (what shops sell), stored negatives uniform, two dedicated cold negatives."""
    rng = np.random.default_rng(seed)
    p = np.array([POPULARITY[i] for i in ITEMS]) / sum(POPULARITY.values())
    baskets = []
    for b in range(count):
        positives = list(rng.choice(ITEMS, size=3, replace=False, p=p))
        negatives = [i for i in rng.choice(ITEMS, size=30, replace=False) if i not in positives][:20]
        history = tuple((str(i), 1) for i in rng.choice(ITEMS, size=4, replace=False))
        past = {item for item, _ in history}
        rows = [(i, 1, 2.0, "positive") for i in positives] + [(i, 0, 0.0, "uniform") for i in negatives]
        rows += [(f"cold{b}-{k}", 0, 0.0, "cold") for k in range(2)]
        items, labels, quantities, kinds = zip(*rows)
        baskets.append(
            Basket(f"u{b % customers}", f"inv{b}", "2011-11-02 10:00:00", history, tuple(str(i) for i in items), labels,
                   quantities, tuple(i in past for i in items), tuple(k == "cold" for k in kinds), kinds)
        )
    return baskets


def popularity_scores(baskets):
    return np.array([POPULARITY.get(c, 0.0) for b in baskets for c in b.candidates])


def test_popularity_negatives_replace_only_the_negatives():
    baskets = synthetic_baskets()
    exclude = {"inv0": {"i98", "i99"}}
    drawn = popularity_negatives(baskets, POPULARITY, seed=3, exclude=exclude)
    assert drawn == popularity_negatives(baskets, POPULARITY, seed=3, exclude=exclude)  # seeded
    assert drawn != popularity_negatives(baskets, POPULARITY, seed=4, exclude=exclude)
    for old, new in zip(baskets, drawn):
        kept = {c: (q, r, k) for c, y, q, r, k in zip(old.candidates, old.labels, old.quantities, old.is_repeat, old.is_cold) if y}
        assert {c: (q, r, k) for c, y, q, r, k in zip(new.candidates, new.labels, new.quantities, new.is_repeat, new.is_cold) if y} == kept
        negatives = [c for c, y in zip(new.candidates, new.labels) if not y]
        assert len(negatives) == len(set(negatives)) == 20  # as many as the stored non-cold negatives
        assert not set(negatives) & set(kept) and set(negatives) <= set(ITEMS)
        assert all(r == (c in dict(new.history)) for c, r in zip(new.candidates, new.is_repeat))
        assert set(new.kinds) <= {"positive", "popular"} and not any(new.is_cold)
    assert not {"i98", "i99"} & set(drawn[0].candidates)
    one_each = popularity_negatives(baskets * 20, POPULARITY, seed=0, negatives=1)
    counts = collections.Counter(c for b in one_each for c, y in zip(b.candidates, b.labels) if not y)
    assert counts["i99"] > 10 * counts["i0"]  # drawn in proportion to popularity


def test_a_popularity_model_looks_good_on_uniform_negatives_only():
    stored = main_only(synthetic_baskets(200))
    drawn = popularity_negatives(stored, POPULARITY, seed=0)
    assert ranking_report(stored, popularity_scores(stored))["all"]["auc"] > 0.6  # 2/3 in expectation
    assert abs(ranking_report(drawn, popularity_scores(drawn))["all"]["auc"] - 0.5) < 0.06


@pytest.mark.parametrize("unit", ["basket", "customer"])
def test_each_bootstrap_replicate_is_the_report_of_its_resample(unit):
    baskets = synthetic_baskets(60, customers=12)
    scores = popularity_scores(baskets) + np.random.default_rng(1).normal(0, 30, sum(len(b.candidates) for b in baskets))
    scores[:5] = scores[5]  # some ties: half credit in GAUC
    weights = resample_weights(baskets, n_resamples=4, seed=7, unit=unit)
    replicates = bootstrap_replicates(baskets, scores, n_resamples=4, seed=7, unit=unit)
    bounds = np.cumsum([0] + [len(b.candidates) for b in baskets])
    for r in range(4):
        chosen = [b for b in range(len(baskets)) for _ in range(int(weights[b, r]))]
        resample = [baskets[b] for b in chosen]
        report = ranking_report(resample, np.concatenate([scores[bounds[b] : bounds[b + 1]] for b in chosen]))
        for name in ("all", "repeat", "new", "cold"):
            for metric in ("ndcg@10", "hr@10", "mrr", "gauc"):
                expected, got = report[name][metric], replicates[name][metric][r]
                assert (np.isnan(expected) and np.isnan(got)) or got == pytest.approx(expected), (name, metric, r)


def test_bootstrap_intervals_hold_the_estimate_and_paired_ones_tell_models_apart():
    baskets = synthetic_baskets(120, customers=40)
    perfect = np.array([y for b in baskets for y in b.labels], dtype=float)
    noisy = popularity_scores(baskets)
    intervals = bootstrap_intervals(baskets, noisy, n_resamples=200, seed=0)
    report = ranking_report(baskets, noisy)
    for metric in ("ndcg@10", "gauc"):
        entry = intervals["all"][metric]
        assert entry["estimate"] == report["all"][metric]
        assert entry["low"] < entry["estimate"] < entry["high"]
    better = paired_intervals(baskets, perfect, noisy, n_resamples=200, seed=0)
    assert better["all"]["ndcg@10"]["low"] > 0 and better["all"]["gauc"]["low"] > 0
    same = paired_intervals(baskets, noisy, noisy, n_resamples=50, seed=0)
    assert same["all"]["gauc"] == {"estimate": 0.0, "low": 0.0, "high": 0.0}


def test_two_stage_re_ranks_each_baskets_top_r_by_the_second_stage():
    positives_last = [("a", 0, 0.0, False, False, "uniform"), ("b", 0, 0.0, False, False, "uniform"),
                      ("c", 1, 1.0, False, False, "positive"), ("d", 0, 0.0, False, False, "uniform")]
    baskets = [make_basket("u1", positives_last), make_basket("u2", positives_last)]
    first = np.array([0.9, 0.8, 0.7, 0.1, 0.9, 0.8, 0.7, 0.1])  # the positive c is third by the first stage
    second = np.array([0.2, 0.1, 0.6, 0.9, 0.2, 0.1, 0.6, 0.9])  # the second stage knows better
    order, probabilities = two_stage_scores(baskets, first, second, top=3)
    # top 3 by first (a, b, c) re-ranked by second: c, a, b; then d, left to the first stage
    assert list(np.argsort(-order[:4], kind="stable")) == [2, 0, 1, 3]
    assert probabilities.tolist() == [0.2, 0.1, 0.6, 0.1] * 2  # the stage that placed it
    assert ranking_report(baskets, order)["all"]["mrr"] == pytest.approx(1.0)
    assert ranking_report(baskets, first)["all"]["mrr"] == pytest.approx(1 / 3)
    alone, _ = two_stage_scores(baskets, first, second, top=0)
    assert alone.tolist() == first.tolist()  # R = 0: the first stage alone
    everything, _ = two_stage_scores(baskets, first, second, top=10)  # R past the basket: the second stage alone
    assert list(np.argsort(-everything[:4])) == list(np.argsort(-second[:4]))
    with pytest.raises(ValueError, match="candidates"):
        two_stage_scores(baskets, first[:3], second, top=2)
