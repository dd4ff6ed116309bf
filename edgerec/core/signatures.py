"""Model signatures: every input and output of every model a bundle can hold, defined once.

Training exports with these names, the bundle manifest records them, the
runtime feeds and reads tensors by them, KServe v2 metadata and benchmarks
describe them from here. Dtypes are numpy names; a shape names its dynamic
axes (`"batch"`, `"sequence"`, ...).

The two-tower ranker (issue 12) is two graphs: `ITEM_TOWER` (item text ->
item embedding, run offline over the catalog and for free-text items) and
`RANKER` (one customer's history embeddings and N candidates -> N scores).
They are defined here but not yet in `SIGNATURES`: the runtime serves every
model of `SIGNATURES` a bundle holds, and it has no pipeline for them yet.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from edgerec.core.behaviour import FEATURE_NAMES, NUM_FEATURES

# KServe v2 / Triton datatype names of the numpy dtypes a signature may use.
KSERVE_DATATYPES = {"int64": "INT64", "int32": "INT32", "float32": "FP32", "float16": "FP16"}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One named tensor: numpy dtype name, shape with named dynamic axes, meaning and unit."""

    name: str
    dtype: str
    shape: tuple[str | int, ...]
    description: str = ""

    @property
    def kserve_datatype(self) -> str:
        """The KServe v2 datatype name (`INT64`, `FP32`, ...)."""
        return KSERVE_DATATYPES[self.dtype]

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def kserve_shape(self) -> list[int]:
        """The shape as KServe metadata writes it: -1 for a dynamic axis."""
        return [dim if isinstance(dim, int) else -1 for dim in self.shape]

    def as_manifest(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "description": self.description}

    @classmethod
    def from_manifest(cls, entry: dict[str, Any]) -> "TensorSpec":
        return cls(entry["name"], entry["dtype"], tuple(entry["shape"]), entry.get("description", ""))


