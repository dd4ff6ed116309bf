"""The ONNX Runtime backend: provider order and fallback, precision choice, outputs."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from edgerec.runtime.backend import OnnxBackend
from edgerec.runtime.bundle import open_bundle
from edgerec.runtime.config import BackendConfig
from edgerec.runtime.errors import EdgeRecError, ErrorCode
from server_helpers import featurizer_of


def test_default_provider_order_falls_back_to_cpu_with_one_log_line(tiny_bundle, caplog):
    with caplog.at_level(logging.INFO, logger="edgerec.runtime.backend"):
        backend = OnnxBackend.load(open_bundle(tiny_bundle), BackendConfig())
    assert backend.provider == "CPUExecutionProvider"
    assert backend.entry.precision == "int8-dynamic"  # the bundle's CPU default, not its GPU fp16
    lines = [r.getMessage() for r in caplog.records if r.name == "edgerec.runtime.backend"]
    assert len(lines) == 1
    assert "CPUExecutionProvider" in lines[0] and "TensorrtExecutionProvider" in lines[0] and "CUDA" in lines[0]


def test_precision_override_and_outputs_per_row(tiny_bundle):
    backend = OnnxBackend.load(open_bundle(tiny_bundle), BackendConfig(providers=("cpu",), precision="fp32"))
    featurizer = featurizer_of(tiny_bundle)
    items = list(featurizer.catalog.values())
    batch = featurizer.pack([((), items[0]), (items[1], items[2]), (items[3] + items[4], items[5])])
    probabilities, quantities = backend.run(batch)
    assert backend.entry.precision == "fp32"
    assert probabilities.shape == quantities.shape == (3,)
    assert probabilities.dtype == np.float32
    assert ((probabilities > 0) & (probabilities < 1)).all() and (quantities > 0).all()
    backend.warm_up(featurizer.pad_id, max_batch_size=4, max_length=featurizer.config.max_length)


def test_no_usable_provider_is_a_clear_error(tiny_bundle):
    with pytest.raises(EdgeRecError) as failure:
        OnnxBackend.load(open_bundle(tiny_bundle), BackendConfig(providers=("tensorrt", "cuda")))
    assert failure.value.code is ErrorCode.FAILED_PRECONDITION and "CPUExecutionProvider" in failure.value.message


def test_a_precision_the_bundle_lacks_is_not_found(tiny_bundle):
    with pytest.raises(EdgeRecError) as failure:
        OnnxBackend.load(open_bundle(tiny_bundle), BackendConfig(providers=("cpu",), precision="int4"))
    assert failure.value.code is ErrorCode.NOT_FOUND
