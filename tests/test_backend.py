"""Backends and model versions: provider order and fallback, variant choice, named outputs, session settings."""

from __future__ import annotations

import json
import logging
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from edgerec.core.bundle import open_bundle, write_manifest
from edgerec.core.errors import EdgeRecError, ErrorCode
from edgerec.core.sessions import tensorrt_options
from edgerec.core.signatures import CROSS_ENCODER
from edgerec.runtime.backends.onnx import OnnxBackend
from edgerec.runtime.config import BackendConfig
from edgerec.runtime.model_version import ModelVersion, merge_feeds
from edgerec.runtime.metrics import Metrics
from server_helpers import featurizer_of, make_config

LOGGER = "edgerec.runtime.backends.onnx"


def backend_for(bundle, config: BackendConfig = BackendConfig(), model: str = CROSS_ENCODER.name) -> OnnxBackend:
    opened = open_bundle(bundle)
    backend = OnnxBackend(opened, model, config.session_config(opened.root, 32, 64), config.precision, config.execution)
    backend.initialize()
    return backend


def test_default_provider_order_falls_back_to_cpu_with_one_log_line(tiny_bundle, caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER):
        backend = backend_for(tiny_bundle)
    assert backend.provider == "CPUExecutionProvider"
    assert backend.variant.precision == "int8-dynamic"  # the model's CPU default, not its GPU fp16
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 1
    assert "cross_encoder" in lines[0] and "int8-dynamic" in lines[0]
    assert "CPUExecutionProvider" in lines[0] and "TensorrtExecutionProvider" in lines[0] and "CUDA" in lines[0]


def test_execute_returns_every_output_of_the_signature_by_name_one_per_row(tiny_bundle):
    backend = backend_for(tiny_bundle, BackendConfig(providers=("cpu",), precision="fp32"))
    featurizer = featurizer_of(tiny_bundle)
    items = list(featurizer.catalog.values())
    batch = featurizer.pack([((), items[0]), (items[1], items[2]), (items[3] + items[4], items[5])])
    outputs = backend.execute(batch.as_feeds())
    assert backend.variant.precision == "fp32"
    assert list(outputs) == list(CROSS_ENCODER.output_names)
    probabilities, quantities = (outputs[name] for name in CROSS_ENCODER.output_names)
    assert probabilities.shape == quantities.shape == (3,)
    assert probabilities.dtype == np.float32
    assert ((probabilities > 0) & (probabilities < 1)).all() and (quantities > 0).all()
    backend.warm_up((1, 4), (8, featurizer.config.max_length))
    backend.finalize()
    assert backend.provider == "CPUExecutionProvider"  # still known after finalize, for logs


def test_no_usable_provider_is_a_clear_error(tiny_bundle):
    with pytest.raises(EdgeRecError) as failure:
        backend_for(tiny_bundle, BackendConfig(providers=("tensorrt", "cuda")))
    assert failure.value.code is ErrorCode.FAILED_PRECONDITION and "CPUExecutionProvider" in failure.value.message


def test_a_precision_or_model_the_bundle_lacks_is_not_found(tiny_bundle):
    with pytest.raises(EdgeRecError) as failure:
        backend_for(tiny_bundle, BackendConfig(providers=("cpu",), precision="int4"))
    assert failure.value.code is ErrorCode.NOT_FOUND and "int8-dynamic" in failure.value.message
    with pytest.raises(EdgeRecError) as failure:
        backend_for(tiny_bundle, model="two_tower")
    assert failure.value.code is ErrorCode.NOT_FOUND and "cross_encoder" in failure.value.message


