"""The two-tower ranker as ONNX (export/ranker_onnx.py) on tiny data: signatures, parity, independence, the gate.

A tiny random item tower and a tiny ranker trained for a few epochs on the
synthetic shop are exported (fp32, fused fp32 and int8 dynamic item tower;
fp32 and int8 dynamic ranker) and compared with PyTorch. Tolerances:
- fp32: |logit difference| <= FP32_LOGIT_TOL and item embeddings within
  FP32_EMBEDDING_TOL (float rounding of a different kernel order);
- int8 dynamic: |logit difference| <= INT8_LOGIT_TOL (measured 0.33 on the
  validation customers) and item embeddings with cosine >= INT8_MIN_COSINE to
  PyTorch's (measured 0.99996); an int8 ranker's logit moves by up to
  INT8_BATCH_MATE_TOL with the other candidates of its call (measured 0.34-0.49
  over 5 customers of 60 candidates, each scored alone and together).
"""

import dataclasses

import numpy as np
import pytest
import torch

from edgerec.core.behaviour import NUM_FEATURES
from edgerec.core.sessions import create_session
from edgerec.core.signatures import ITEM_TOWER, RANKER
from edgerec.export.ranker import ItemTower, TwoTowerRanker
from edgerec.export.ranker_onnx import (
    FIXED_AXES,
    OnnxRanker,
    TorchRanker,
    build_ranker_variants,
    catalog_embeddings,
    combinations,
    export_ranker,
    gate_table,
    ranker_feeds,
    run_ranker_gate,
    score_customers,
)
from edgerec.export.ranker_train import RankerConfig, score_encoded, train_ranker, validation_set
from edgerec.export.validate import GateConfig, GateFailed, enforce

TINY = RankerConfig(tiny=True, epochs=3, batch_baskets=8, proj_dim=16, hidden=32, learning_rate=3e-3, threads=1)
FP32_LOGIT_TOL = 1e-5
FP32_EMBEDDING_TOL = 1e-5
INT8_LOGIT_TOL = 0.5
INT8_MIN_COSINE = 0.999
INT8_BATCH_MATE_TOL = 1.0
# Loose int8 quality bounds: the tiny model's scores are nearly tied, so int8 reorders them (conftest's tiny_gate).
TINY_GATE = GateConfig(int8_max_abs_diff=1.0, int8_max_quantity_rel_diff=1.0, int8_max_metric_drop=1.0)
NP_TYPES = {"tensor(int64)": "int64", "tensor(float)": "float32"}


@dataclasses.dataclass
class Exported:
    tower: ItemTower
    model: TwoTowerRanker
    item_ids: list[str]
    texts: list[str]
    embeddings: np.ndarray  # PyTorch's item embeddings, rows in item_ids order
    valid: object  # EncodedBaskets of the validation split
    variants: object  # RankerVariants


@pytest.fixture(scope="module")
def exported(tiny_data, tmp_path_factory) -> Exported:
    tower = ItemTower.tiny(seed=TINY.seed)
    ids = sorted(tiny_data.items)
    texts = [tiny_data.items[i] for i in ids]
    embeddings = tower.embed_items(texts, progress=False)
    valid = validation_set(tiny_data, {item: i for i, item in enumerate(ids)}, TINY, progress=False)
    run = train_ranker(tiny_data, TINY, embeddings=(ids, embeddings), valid=valid, progress=False)
    variants = build_ranker_variants(tower, run.model, tmp_path_factory.mktemp("ranker_onnx"))
    return Exported(tower, run.model, ids, texts, embeddings, valid, variants)


def random_customer(exported, candidates=40, history=6, seed=0):
    """One customer: `history` random past items, `candidates` random candidates (one without an embedding)
    with φ rows drawn from the validation baskets' (real features, not out-of-range noise)."""
    rng = np.random.default_rng(seed)
    n = len(exported.item_ids)
    past = (rng.choice(n, history, replace=False), rng.integers(1, 6, history).astype(np.float32),
            rng.uniform(1, 400, history).clip(max=365).astype(np.float32))
    rows = rng.integers(0, n, candidates)
    rows[1] = -1
    pool = np.concatenate(exported.valid.features)
    features = pool[rng.integers(0, len(pool), candidates)]
    assert features.shape == (candidates, NUM_FEATURES)
    return past, rows, features


