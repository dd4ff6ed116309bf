"""A tokenizer that disagrees with its model, and one bad request among good ones (issue 11, item 4).

- A bundle whose tokenizer can produce an id the model cannot embed is refused at start and at hot
  reload with FAILED_PRECONDITION naming both sizes: from the manifest's `vocab_size` (written by the
  export) and from probing the model itself (bundles without the key, or with a wrong one).
- KServe ids are checked against the model's vocabulary, not the tokenizer's.
- When the model fails on a batch, each of its requests runs again alone: only the request that fails
  alone gets INTERNAL, with no engine text in its status (the log has it).
The bundles are signed copies (valid checksums) of `exported_bundle` (a real tiny BERT exported by
`edgerec export`'s own functions: its embedding table has 30522 rows) and of the torch-free tiny bundle.
"""

from __future__ import annotations

import json
import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from edgerec.benchmarks.reliability import bundles
from edgerec.core.bundle import MANIFEST, open_bundle, write_manifest
from edgerec.core.errors import EdgeRecError, ErrorCode
from edgerec.core.signatures import CROSS_ENCODER
from edgerec.proto import grpc_service_pb2 as kserve
from edgerec.proto import grpc_service_pb2_grpc as kserve_grpc
from edgerec.proto import recommender_pb2, recommender_pb2_grpc
from edgerec.runtime.server import start_server
from server_helpers import featurizer_of, make_config, wait_for_value

TIMEOUT = 20
EXTRA_WORD = "zzedgerecword"  # one WordPiece entry appended to the tokenizer: id = the old vocabulary size
UNSET = object()


def signed_copy(source: Path, target: Path, *, extra_token: bool, vocab_size=UNSET) -> Path:
    """A copy of a format-2 bundle, its tokenizer maybe one token longer, the cross-encoder's manifest
    `vocab_size` set (or removed with None), and every checksum rewritten: it passes verification."""
    shutil.copytree(source, target)
    if extra_token:
        tokenizer = json.loads((target / "tokenizer.json").read_text())
        vocab = tokenizer["model"]["vocab"]
        vocab[EXTRA_WORD] = len(vocab)
        (target / "tokenizer.json").write_text(json.dumps(tokenizer))
    manifest = json.loads((target / MANIFEST).read_text())
    entry = manifest["models"][CROSS_ENCODER.name]
    if vocab_size is None:
        entry.pop("vocab_size", None)
    elif vocab_size is not UNSET:
        entry["vocab_size"] = vocab_size
    write_manifest(target, {k: v for k, v in manifest.items() if k not in ("files", "format")})
    return target


def refusal(bundle: Path) -> EdgeRecError:
    with pytest.raises(EdgeRecError) as raised:
        start_server(make_config(bundle)).stop()
    return raised.value


def status_of(call) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def infer_request(model_name: str, token_id: int) -> kserve.ModelInferRequest:
    """One well-formed row, `[CLS] red [SEP] <token_id> [SEP]`."""
    request = kserve.ModelInferRequest(model_name=model_name)
    rows = (("input_ids", [101, 2417, 102, token_id, 102]), ("attention_mask", [1] * 5), ("token_type_ids", [0, 0, 0, 1, 1]))
    for name, values in rows:
        request.inputs.add(name=name, datatype="INT64", shape=[1, 5]).contents.int64_contents.extend(values)
    return request


# -- the tokenizer against the model -----------------------------------------------------------------
def test_the_export_records_the_models_vocabulary_size(exported_bundle) -> None:
    model = open_bundle(exported_bundle).model(CROSS_ENCODER.name)
    assert model.info["vocab_size"] == 30522 == featurizer_of(exported_bundle).tokenizer.get_vocab_size()


def test_a_tokenizer_longer_than_the_recorded_vocabulary_is_refused_at_start(exported_bundle, tmp_path) -> None:
    bad = signed_copy(exported_bundle, tmp_path / "extra", extra_token=True)
    error = refusal(bad)
    assert error.code is ErrorCode.FAILED_PRECONDITION
    assert "the tokenizer has 30523 tokens but the model embeds 30522" in error.message, error.message


def test_without_the_recorded_size_the_model_itself_is_probed(exported_bundle, tmp_path) -> None:
    bad = signed_copy(exported_bundle, tmp_path / "extra-no-key", extra_token=True, vocab_size=None)
    error = refusal(bad)
    assert error.code is ErrorCode.FAILED_PRECONDITION
    assert "the tokenizer has 30523 tokens but the model embeds 30522" in error.message, error.message
    assert "token id 30522 fails the model" in error.message
    assert "ONNXRuntimeError" not in error.message and "Gather" not in error.message  # that text is logged


def test_a_recorded_size_the_model_does_not_bear_out_is_refused(exported_bundle, tmp_path) -> None:
    wrong = signed_copy(exported_bundle, tmp_path / "claims-more", extra_token=False, vocab_size=30530)
    error = refusal(wrong)
    assert error.code is ErrorCode.FAILED_PRECONDITION
    assert "the model embeds 30522 (manifest vocab_size 30530)" in error.message, error.message


def test_a_hot_reload_to_such_a_bundle_is_refused_and_the_old_version_keeps_serving(exported_bundle, tmp_path) -> None:
    bad = signed_copy(exported_bundle, tmp_path / "extra-reload", extra_token=True, vocab_size=None)
    with start_server(make_config(exported_bundle)) as server, grpc.insecure_channel(server.target) as channel:
        assert server.reload(bad) is False
        assert server.metrics.value("edgerec_bundle_reloads_total", result="failed") == 1
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        response = stub.Score(recommender_pb2.ScoreRequest(candidates=[recommender_pb2.Candidate(text="RED TEAPOT")]), timeout=TIMEOUT)
        assert response.model_version == "test"


