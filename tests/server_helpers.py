"""Helpers shared by the server tests: configs, offline reference scores, requests."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgerec.core.bundle import open_bundle, write_manifest
from edgerec.core.featurize import ContextEntry, Featurizer, item_key
from edgerec.core.sessions import create_session
from edgerec.core.signatures import CROSS_ENCODER
from edgerec.proto import recommender_pb2
from edgerec.runtime.config import FIELD_SECTION, SECTIONS, Config
from edgerec.runtime.recommender_service import build_score_request as score_request


def make_config(bundle: Path, **settings) -> Config:
    """A test config: the bundle, free ports on 127.0.0.1, then any setting by name."""
    sections: dict[str, dict] = {name: {} for name in SECTIONS}
    sections["server"].update(bundle=bundle, grpc_port=0, metrics_port=0)
    for name, value in settings.items():
        sections[FIELD_SECTION[name]][name] = value
    config = Config()
    return Config(**{name: dataclasses.replace(getattr(config, name), **values) for name, values in sections.items()})


def catalog_ids(bundle: Path) -> list[str]:
    return sorted(json.loads((Path(bundle) / "catalog.json").read_text()))


def featurizer_of(bundle: Path) -> Featurizer:
    opened = open_bundle(bundle)
    return opened.featurizer()


class OfflineModel:
    """The bundle's cross-encoder variant run directly with onnxruntime, one pair at a time: the reference scores.

    Pairs come from the shared pair builder (`Featurizer.build_pairs`), as in training and serving.
    """

    def __init__(self, bundle: Path, precision: str = "fp32") -> None:
        opened = open_bundle(bundle)
        self.featurizer = featurizer_of(bundle)
        self.session = create_session(opened.variant_path(CROSS_ENCODER.name, precision)).session

    def item(self, item_id: str = "", text: str = ""):
        return self.featurizer.item_tokens(item_id, text)

    def score(self, request: recommender_pb2.ScoreRequest) -> tuple[np.ndarray, np.ndarray]:
        history = [
            ContextEntry(self.item(c.item_id, c.text), max(c.count, 1), item_key(c.item_id, c.text)) for c in request.context
        ]
        candidates = [(item_key(c.item_id, c.text), self.item(c.item_id, c.text)) for c in request.candidates]
        probabilities, quantities = [], []
        for pair in self.featurizer.build_pairs(history, candidates).pairs():
            batch = self.featurizer.pack([pair])
            p, q = self.session.run(list(CROSS_ENCODER.output_names), batch.as_feeds())
            probabilities.append(p[0])
            quantities.append(q[0])
        return np.array(probabilities, dtype=np.float32), np.array(quantities, dtype=np.float32)

    def run_rows(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray):
        """Each row on its own, cut after its last attended token."""
        probabilities, quantities = [], []
        for row in range(len(input_ids)):
            width = int(np.flatnonzero(attention_mask[row]).max()) + 1
            feeds = {
                "input_ids": input_ids[row : row + 1, :width],
                "attention_mask": attention_mask[row : row + 1, :width],
                "token_type_ids": token_type_ids[row : row + 1, :width],
            }
            p, q = self.session.run(list(CROSS_ENCODER.output_names), feeds)
            probabilities.append(p[0])
            quantities.append(q[0])
        return np.array(probabilities), np.array(quantities)


def varied_requests(ids: list[str], count: int) -> list[recommender_pb2.ScoreRequest]:
    """Requests with different context lengths and 1-5 candidates, some of them free text."""
    requests = []
    for k in range(count):
        context = [(ids[(k * 5 + j) % len(ids)], "", 1 + j % 4) for j in range(k % 7)]
        candidates: list = [ids[(k * 3 + j) % len(ids)] for j in range(1 + k % 5)]
        if k % 4 == 0:
            candidates.append(("", f"NEW HANDMADE ITEM NUMBER {k} WITH A LONGER DESCRIPTION"))
        requests.append(score_request(candidates, context))
    return requests


def copy_bundle(bundle: Path, target: Path, version: str) -> Path:
    """The same bundle under another version (manifest rewritten with fresh checksums)."""
    shutil.copytree(bundle, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest.pop("files", None)
    write_manifest(target, {**manifest, "version": version})
    return target


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, message: str = "condition") -> None:
    """Poll `condition` until it holds; AssertionError after `timeout` s (generous: a loaded machine is slow,
    and a test that passes only waits as long as the state takes to arrive)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not reached in {timeout} s")
        time.sleep(0.01)


def wait_for_value(read: Callable[[], object], expected: object, timeout: float = 30.0, message: str = "value") -> None:
    """Wait until `read()` == `expected`: for state the server updates on its own threads (counters,
    gauges), which a test must not read once and assume settled. AssertionError with the last value."""
    seen: list[object] = []

    def reached() -> bool:
        seen[:] = [read()]
        return seen[0] == expected

    try:
        wait_until(reached, timeout, message)
    except AssertionError:
        raise AssertionError(f"{message}: {seen[0]!r} after {timeout} s, expected {expected!r}") from None