# -- signatures -----------------------------------------------------------------------------------------


def test_every_exported_variant_has_its_signatures_names_dtypes_and_axes(exported):
    widths = {"dim": exported.tower.dim}
    graphs = [(ITEM_TOWER, p) for p in exported.variants.item_tower.values()] + [(RANKER, p) for p in exported.variants.ranker.values()]
    for signature, path in graphs:
        session = create_session(path, signature=signature).session
        for specs, actual in ((signature.inputs, session.get_inputs()), (signature.outputs, session.get_outputs())):
            assert [a.name for a in actual] == [s.name for s in specs], path
            for spec, tensor in zip(specs, actual):
                assert NP_TYPES[tensor.type] == spec.dtype, (path, spec.name)
                # named axes stay dynamic under their names; fixed axes (the embedding width) are the model's
                assert tensor.shape == [widths[d] if d in FIXED_AXES else d for d in spec.shape], (path, spec.name)


# -- the item tower -------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "fp32-optimized", "int8-dynamic"])
def test_the_catalog_embedded_by_the_exported_tower_equals_pytorchs(exported, precision):
    catalog = catalog_embeddings(exported.variants.item_tower[precision], exported.tower.featurizer, exported.texts)
    assert catalog.dtype == np.float32 and catalog.shape == exported.embeddings.shape
    if precision.startswith("fp32"):
        np.testing.assert_allclose(catalog, exported.embeddings, rtol=0, atol=FP32_EMBEDDING_TOL)
    else:
        cosine = (catalog * exported.embeddings).sum(1) / np.linalg.norm(catalog, axis=1) / np.linalg.norm(exported.embeddings, axis=1)
        assert cosine.min() >= INT8_MIN_COSINE
        assert not np.array_equal(catalog, exported.embeddings)  # it is really the int8 graph


@pytest.mark.parametrize("precision", ["fp32-optimized", "int8-dynamic"])
def test_an_item_embedded_alone_at_request_time_gets_exactly_its_catalog_row(exported, precision):
    path, featurizer = exported.variants.item_tower[precision], exported.tower.featurizer
    texts = exported.texts[:12]
    catalog = catalog_embeddings(path, featurizer, texts, threads=2)
    for i in (0, 5, 11):
        np.testing.assert_array_equal(catalog_embeddings(path, featurizer, [texts[i]], threads=1)[0], catalog[i])


# -- the ranker: parity, units, independence -------------------------------------------------------------


def test_onnx_ranker_scores_equal_pytorchs_on_validation_customers(exported):
    reference = score_customers(TorchRanker(exported.model), exported.embeddings, exported.valid)
    # the one-customer graph scores as the batched training path does
    probs, _ = score_encoded(exported.model, exported.embeddings, exported.valid)
    np.testing.assert_allclose(reference["purchase_probability"], probs, rtol=0, atol=1e-6)
    for precision, tolerance in (("fp32", FP32_LOGIT_TOL), ("int8-dynamic", INT8_LOGIT_TOL)):
        outputs = score_customers(OnnxRanker(exported.variants.ranker[precision]), exported.embeddings, exported.valid)
        difference = np.abs(outputs["purchase_logit"] - reference["purchase_logit"]).max()
        assert difference <= tolerance, (precision, difference)
        if precision == "int8-dynamic":
            assert difference > 0  # it is really the int8 graph


@pytest.mark.parametrize("history", [0, 1, 6])
def test_ranker_outputs_one_probability_and_one_positive_quantity_per_candidate(exported, history):
    past, rows, features = random_customer(exported, candidates=9, history=history)
    outputs = OnnxRanker(exported.variants.ranker["fp32"])(ranker_feeds(exported.embeddings, past, rows, features))
    assert list(outputs) == list(RANKER.output_names)
    for name, value in outputs.items():
        assert value.dtype == RANKER.output(name).numpy_dtype and value.shape == (9,)
        assert np.isfinite(value).all()
    probability, quantity = outputs["purchase_probability"], outputs["expected_quantity"]
    assert ((probability >= 0) & (probability <= 1)).all() and (quantity > 0).all()
    # float32 Sigmoid and Exp in ONNX Runtime's vectorised kernels: within 1.1e-6 relative of the exact value
    # on an AVX-512 CPU (measured), so the bound is 1e-5, float32's rounding of a few operations
    np.testing.assert_allclose(probability, 1 / (1 + np.exp(-outputs["purchase_logit"])), rtol=1e-5)
    np.testing.assert_allclose(quantity, np.exp(outputs["log_quantity"]), rtol=1e-5)