@dataclasses.dataclass(frozen=True)
class ModelSignature:
    """A model's name inside a bundle and its input and output tensors, in feed order."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    description: str = ""

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)

    def as_manifest(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "inputs": [t.as_manifest() for t in self.inputs],
            "outputs": [t.as_manifest() for t in self.outputs],
        }

    @classmethod
    def from_manifest(cls, entry: dict[str, Any]) -> "ModelSignature":
        return cls(
            entry["name"],
            tuple(TensorSpec.from_manifest(t) for t in entry["inputs"]),
            tuple(TensorSpec.from_manifest(t) for t in entry["outputs"]),
            entry.get("description", ""),
        )


_TOKENS = ("batch", "sequence")

CROSS_ENCODER = ModelSignature(
    name="cross_encoder",
    description=(
        "BERT cross-encoder over `[CLS] context [SEP] candidate [SEP]` (edgerec.core.featurize): one row per "
        "(customer, candidate) pair; the sigmoid and the exp run inside the graph. Every row must follow that "
        "layout (featurize.ROW_LAYOUT): [CLS] first, a [SEP] ending the context (token type 0, may be empty) and "
        "one ending the candidate (token type 1, at least one token the model knows), then padding; KServe "
        "ModelInfer refuses other rows with INVALID_ARGUMENT naming the row and the rule"
    ),
    inputs=(
        TensorSpec(
            "input_ids", "int64", _TOKENS,
            "WordPiece token ids below the model's vocabulary size: [CLS] context [SEP] candidate [SEP], then [PAD]; "
            "[CLS], [SEP], [PAD] and [MASK] appear only where that layout puts them",
        ),
        TensorSpec(
            "attention_mask", "int64", _TOKENS,
            "1 for every real token from [CLS] to the last [SEP], then 0 for padding (1s then 0s, at least one 1)",
        ),
        TensorSpec(
            "token_type_ids", "int64", _TOKENS,
            "0 over [CLS] context [SEP], 1 over the candidate and its [SEP] (0s then 1s over the real tokens); "
            "0 or 1 under padding",
        ),
    ),
    outputs=(
        TensorSpec("purchase_probability", "float32", ("batch",), "probability that the customer buys the candidate, in [0, 1]"),
        TensorSpec("expected_quantity", "float32", ("batch",), "units expected if bought (exp of the predicted log quantity)"),
    ),
)

_ITEM_TOKENS = ("items", "sequence")

ITEM_TOWER = ModelSignature(
    name="item_tower",
    description=(
        "The ranker's item tower: the first L layers of the pretrained MiniLM over `[CLS] item text [SEP]` "
        "(edgerec.export.ranker.encode_item_texts), mean of the unmasked token states. One row per item; "
        "`dim` is the encoder's hidden size (384 for MiniLM), fixed per bundle. Run alone per item (one row, "
        "no padding) an item gets the same embedding whatever else is embedded, so the catalog matrix and a "
        "free-text item embedded at request time agree"
    ),
    inputs=(
        TensorSpec(
            "input_ids", "int64", _ITEM_TOKENS,
            "WordPiece token ids: [CLS] item text (at most max_item_tokens tokens) [SEP], then [PAD]",
        ),
        TensorSpec("attention_mask", "int64", _ITEM_TOKENS, "1 from [CLS] to [SEP], then 0 for padding"),
    ),
    outputs=(
        TensorSpec(
            "item_embedding", "float32", ("items", "dim"),
            "the item's embedding: mean of the encoder's last hidden states over its real tokens (unitless)",
        ),
    ),
)

RANKER = ModelSignature(
    name="ranker",
    description=(
        "The ranker's user side and head (edgerec.export.ranker.TwoTowerRanker) for ONE customer and N "
        "candidates: the user vector is pooled once from the history, then the head scores every candidate "
        "row by itself, so a candidate's scores do not depend on the other candidates of the call (fp32). "
        "Embeddings are rows of the bundle's catalog matrix (or item_tower outputs for free text); `dim` is "
        "their width, fixed per bundle. An empty history is one slot with history_mask 0 (the user vector is then 0); the "
        "graph standardises the raw features with the training mean and std it holds"
    ),
    inputs=(
        TensorSpec(
            "history_embeddings", "float32", ("history", "dim"),
            "item embeddings of the customer's distinct past items, newest first (at most max_history)",
        ),
        TensorSpec(
            "history_counts", "float32", ("history",),
            "earlier baskets of the customer that held each past item (a count, >= 1 where history_mask is 1)",
        ),
        TensorSpec(
            "history_days", "float32", ("history",),
            "days since the customer last bought each past item, capped at behaviour.DAYS_CAP (365, also "
            "when unknown)",
        ),
        TensorSpec("history_mask", "int64", ("history",), "1 for a real past item, 0 for padding"),
        TensorSpec(
            "candidate_embeddings", "float32", ("candidates", "dim"),
            "item embeddings of the candidates (zeros for a candidate without one)",
        ),
        TensorSpec(
            "candidate_features", "float32", ("candidates", NUM_FEATURES),
            "raw behavioural features φ(customer, candidate) from behaviour.behaviour_features, columns "
            f"{', '.join(FEATURE_NAMES)} (units in edgerec.core.behaviour)",
        ),
    ),
    outputs=(
        TensorSpec("purchase_logit", "float32", ("candidates",), "log-odds that the customer buys the candidate"),
        TensorSpec(
            "purchase_probability", "float32", ("candidates",),
            "probability that the customer buys the candidate, in [0, 1] (sigmoid of purchase_logit)",
        ),
        TensorSpec("log_quantity", "float32", ("candidates",), "natural log of the units expected if bought"),
        TensorSpec(
            "expected_quantity", "float32", ("candidates",), "units expected if bought, > 0 (exp of log_quantity)"
        ),
    ),
)

# The two-tower ranker's graphs, by name (not yet served: see the module docstring).
RANKER_SIGNATURES: dict[str, ModelSignature] = {ITEM_TOWER.name: ITEM_TOWER, RANKER.name: RANKER}

# Every model a bundle can hold, by name.
SIGNATURES: dict[str, ModelSignature] = {CROSS_ENCODER.name: CROSS_ENCODER}