def test_session_config_derives_the_tensorrt_profile_from_the_server_limits(tmp_path):
    config = BackendConfig(providers=("cuda", "cpu"), intra_op_threads=3, spin_wait=False)
    sessions = config.session_config(tmp_path, max_batch=8, max_sequence=48)
    assert (sessions.providers, sessions.intra_op_threads, sessions.spin_wait) == (("cuda", "cpu"), 3, False)
    assert sessions.trt_cache_dir == tmp_path / ".trt-cache"
    profile = sessions.trt_profile
    assert (profile.max_batch, profile.max_sequence) == (8, 48)
    assert profile.min_batch <= profile.opt_batch <= 8 and profile.min_sequence <= profile.opt_sequence <= 48
    options = tensorrt_options(CROSS_ENCODER, sessions, sessions.trt_cache_dir)
    assert options["trt_profile_max_shapes"] == ",".join(f"{name}:8x48" for name in CROSS_ENCODER.input_names)
    # batching off: every profile bound stays valid
    single = BackendConfig().session_config(tmp_path, max_batch=1, max_sequence=64).trt_profile
    assert single.min_batch == single.opt_batch == single.max_batch == 1
    chosen = BackendConfig(trt_cache_dir=tmp_path / "cache").session_config(tmp_path, 32, 64)
    assert chosen.trt_cache_dir == tmp_path / "cache"