@pytest.mark.parametrize("history", [0, 1, 6])
def test_a_candidates_fp32_scores_do_not_depend_on_the_other_candidates_bit_for_bit(exported, history):
    # 600 candidates: ONNX Runtime's kernels change with the row count (the graph's comments say where)
    past, rows, features = random_customer(exported, candidates=600, history=history, seed=history)
    ranker = OnnxRanker(exported.variants.ranker["fp32"])
    embeddings = exported.embeddings

    def scores(index):
        outputs = ranker(ranker_feeds(embeddings, past, rows[index], features[index]))
        return np.stack([outputs["purchase_logit"], outputs["expected_quantity"]])

    together = scores(np.arange(len(rows)))
    alone = np.concatenate([scores(np.array([i])) for i in range(len(rows))], axis=1)
    np.testing.assert_array_equal(alone, together)
    shuffled = np.random.default_rng(history).permutation(len(rows))[:230]
    np.testing.assert_array_equal(scores(shuffled), together[:, shuffled])


def test_an_int8_rankers_scores_depend_on_the_other_candidates_within_its_bound(exported):
    """int8 dynamic quantizes activations with one scale per call, so batch-mates move a score: the bound, stated."""
    past, rows, features = random_customer(exported, candidates=60)
    ranker = OnnxRanker(exported.variants.ranker["int8-dynamic"])
    together = ranker(ranker_feeds(exported.embeddings, past, rows, features))["purchase_logit"]
    alone = np.concatenate([ranker(ranker_feeds(exported.embeddings, past, rows[i : i + 1], features[i : i + 1]))["purchase_logit"] for i in range(len(rows))])
    moved = np.abs(alone - together).max()
    assert 0 < moved <= INT8_BATCH_MATE_TOL


def test_a_feed_of_the_wrong_embedding_width_is_refused_by_name(exported):
    past, rows, features = random_customer(exported, candidates=3)
    feeds = ranker_feeds(exported.embeddings, past, rows, features)
    feeds["candidate_embeddings"] = np.zeros((3, exported.tower.dim + 1), np.float32)
    with pytest.raises(Exception, match="candidate_embeddings"):
        OnnxRanker(exported.variants.ranker["fp32"])(feeds)


# -- the gate -------------------------------------------------------------------------------------------


def test_the_gate_passes_every_tower_and_ranker_combination_on_validation_baskets(exported):
    gated = combinations(exported.variants, exported.tower.featurizer, exported.texts)
    assert {(g.tower_precision, g.ranker_precision) for g in gated} == {
        (t, r) for t in exported.variants.item_tower for r in exported.variants.ranker
    }
    reference, results = run_ranker_gate(exported.model, exported.embeddings, exported.valid, gated, TINY_GATE)
    assert 0.0 <= reference["ndcg@10"] <= 1.0 and 0.0 <= reference["auc"] <= 1.0
    enforce(results)  # raises GateFailed naming every failing check
    fp32 = results["item_tower:fp32-optimized+ranker:fp32"]
    logit = next(c for c in fp32.checks if c.metric == "max_abs_diff(purchase_logit)")
    assert fp32.precision == "fp32" and logit.value <= FP32_LOGIT_TOL and logit.bound == 1e-4
    assert {c.metric for c in fp32.checks} >= {"relative_drop(auc)", "relative_drop(ndcg@10)"}
    assert results["item_tower:int8-dynamic+ranker:fp32"].precision == "int8"
    assert "item_tower:int8-dynamic+ranker:int8-dynamic" in gate_table(results)