def test_kserve_ids_are_checked_against_the_models_vocabulary_not_the_tokenizers(tiny_bundle, tmp_path) -> None:
    """The tiny model hashes ids, so it embeds any; its manifest says 30528 rows, its tokenizer has 30522 tokens."""
    wider = signed_copy(tiny_bundle, tmp_path / "wider", extra_token=False, vocab_size=30528)
    with start_server(make_config(wider, precision="fp32")) as server, grpc.insecure_channel(server.target) as channel:
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        assert status_of(lambda: stub.ModelInfer(infer_request("tiny", 30527), timeout=TIMEOUT))[0] is grpc.StatusCode.OK
        code, details = status_of(lambda: stub.ModelInfer(infer_request("tiny", 30528), timeout=TIMEOUT))
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "[0, 30528)" in details, details


# -- one bad request among good ones -------------------------------------------------------------------
def test_a_request_the_model_fails_on_fails_alone_and_its_status_holds_no_engine_text(tiny_bundle, tmp_path, caplog) -> None:
    """Eleven requests in one batch (the batch is cut only when full), one with the poisoned token:
    the batch fails, each request runs again alone, and only the poisoned one fails."""
    root, word = bundles.poisoned_bundle(tiny_bundle, tmp_path / "poisoned")
    config = make_config(root, max_batch_size=11, max_queue_delay_ms=60_000.0)
    texts = [f"RED ENAMEL TEAPOT {n}" for n in range(10)]
    texts.insert(4, word)
    with caplog.at_level(logging.INFO), start_server(config) as server, grpc.insecure_channel(server.target) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)

        def score(text: str):
            request = recommender_pb2.ScoreRequest(candidates=[recommender_pb2.Candidate(text=text)])
            return status_of(lambda: stub.Score(request, timeout=TIMEOUT))

        with ThreadPoolExecutor(len(texts)) as pool:
            answers = list(pool.map(score, texts))
        # the batch of eleven, then the poisoned request alone
        wait_for_value(lambda: server.metrics.value("edgerec_batch_failures_total"), 2, message="failed batches")
    codes = [code for code, _ in answers]
    assert codes == [grpc.StatusCode.OK] * 4 + [grpc.StatusCode.INTERNAL] + [grpc.StatusCode.OK] * 6, answers
    assert answers[4][1] == "the model failed on this request; the server log has details"
    logged = "\n".join(record.getMessage() + (record.exc_text or "") for record in caplog.records)
    assert "running each alone" in logged and "alone" in logged and "Gather" in logged  # the engine's text is logged


def test_a_request_alone_that_fails_is_not_run_twice(tiny_bundle, tmp_path) -> None:
    root, word = bundles.poisoned_bundle(tiny_bundle, tmp_path / "poisoned-alone")
    with start_server(make_config(root, max_batch_size=1)) as server, grpc.insecure_channel(server.target) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        request = recommender_pb2.ScoreRequest(candidates=[recommender_pb2.Candidate(text=word)])
        code, details = status_of(lambda: stub.Score(request, timeout=TIMEOUT))
        model_name = open_bundle(root).name
        poison_id = featurizer_of(root).encode_texts([word])[0][0]
        infer_code, infer_details = status_of(
            lambda: kserve_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request(model_name, poison_id), timeout=TIMEOUT)
        )
        # one run each, no retry of a request that was alone
        wait_for_value(lambda: server.metrics.value("edgerec_batch_failures_total"), 2, message="failed batches")
    assert (code, details) == (grpc.StatusCode.INTERNAL, "the model failed on this request; the server log has details")
    assert (infer_code, infer_details) == (code, details)


def test_bundle_data_must_be_known_of_its_kind_and_checksummed(tiny_bundle, tmp_path) -> None:
    import numpy as np

    from edgerec.core.bundle import ModelFiles, verify, write_bundle

    source = verify(tiny_bundle)
    model = ModelFiles(
        name=CROSS_ENCODER.name, signature=CROSS_ENCODER,
        variants={"fp32": source.variant_path(CROSS_ENCODER.name, "fp32")}, default_variant={"cpu": "fp32"},
    )
    items = {item: entry["text"] for item, entry in json.loads(source.catalog_path.read_text()).items()}
    kwargs = dict(name="tiny", version="data", models=[model], tokenizer_path=source.tokenizer_path, items=items,
                  featurizer=source.featurizer())
    np.save(tmp_path / "emb.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="unknown bundle data 'weights'"):
        write_bundle(tmp_path / "a", **kwargs, data={"weights": tmp_path / "emb.npy"})
    with pytest.raises(ValueError, match="must be a .npz file"):
        write_bundle(tmp_path / "b", **kwargs, data={"behaviour_tables": tmp_path / "emb.npy"})

    root = tmp_path / "c"
    written = write_bundle(root, **kwargs, data={"item_embeddings": tmp_path / "emb.npy"})
    assert written.data == {"item_embeddings": "data/item_embeddings.npy"}
    manifest = json.loads((root / MANIFEST).read_text())
    del manifest["files"]["data/item_embeddings.npy"]  # listed as data, but with no checksum
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(EdgeRecError, match="data files without a checksum: data/item_embeddings.npy") as refused:
        verify(root)
    assert refused.value.code is ErrorCode.DATA_LOSS