def test_merge_feeds_pads_each_segment_to_the_longest_with_the_payloads_pad_value():
    class Rows:
        pad_values = {"input_ids": 7}

        def __init__(self, width: int) -> None:
            self.width = width

        def feeds(self, indices):
            rows = len(indices)
            return {"input_ids": np.ones((rows, self.width), np.int64), "mask": np.ones((rows, self.width), np.int64)}

    segments = [SimpleNamespace(payload=Rows(2), indices=np.arange(1)), SimpleNamespace(payload=Rows(4), indices=np.arange(2))]
    merged = merge_feeds(segments)
    assert merged["input_ids"].tolist() == [[1, 1, 7, 7], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert merged["mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]


def test_auto_execution_runs_rows_alone_single_threaded_on_the_cpu_and_batched_when_asked(tiny_bundle):
    """Issue 11.1 / 14: on the CPU, 'auto' runs one single-threaded call per row, `intra_op_threads` rows at
    once (0: every available CPU); 'batched' runs one call per batch; an unknown mode is refused."""
    from edgerec.core.sessions import available_cpus

    auto = backend_for(tiny_bundle, BackendConfig(providers=("cpu",)))
    assert BackendConfig().execution == "auto"
    assert auto.rows_alone and auto.row_workers == available_cpus()
    assert auto._opened.session.get_session_options().intra_op_num_threads == 1
    three = backend_for(tiny_bundle, BackendConfig(providers=("cpu",), intra_op_threads=3))
    assert three.row_workers == 3 and three._opened.session.get_session_options().intra_op_num_threads == 1
    batched = backend_for(tiny_bundle, BackendConfig(providers=("cpu",), intra_op_threads=2, execution="batched"))
    assert not batched.rows_alone and batched._opened.session.get_session_options().intra_op_num_threads == 2
    with pytest.raises(ValueError, match="backend.execution"):
        make_config(tiny_bundle, execution="sometimes").validate()
    version = ModelVersion.load(tiny_bundle, make_config(tiny_bundle, providers=("cpu",), warm_up=False), Metrics())
    assert version.instances[CROSS_ENCODER.name].rows_alone


def test_rows_alone_give_each_row_the_score_it_gets_alone_whatever_its_batch_mates(tiny_bundle):
    """int8-dynamic quantizes a call's activations with one scale: batched, a row's score moves with the rows
    beside it and the padding; rows alone (on two threads) it is bit-identical to the row scored alone."""
    from edgerec.runtime.model_version import Instance, split_feeds
    from edgerec.runtime.pipeline import PairRows

    def seg(rows, indices):
        return SimpleNamespace(payload=rows, indices=np.asarray(indices))

    featurizer = featurizer_of(tiny_bundle)
    items = list(featurizer.catalog.values())
    short = PairRows(featurizer, items[0], [items[1]])
    long = PairRows(featurizer, items[2] + items[3] + items[4] + items[5], [items[6]] * 7)
    backend = backend_for(tiny_bundle, BackendConfig(providers=("cpu",), intra_op_threads=2))  # int8-dynamic
    instance = Instance(backend, make_config(tiny_bundle).batcher, Metrics(), "t")
    try:
        alone = instance._rows(split_feeds([seg(short, [0])]))
        mixed = [seg(long, [0, 1, 2]), seg(short, [0]), seg(long, [3, 4, 5, 6])]
        assert [len(f[CROSS_ENCODER.input_names[0]][0]) for f in split_feeds(mixed)][3] == short.lengths[0]  # no padding
        among = instance._rows(split_feeds(mixed))
        assert all(out.shape == (8,) for out in among)
        assert among[0][3] == alone[0][0] and among[1][3] == alone[1][0]  # bit-identical
        batched = backend.execute(merge_feeds(mixed))[CROSS_ENCODER.output_names[0]]
        assert batched[3] != alone[0][0]  # one padded call: int8-dynamic quantizes the whole batch with one scale
    finally:
        instance.close()


def test_model_version_serves_one_instance_per_known_model(tiny_bundle):
    version = ModelVersion.load(tiny_bundle, make_config(tiny_bundle, providers=("cpu",), warm_up=False), Metrics())
    assert (version.name, version.version) == ("tiny", "test")
    assert list(version.instances) == [CROSS_ENCODER.name]
    assert version.variants() == {CROSS_ENCODER.name: ("int8-dynamic", "CPUExecutionProvider")}
    assert version.pipeline.cross.instance is version.instances[CROSS_ENCODER.name] and version.ranker is None


def _with_manifest(bundle, target, change) -> None:
    shutil.copytree(bundle, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest.pop("files")
    change(manifest)
    write_manifest(target, manifest)


def test_a_bundle_whose_cross_encoder_signature_differs_is_refused(tiny_bundle, tmp_path):
    def rename_output(manifest):
        manifest["models"]["cross_encoder"]["signature"]["outputs"][0]["name"] = "logits"

    _with_manifest(tiny_bundle, tmp_path / "renamed", rename_output)
    with pytest.raises(EdgeRecError) as failure:
        ModelVersion.load(tmp_path / "renamed", make_config(tmp_path / "renamed", warm_up=False), Metrics())
    assert failure.value.code is ErrorCode.FAILED_PRECONDITION and "logits" in failure.value.message


def test_a_bundle_without_a_cross_encoder_is_refused_and_unknown_models_are_skipped(tiny_bundle, tmp_path):
    def rename_model(manifest):
        manifest["models"]["ranker_v9"] = manifest["models"].pop("cross_encoder")

    _with_manifest(tiny_bundle, tmp_path / "other", rename_model)
    with pytest.raises(EdgeRecError) as failure:
        ModelVersion.load(tmp_path / "other", make_config(tmp_path / "other", warm_up=False), Metrics())
    assert failure.value.code is ErrorCode.FAILED_PRECONDITION and "no cross_encoder model" in failure.value.message

    def add_unknown(manifest):
        manifest["models"]["ranker_v9"] = dict(manifest["models"]["cross_encoder"])

    _with_manifest(tiny_bundle, tmp_path / "extra", add_unknown)
    version = ModelVersion.load(tmp_path / "extra", make_config(tmp_path / "extra", warm_up=False), Metrics())
    assert list(version.instances) == [CROSS_ENCODER.name]


def test_the_row_runner_keeps_row_order_and_cut_rows_drop_each_rows_padding():
    from edgerec.core.sessions import RowRunner, cut_rows

    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]])
    feeds = {"input_ids": np.arange(20).reshape(5, 4), "attention_mask": mask}
    rows = cut_rows(feeds, "attention_mask")
    assert [row["input_ids"].shape for row in rows] == [(1, 2), (1, 4), (1, 1), (1, 3), (1, 4)]
    assert rows[3]["input_ids"].tolist() == [[12, 13, 14]]

    seen_threads = set()

    def run(row):
        import threading

        seen_threads.add(threading.current_thread().name)
        return row["input_ids"][:, 0].astype(np.float32), np.array([row["input_ids"].shape[1]])

    runner = RowRunner(run, workers=2, name="test-rows")
    try:
        first, widths = runner(rows)
        assert first.tolist() == [0, 4, 8, 12, 16] and widths.tolist() == [2, 4, 1, 3, 4]
        assert {name.split("_")[0] for name in seen_threads} == {"test-rows"}

        def fail(row):
            raise RuntimeError("row failed")

        with pytest.raises(RuntimeError, match="row failed"):
            RowRunner(fail, workers=2)(rows)
    finally:
        runner.close()