def test_the_gate_fails_a_ranker_graph_that_is_not_the_model(exported, tmp_path):
    torch.manual_seed(1)
    other = TwoTowerRanker(**exported.model.hparams).eval()
    other.set_feature_scale(np.concatenate(exported.valid.features))
    path = export_ranker(other, tmp_path / "model.fp32.onnx").path
    gated = [g for g in combinations(exported.variants, exported.tower.featurizer, exported.texts) if g.tower_precision == "fp32"]
    wrong = [dataclasses.replace(gated[0], ranker_path=path)]
    _, results = run_ranker_gate(exported.model, exported.embeddings, exported.valid, wrong, TINY_GATE)
    with pytest.raises(GateFailed, match=r"max_abs_diff\(purchase_logit\)"):
        enforce(results)


# -- into the bundle ------------------------------------------------------------------------------------


@dataclasses.dataclass
class RankerBundle:
    root: object
    serving_embeddings: np.ndarray
    models: list
    results: dict


@pytest.fixture(scope="module")
def ranker_bundle(exported, tmp_path_factory) -> RankerBundle:
    """The tiny cross-encoder plus the gated tiny ranker over the synthetic shop's catalog, as `make export`
    will write them (one tokenizer and featurizer for both models)."""
    from conftest import build_tiny_bundle
    from edgerec.core.behaviour import BehaviourTables
    from edgerec.core.bundle import ModelFiles, verify, write_bundle
    from edgerec.core.signatures import CROSS_ENCODER
    from edgerec.export.ranker_onnx import SERVING_COMBINATION, ranker_bundle_parts

    tmp_path = tmp_path_factory.mktemp("ranker_bundle")
    gated = combinations(exported.variants, exported.tower.featurizer, exported.texts)
    _, results = run_ranker_gate(exported.model, exported.embeddings, exported.valid, gated, TINY_GATE)
    serving = next(g for g in gated if (g.tower_precision, g.ranker_precision) == SERVING_COMBINATION)
    ids = exported.item_ids[:3]
    tables = BehaviourTables.build(
        invoices=["a", "a", "b"], customers=["c1", "c1", "c2"], items=ids, quantities=[1.0, 2.0, 3.0],
        times=[1.0e9, 1.0e9, 1.1e9], cutoff=1.2e9,
    ).save(tmp_path / "tables.npz")
    models, data = ranker_bundle_parts(exported.variants, results, serving.embeddings, tables, tmp_path / "work")
    cross = verify(build_tiny_bundle(tmp_path / "plain"))
    cross_files = ModelFiles(
        name=CROSS_ENCODER.name, signature=CROSS_ENCODER,
        variants={p: cross.variant_path(CROSS_ENCODER.name, p) for p in cross.model(CROSS_ENCODER.name).precisions},
        default_variant=cross.manifest["models"][CROSS_ENCODER.name]["default_variant"],
    )
    root = tmp_path / "both" / "tiny-two"
    write_bundle(
        root, name="tiny", version="two", models=[cross_files, *models], tokenizer_path=cross.tokenizer_path,
        items=dict(zip(exported.item_ids, exported.texts)),  # the ranker's catalog (its embedding rows)
        featurizer=exported.tower.featurizer, data=data,
    )
    return RankerBundle(root, serving.embeddings, models, results)


def test_the_ranker_enters_a_bundle_beside_the_cross_encoder_with_checksummed_data(ranker_bundle, tmp_path):
    import asyncio
    import shutil

    from edgerec.core.behaviour import BehaviourTables
    from edgerec.core.bundle import EdgeRecError, open_bundle
    from edgerec.core.signatures import CROSS_ENCODER
    from edgerec.export.ranker_onnx import SERVING_COMBINATION
    from edgerec.runtime.metrics import Metrics
    from edgerec.runtime.model_version import ModelVersion
    from server_helpers import make_config

    assert [m.name for m in ranker_bundle.models] == [ITEM_TOWER.name, RANKER.name]
    assert [m.default_variant["cpu"] for m in ranker_bundle.models] == list(SERVING_COMBINATION)
    root = tmp_path / "tiny-two"
    shutil.copytree(ranker_bundle.root, root)
    bundle = open_bundle(root)
    assert set(bundle.models) == {CROSS_ENCODER.name, ITEM_TOWER.name, RANKER.name}
    assert set(bundle.data) == {"item_embeddings", "behaviour_tables"}
    np.testing.assert_array_equal(np.load(bundle.data_path("item_embeddings")), ranker_bundle.serving_embeddings)
    assert BehaviourTables.load(bundle.data_path("behaviour_tables")).cutoff == 1.2e9
    assert all(bundle.data[name] in bundle.manifest["files"] for name in bundle.data)  # checksummed
    with pytest.raises(EdgeRecError, match="has no data 'nothing'"):
        bundle.data_path("nothing")

    # the runtime serves the cross-encoder of such a bundle and leaves the ranker for later
    version = ModelVersion.load(root, make_config(root, providers=("cpu",), warm_up=False), Metrics())
    try:
        assert list(version.instances) == [CROSS_ENCODER.name]
    finally:
        asyncio.run(version.retire(5.0))

    # an altered data file is refused by name
    embeddings_file = bundle.data_path("item_embeddings")
    altered = np.load(embeddings_file)
    altered[0, 0] += 1.0
    np.save(embeddings_file, altered)
    with pytest.raises(EdgeRecError, match="item_embeddings.npy fails its checksum"):
        open_bundle(root)


def test_the_runtime_ranker_scores_as_the_offline_onnx_ranker_and_embeds_free_text_as_the_export_did(
    ranker_bundle, exported
):
    from edgerec.core.behaviour import BehaviourTables, HistoryEntry, behaviour_features
    from edgerec.core.bundle import EdgeRecError, open_bundle
    from edgerec.core.ranker_inputs import history_arrays
    from edgerec.runtime.ranker import MAX_HISTORY, PastItem, RankedItem, RankerScorer

    bundle = open_bundle(ranker_bundle.root)
    scorer = RankerScorer(bundle, text_cache_size=2)
    ids = scorer.item_ids
    assert ids == sorted(ids) == exported.item_ids  # the embedding rows follow the catalog
    text_of = dict(zip(exported.item_ids, exported.texts))
    history = [PastItem(item_id=ids[5], count=3, days_ago=10.0), PastItem(item_id=ids[7]), PastItem(text="BLUE ENAMEL TEAPOT", count=2)]
    candidates = [RankedItem(item_id=item) for item in ids[:20]] + [RankedItem(text=text_of[ids[3]])]
    probability, quantity = scorer.score(history, candidates)
    assert probability.shape == quantity.shape == (21,) and probability.dtype == np.float32
    assert ((probability >= 0) & (probability <= 1)).all() and (quantity > 0).all()  # probabilities, units

    # offline: the same feeds built by hand, scored by the bundle's ranker variant
    embeddings = np.concatenate([ranker_bundle.serving_embeddings, scorer.embed_text("BLUE ENAMEL TEAPOT")[None],
                                 scorer.embed_text(text_of[ids[3]])[None]])
    index = {item: row for row, item in enumerate(ids)} | {"\0BLUE ENAMEL TEAPOT": len(ids)}
    entries = [HistoryEntry(ids[5], 3, 10.0), HistoryEntry(ids[7], 1, None), HistoryEntry("\0BLUE ENAMEL TEAPOT", 2, None)]
    keys = ids[:20] + ["\0" + text_of[ids[3]]]
    tables = BehaviourTables.load(bundle.data_path("behaviour_tables"))
    rows = np.array(list(range(20)) + [len(ids) + 1])
    feeds = ranker_feeds(embeddings, history_arrays(entries, index, MAX_HISTORY), rows, behaviour_features(entries, keys, tables))
    offline = OnnxRanker(bundle.variant_path(RANKER.name))(feeds)
    np.testing.assert_array_equal(probability, offline["purchase_probability"])
    np.testing.assert_array_equal(quantity, offline["expected_quantity"])

    # a catalog text typed as free text gets exactly its catalog row (the export ran the same tower, one item per call)
    np.testing.assert_array_equal(scorer.embed_text(text_of[ids[3]]), ranker_bundle.serving_embeddings[3])
    scorer.embed_text("A THIRD TEXT")
    assert len(scorer._texts) == 2  # the text cache is bounded
    with pytest.raises(EdgeRecError, match="candidates\\[1\\]: unknown item id 'nope'"):
        scorer.score([], [RankedItem(item_id=ids[0]), RankedItem(item_id="nope")])
