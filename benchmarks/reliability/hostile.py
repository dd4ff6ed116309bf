"""Hostile input: seeded Score, Rank, Recommend and ModelInfer messages and raw bytes, inputs with a known
answer, and a client that sends them.

What an attacker or a broken client can send: random and huge lists,
empty and enormous strings, odd Unicode (controls, bidi overrides, zero
widths, combining marks, emoji, NUL), absurd numbers (uint32 maxima,
negative varints, int64 extremes, days_ago negative, NaN, infinite or
1e308, rerank_top past max_rerank_top, purchased outside its enum), wrong
dtypes and shapes, tensors whose data does not match their shape, and bytes
that are no protobuf at all or protobuf with invalid UTF-8 in a string
field. The only acceptable answers are OK, INVALID_ARGUMENT and
RESOURCE_EXHAUSTED (NOT_FOUND for a ModelInfer naming a model or version
the server does not serve, FAILED_PRECONDITION for Recommend on a bundle
without the ranker); OK answers must hold what they must (`Kind.verify`: a
ModelInfer's outputs in `raw_output_contents`, as Triton's are, finite; the
domain API's scores in [0, 1], stages, order and Recommend's filters), and
the server must answer a health check after every case. Well-formed
ModelInfer rows are built as the server builds Score's (the bundle's
catalog, `Featurizer.build_pairs`, `Featurizer.pack`), so they follow the
row layout (`featurize.ROW_LAYOUT`); the ranker's feeds as it builds its own
(`behaviour_features`, `history_arrays`, `ranker_feeds`); such inputs,
unbroken, must be answered OK. On a two-stage bundle (`ModelFacts.ranker`)
the cases reach the ranker (rerank_top, days_ago, Recommend, ModelInfer of
`ranker` and `item_tower`); on one without it they check its refusals.

Each case is built from a `Source` of choices (an integer in a range, one of
some options, a text, some bytes). `edgerec reliability` draws them from a
seeded `SeededSource` (Python's `random`), so a run is repeatable and needs
no test library; the tests draw the same cases from hypothesis.
`HostileClient.check` sends one case and checks health; `fuzz` runs many for
the report, counting answers by code.

`known_answers` are the kinds of issue 11, each judged on its answer: rows
that break the layout (no candidate segment, a masked candidate, [SEP] or
[CLS] out of place, an id past the model's vocabulary) are refused naming
the row; free text the model cannot read (only emoji, 512 emoji, "A" * 512)
is refused naming the item; text made of special-token strings is scored as
plain text; a typed ModelInfer is answered in raw outputs; version "1"
answers; a candidate scores the same alone and among batch-mates. Then the
two-stage API's: a negative or non-finite days_ago is refused naming
`context[0].days_ago`, 1e308 reads as the 365-day cap and 0 as one minute,
rerank_top past max_rerank_top is refused naming it, Recommend's k and
purchased out of range are refused naming them and filters that leave
nothing answer no items; without the ranker, Recommend is FAILED_PRECONDITION.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import grpc
import numpy as np

from edgerec.benchmarks.harness.results import Tally
from edgerec.benchmarks.harness.server import ServerUnderTest, serving
from edgerec.benchmarks.reliability.config import ReliabilityConfig, served_config
from edgerec.benchmarks.reliability.report import Check, Scenario
from edgerec.core.behaviour import NUM_FEATURES, BehaviourTables, HistoryEntry, behaviour_features
from edgerec.core.bundle import VOCAB_SIZE, open_bundle
from edgerec.core.featurize import ContextEntry, EncodedBatch, Featurizer, item_key, load_catalog
from edgerec.core.ranker_inputs import history_arrays, ranker_feeds
from edgerec.core.signatures import CROSS_ENCODER, ITEM_TOWER, RANKER, RANKER_SIGNATURES, ModelSignature
from edgerec.proto import grpc_service_pb2 as kserve
from edgerec.proto import recommender_pb2 as domain
from edgerec.runtime.config import RankerConfig, ServerConfig
from edgerec.runtime.kserve_service import SERVED_VERSION_ALIASES
from edgerec.runtime.model_version import has_ranker
from edgerec.runtime.ranker import MAX_HISTORY

T = TypeVar("T")

# NOT_FOUND is the KServe protocol's answer to a model name or version this server does not serve;
# it is accepted only for a ModelInfer that names one (any other NOT_FOUND is a finding).
UNSERVED_MODEL = "NOT_FOUND (a model this server does not serve)"
ALLOWED = frozenset({"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", UNSERVED_MODEL})
# FAILED_PRECONDITION is Recommend's documented answer on a bundle without the ranker; it is accepted only
# there, for a Recommend call (any other FAILED_PRECONDITION is a finding).
NO_RANKER = "FAILED_PRECONDITION (Recommend on a bundle without the ranker)"
REFUSALS = ALLOWED - {"OK"} | {NO_RANKER}
# A client that receives status details larger than its metadata limit reports RESOURCE_EXHAUSTED itself:
# that is the server echoing too much back, not the server refusing a request.
OVERSIZED_DETAILS = "RESOURCE_EXHAUSTED (client side: the status details were too large)"
UINT32_MAX = 2**32 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
LIMITS = ServerConfig()  # the server's default list limits: the cases go past them
RANKER_LIMITS = RankerConfig()  # the server's default rerank_top bound and ranker batch: the cases go past them
_RECOMMENDER = domain.DESCRIPTOR.services_by_name["Recommender"].full_name
_KSERVE = kserve.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
METHODS = {
    "Score": f"/{_RECOMMENDER}/Score",
    "Rank": f"/{_RECOMMENDER}/Rank",
    "Recommend": f"/{_RECOMMENDER}/Recommend",
    "ModelInfer": f"/{_KSERVE}/ModelInfer",
}
ODD_STRINGS = (
    "\u202eevil\u202c",  # right-to-left override
    "\u200b\u200c\u200d\ufeff",  # zero widths only
    "e\u0301\u0301\u0301\u0301",  # stacked combining marks
    "\x00\x01\x7f",  # NUL and controls
    "\U0001f600\U0001f4a9\U0001f1fa\U0001f1f8",  # emoji and a flag
    "\ufffd\uffff\U0010ffff",  # replacement and non-characters
    "ＷＩＤＥ　ＴＥＸＴ",  # full width
    "%s%n{0}${x}'; DROP TABLE items;--",
    "   \t\n  ",
)
ENORMOUS_UNITS = ("a", "é", "\U0001f600", "\u0301", " ", "\x00", "\u200b", "LAMP ")
UINT32_EDGES = (UINT32_MAX, 2**31, 2**31 - 1, 1000, 999)
_MAX_RERANK = RANKER_LIMITS.max_rerank_top
RERANK_TOP_EDGES = (0, 1, _MAX_RERANK, _MAX_RERANK + 1, 2 * _MAX_RERANK, 2**31 - 1, 2**31, UINT32_MAX)
# days_ago: 0 and fractions, a huge finite value (capped at 365 by the ranker), the smallest doubles, and
# what the server must refuse (negative, NaN, infinite).
DAYS_AGO_EDGES = (
    0.0, -0.0, 5e-324, 1 / 1440, 0.5, 364.999, 365.0, 366.0, 2.0**53, 1e308, 1.7976931348623157e308,
    -5e-324, -1.0, -1e308, math.nan, -math.nan, math.inf, -math.inf,
)  # fmt: skip
PURCHASED_ODD = (3, 7, -1, 2**31 - 1, -(2**31))  # not a PurchasedFilter value (proto3 enums are open)
# Code point ranges a drawn text mixes (lone surrogates are left out: protobuf cannot encode them;
# the raw-bytes cases carry invalid UTF-8 instead).
CODE_POINTS = ((0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x2FFF), (0x3000, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x10FFFF))


class Source(Protocol):
    """Where a hostile case's choices come from (`SeededSource` here; hypothesis in the tests)."""

    def integer(self, low: int, high: int) -> int:
        """An integer in [low, high]."""

    def choice(self, options: Sequence[T]) -> T:
        """One of `options`."""

    def text(self, max_size: int) -> str:
        """Up to `max_size` characters of any Unicode but lone surrogates."""

    def binary(self, min_size: int, max_size: int) -> bytes:
        """`min_size` to `max_size` arbitrary bytes."""


class SeededSource:
    """Choices from Python's `random.Random(seed)`: the same seed gives the same cases."""

    def __init__(self, seed: int | str) -> None:
        self._random = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        return self._random.randint(low, high)

    def choice(self, options: Sequence[T]) -> T:
        return self._random.choice(options)

    def text(self, max_size: int) -> str:
        ranges = [self._random.choice(CODE_POINTS) for _ in range(self._random.randint(0, max_size))]
        return "".join(chr(self._random.randint(low, high)) for low, high in ranges)

    def binary(self, min_size: int, max_size: int) -> bytes:
        return self._random.randbytes(self._random.randint(min_size, max_size))


Case = Callable[[Source], tuple[str, object]]  # builds one (method, message) from a source of choices


def _one_of(source: Source, *options: Callable[[], T]) -> T:
    """The value of one of `options`, picked by `source`."""
    return options[source.integer(0, len(options) - 1)]()


def _boolean(source: Source) -> bool:
    return source.integer(0, 1) == 1


# -- strings and numbers ---------------------------------------------------------------------
def short_text(source: Source) -> str:
    return _one_of(source, lambda: "", lambda: source.text(40), lambda: source.choice(ODD_STRINGS))


def enormous_text(source: Source) -> str:
    return source.choice(ENORMOUS_UNITS) * source.integer(500, 60_000)


def uint32(source: Source) -> int:
    return _one_of(
        source, lambda: source.integer(0, 10), lambda: source.choice(UINT32_EDGES), lambda: source.integer(0, UINT32_MAX)
    )


def _text(source: Source, enormous: bool) -> str:
    return _one_of(source, lambda: short_text(source), lambda: enormous_text(source)) if enormous else short_text(source)


def _item_id(source: Source, known: Sequence[str], enormous: bool) -> str:
    return _one_of(source, lambda: source.choice(known), lambda: _text(source, enormous))


def _candidate(source: Source, known: Sequence[str], enormous: bool) -> domain.Candidate:
    """A catalog item (odd text beside it), a new item described by odd text, or anything at all."""
    item_id = _one_of(source, lambda: source.choice(known), lambda: "", lambda: _item_id(source, known, enormous))
    return domain.Candidate(item_id=item_id, text=_text(source, enormous))


def days_ago(source: Source) -> float | None:
    """A context item's `days_ago`: unset (None), an edge (`DAYS_AGO_EDGES`), or thousandths of a day either side of 0."""
    return _one_of(
        source,
        lambda: None,
        lambda: source.choice(DAYS_AGO_EDGES),
        lambda: source.integer(0, 10**6) / 1000,
        lambda: -source.integer(1, 10**6) / 1000,
    )


def rerank_top(source: Source) -> int | None:
    """A request's `rerank_top`: unset (None), a few, an edge around max_rerank_top, or any uint32."""
    return _one_of(
        source, lambda: None, lambda: source.integer(0, 6), lambda: source.choice(RERANK_TOP_EDGES), lambda: uint32(source)
    )


def _with_days_ago(source: Source, item: domain.ContextItem) -> domain.ContextItem:
    days = days_ago(source)
    if days is not None:
        item.days_ago = days
    return item


def _context_item(source: Source, known: Sequence[str], enormous: bool) -> domain.ContextItem:
    item_id = _one_of(source, lambda: source.choice(known), lambda: "", lambda: _item_id(source, known, enormous))
    return _with_days_ago(source, domain.ContextItem(item_id=item_id, text=_text(source, enormous), count=uint32(source)))


def _with_rerank_top(source: Source, request: T) -> T:
    top = rerank_top(source)
    if top is not None:
        request.rerank_top = top
    return request


def _list(source: Source, element: Callable[[bool], T], limit: int) -> list[T]:
    """A few elements that may hold enormous strings, or one small element repeated: up to 64 times, or
    past the server's default `limit` (long valid lists would only time the model)."""
    return _one_of(
        source,
        lambda: [element(True) for _ in range(source.integer(1, 6))],
        lambda: [element(True) for _ in range(source.integer(0, 6))],
        lambda: [element(False)] * _one_of(
            source, lambda: source.integer(7, 64), lambda: source.integer(limit + 1, limit * 3 // 2)
        ),
    )


def _context(source: Source, known: Sequence[str]) -> list[domain.ContextItem]:
    return _list(source, lambda big: _context_item(source, known, big), LIMITS.max_context_items)


def score_request(source: Source, known: Sequence[str]) -> domain.ScoreRequest:
    request = domain.ScoreRequest(
        context=_context(source, known),
        candidates=_list(source, lambda big: _candidate(source, known, big), LIMITS.max_candidates),
    )
    return _with_rerank_top(source, request)


def rank_request(source: Source, known: Sequence[str]) -> domain.RankRequest:
    request = domain.RankRequest(
        context=_context(source, known),
        candidates=_list(source, lambda big: _candidate(source, known, big), LIMITS.max_candidates),
        k=_one_of(source, lambda: source.integer(1, 6), lambda: uint32(source)),
    )
    return _with_rerank_top(source, request)


def catalog_context(source: Source, known: Sequence[str], max_items: int = 4) -> list[domain.ContextItem]:
    """0 to `max_items` catalog items with any count and a drawn `days_ago`: only the days may be wrong."""
    return [_with_days_ago(source, domain.ContextItem(item_id=source.choice(known), count=uint32(source)))
            for _ in range(source.integer(0, max_items))]  # fmt: skip


def two_stage_score_request(source: Source, known: Sequence[str]) -> domain.ScoreRequest:
    """A Score of 1-8 catalog candidates after a catalog context (`catalog_context`): its only hostile fields
    are `days_ago` and `rerank_top`, so its answer is known (`two_stage_refusal`)."""
    candidates = [domain.Candidate(item_id=source.choice(known)) for _ in range(source.integer(1, 8))]
    return _with_rerank_top(source, domain.ScoreRequest(context=catalog_context(source, known), candidates=candidates))


def two_stage_refusal(request, ranker: bool, max_rerank_top: int) -> str | None:
    """The field whose INVALID_ARGUMENT must answer `two_stage_score_request`'s request, None when it must be
    answered OK: on a bundle with the ranker `rerank_top` past `max_rerank_top` (checked first; a bundle
    without it ignores rerank_top), else the first context item whose `days_ago` is negative or not finite
    (checked on every bundle)."""
    if ranker and request.HasField("rerank_top") and request.rerank_top > max_rerank_top:
        return "rerank_top"
    for i, item in enumerate(request.context):
        if item.HasField("days_ago") and not (math.isfinite(item.days_ago) and item.days_ago >= 0):
            return f"context[{i}].days_ago"
    return None


def exclude_ids(source: Source, known: Sequence[str]) -> list[str]:
    """Recommend's `exclude_ids`: none, a few ids (catalog, odd or enormous), the whole catalog (nothing left
    to recommend), or one id repeated 1,000 to 200,000 times, or just past the server's max_message_bytes."""
    return _one_of(
        source,
        lambda: [],
        lambda: [_item_id(source, known, True) for _ in range(source.integer(1, 6))],
        lambda: [*known, *(_item_id(source, known, False) for _ in range(source.integer(0, 3)))],
        lambda: _repeated(source, _one_of(source, lambda: source.choice(known), lambda: source.choice(ODD_STRINGS))),
    )


def _repeated(source: Source, item_id: str) -> list[str]:
    """`item_id` many times: 1,000 to 200,000, or as many as make the list just longer than max_message_bytes."""
    past_limit = LIMITS.max_message_bytes // (len(item_id.encode()) + 2) + 1
    return [item_id] * _one_of(source, lambda: source.integer(1_000, 200_000), lambda: past_limit + source.integer(0, 999))


def recommend_request(source: Source, known: Sequence[str]) -> domain.RecommendRequest:
    """A Recommend request: hostile context (as Score's) or a catalog one (`catalog_context`), k at and past
    its bounds (the catalog's size, max_candidates, uint32 extremes), `exclude_ids` (`exclude_ids`),
    `purchased` in and outside the enum, and `rerank_top` (`rerank_top`)."""
    request = domain.RecommendRequest(
        context=_one_of(source, lambda: _context(source, known), lambda: catalog_context(source, known)),
        k=_one_of(
            source,
            lambda: source.integer(1, 12),
            lambda: source.choice((0, len(known), len(known) + 1, LIMITS.max_candidates, LIMITS.max_candidates + 1)),
            lambda: uint32(source),
        ),
        exclude_ids=exclude_ids(source, known),
        purchased=_one_of(source, lambda: source.integer(0, 2), lambda: source.choice(PURCHASED_ODD)),
    )
    return _with_rerank_top(source, request)


# -- KServe ModelInfer ------------------------------------------------------------------------------
INPUT_NAMES = CROSS_ENCODER.input_names
OUTPUT_NAMES = CROSS_ENCODER.output_names
PROBABILITY = "purchase_probability"  # the output that must lie in [0, 1]
# The right KServe datatype three times in ten, else a wrong one.
DATATYPES = (CROSS_ENCODER.inputs[0].kserve_datatype,) * 3 + ("INT32", "FP32", "FP64", "BYTES", "BOOL", "", "int64")
# How the values of a request are broken ("valid": well-formed rows are left as the model reads them;
# "random ids": every id drawn at random, which breaks the row layout).
REGIMES = (
    "valid", "negative ids", "ids past the vocabulary", "int64 extremes", "masks not 0/1", "rows attending nothing",
    "random ids",
)  # fmt: skip
Rows = tuple[np.ndarray, np.ndarray, np.ndarray]  # input_ids, attention_mask, token_type_ids: int64 [rows, width]


def model_rows(source: Source, facts: ModelFacts, max_rows: int = 8) -> Rows:
    """1 to `max_rows` rows as the model reads them (`featurize.ROW_LAYOUT`), built as the server builds Score's:
    each a catalog candidate after a history of 0-3 catalog items (`Featurizer.build_pairs`), packed by the
    bundle's featurizer (`Featurizer.pack`), then padded with [PAD] to a drawn width up to `max_length`."""
    featurizer, catalog = facts.featurizer, facts.featurizer.catalog
    pairs = []
    for _ in range(source.integer(1, max_rows)):
        history = [source.choice(facts.item_ids) for _ in range(source.integer(0, 3))]
        entries = [ContextEntry(catalog[item], source.integer(1, 12), item_key(item)) for item in history]
        candidate = source.choice(facts.item_ids)
        pairs += featurizer.build_pairs(entries, [(item_key(candidate), catalog[candidate])]).pairs()
    batch = featurizer.pack(pairs)
    extra = ((0, 0), (0, source.integer(batch.input_ids.shape[1], facts.max_length) - batch.input_ids.shape[1]))
    return (
        np.pad(batch.input_ids, extra, constant_values=featurizer.pad_id),
        np.pad(batch.attention_mask, extra),
        np.pad(batch.token_type_ids, extra),
    )


def add_inputs(request: kserve.ModelInferRequest, rows: Rows, raw: bool) -> kserve.ModelInferRequest:
    """The three inputs of `rows` on `request`, as raw little-endian bytes or typed `int64_contents`."""
    for name, values in zip(INPUT_NAMES, rows):
        datatype = CROSS_ENCODER.input(name).kserve_datatype
        tensor = request.inputs.add(name=name, datatype=datatype, shape=list(values.shape))
        if raw:
            request.raw_input_contents.append(np.ascontiguousarray(values, dtype="<i8").tobytes())
        else:
            tensor.contents.int64_contents.extend(values.ravel().tolist())
    return request


def break_rows(regime: str, rows: Rows, vocab_size: int, rng: np.random.Generator) -> None:
    """Break well-formed rows in place the way `regime` says (one value of one row, or more); "valid" leaves them."""
    ids, mask, types = rows
    row, column = rng.integers(ids.shape[0]), rng.integers(ids.shape[1])
    if regime == "negative ids":
        ids[row, column] = -rng.integers(1, 2**40)
    elif regime == "ids past the vocabulary":
        ids[row, column] = vocab_size + rng.integers(0, 2**40)
    elif regime == "int64 extremes":
        ids[row, column] = rng.choice([INT64_MIN, INT64_MAX])
    elif regime == "masks not 0/1":
        (mask if rng.integers(2) else types)[row, column] = rng.choice([2, -1, 2**62])
    elif regime == "rows attending nothing":
        mask[row] = 0
    elif regime == "random ids":
        ids[:] = rng.integers(0, vocab_size, size=ids.shape)


def _values(name: str, count: int, regime: str, vocab_size: int, rng: np.random.Generator) -> np.ndarray:
    """Values of one input tensor of a malformed request: random ids, 1s, 0/1 types, broken as `regime` says."""
    ids, mask, _ = INPUT_NAMES
    if name == ids:
        values = rng.integers(0, vocab_size, size=count)
        if regime == "negative ids":
            values[rng.integers(count)] = -rng.integers(1, 2**40)
        elif regime == "ids past the vocabulary":
            values[rng.integers(count)] = vocab_size + rng.integers(0, 2**40)
        elif regime == "int64 extremes":
            values[rng.integers(count)] = rng.choice([np.iinfo(np.int64).min, np.iinfo(np.int64).max])
        return values
    values = np.ones(count, dtype=np.int64) if name == mask else rng.integers(0, 2, size=count)
    if name == mask and regime == "rows attending nothing":
        values[:] = 0
    if regime == "masks not 0/1":
        values[rng.integers(count)] = rng.choice([2, -1, 2**62])
    return values


def infer_request(source: Source, facts: ModelFacts) -> kserve.ModelInferRequest:
    """A ModelInfer request: half of them well formed (the model's signature, rows as the model reads them,
    `model_rows`) with values broken or not (`REGIMES`); the other half wrong in names, dtypes, shapes and sizes."""
    odd_name, odd_version = source.integer(0, 9) == 0, source.integer(0, 9) == 0
    request = kserve.ModelInferRequest(
        model_name=short_text(source) if odd_name else facts.model_name,
        model_version=short_text(source) if odd_version else "",
        id=short_text(source),
    )
    well_formed = _boolean(source)
    regime = source.choice(REGIMES)
    raw = _boolean(source)
    rng = np.random.default_rng(source.integer(0, 2**32 - 1))
    if well_formed:
        rows = model_rows(source, facts)
        break_rows(regime, rows, facts.vocab_size, rng)
        add_inputs(request, rows, raw)
    else:
        _malformed_inputs(source, request, regime, raw, rng, facts)
    for _ in range(source.integer(0, 3)):
        request.outputs.add(name=_one_of(source, lambda: source.choice(OUTPUT_NAMES), lambda: short_text(source)))
    return request


def _malformed_inputs(
    source: Source,
    request: kserve.ModelInferRequest,
    regime: str,
    raw: bool,
    rng: np.random.Generator,
    facts: ModelFacts,
) -> None:
    """Inputs wrong in names, dtypes, shapes and sizes, or data that does not fit the shape."""
    max_length = facts.max_length
    rows = _one_of(
        source, lambda: source.integer(-3, 8), lambda: source.integer(9, 1100), lambda: source.choice([2**31, 2**62])
    )
    width = _one_of(
        source, lambda: source.integer(-3, max_length), lambda: source.integer(max_length + 1, 4 * max_length)
    )
    names = [
        _one_of(source, lambda: source.choice(INPUT_NAMES), lambda: short_text(source))
        for _ in range(source.integer(0, 5))
    ]
    for name in names:
        shape = _one_of(
            source,
            lambda: [rows, width],
            lambda: [source.integer(INT64_MIN, INT64_MAX) for _ in range(source.integer(0, 4))],
            lambda: [rows, width + 1],
        )
        datatype, misfit = source.choice(DATATYPES), source.choice([0, 0, -1, 1])
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        plausible = 0 < rows <= 1100 and 0 < width <= 4 * max_length
        count = max(0, (rows * width if plausible else source.integer(0, 64)) + misfit)
        values = _values(name, max(count, 1), regime, facts.vocab_size, rng)[:count]
        if raw:
            data = values.astype("<i8").tobytes()
            request.raw_input_contents.append(_one_of(source, lambda: data, lambda: source.binary(0, 64)))
        elif source.integer(0, 4) == 0:
            tensor.contents.fp32_contents.extend(values.astype(np.float32).tolist())  # the wrong dtype's field
        else:
            tensor.contents.int64_contents.extend(values.tolist())


def valid_infer_request(source: Source, facts: ModelFacts) -> kserve.ModelInferRequest:
    """A request the server must answer OK: rows as the model reads them (`model_rows`), raw or typed, addressed
    by any name and version the model answers to, asking for every output or some, in any order."""
    request = kserve.ModelInferRequest(
        model_name=source.choice([facts.model_name, CROSS_ENCODER.name]),
        model_version=source.choice([*SERVED_VERSION_ALIASES, facts.model_version]),
        id=source.choice(["", "valid rows"]),
    )
    add_inputs(request, model_rows(source, facts), raw=_boolean(source))
    first, second = OUTPUT_NAMES
    for name in source.choice([(), (first,), (second,), (first, second), (second, first)]):
        request.outputs.add(name=name)
    return request


def signature_named(model_name: str) -> ModelSignature:
    """The model a ModelInfer's `model_name` addresses, as the server reads it: `item_tower` and `ranker` by
    their names; any other name it answers to (the bundle's, `cross_encoder`) is the cross-encoder."""
    return RANKER_SIGNATURES.get(model_name, CROSS_ENCODER)


def _axis_sizes(request: kserve.ModelInferRequest, signature: ModelSignature) -> dict[str, int]:
    """The size of each named axis in a request's inputs (one per axis in a request the server answered)."""
    sizes: dict[str, int] = {}
    names = set(signature.input_names)
    for tensor in request.inputs:
        if tensor.name in names:
            for axis, size in zip(signature.input(tensor.name).shape, tensor.shape):
                if isinstance(axis, str):
                    sizes.setdefault(axis, int(size))
    return sizes


def raw_answer_problem(request: object, data: bytes, dim: int | None = None) -> str | None:
    """What is wrong with an OK ModelInfer answer (None: nothing). It must hold what Triton's clients read:
    each requested output of the model named (every output if none was named), in order, with its datatype and
    its shape by the request's axes ([batch] rows of the cross-encoder, [candidates] of the ranker, [items, dim]
    of the item tower, `dim` the bundle's embedding width when given), its values in `raw_output_contents` at
    the same index (little-endian) and no typed contents; probabilities in [0, 1], every value finite."""
    signature = signature_named(request.model_name)
    response = kserve.ModelInferResponse.FromString(data)
    sizes = _axis_sizes(request, signature) | ({"dim": dim} if dim is not None else {})
    wanted = [output.name for output in request.outputs] or list(signature.output_names)
    names = [output.name for output in response.outputs]
    if names != wanted or len(response.raw_output_contents) != len(wanted):
        return f"outputs {names} with {len(response.raw_output_contents)} raw_output_contents; asked for {wanted}"
    for output, raw in zip(response.outputs, response.raw_output_contents):
        spec = signature.output(output.name)
        shape = [sizes.get(axis, -1) if isinstance(axis, str) else axis for axis in spec.shape]
        if len(shape) == len(output.shape):  # an axis no input names (the item tower's dim, unknown): the answer's
            shape = [int(got) if want == -1 and got > 0 else want for want, got in zip(shape, output.shape)]
        size = math.prod(shape) * spec.numpy_dtype.itemsize
        typed = output.HasField("contents")
        if output.datatype != spec.kserve_datatype or list(output.shape) != shape or typed or len(raw) != size:
            return (
                f"{output.name} is {output.datatype} {list(output.shape)} in {len(raw)} raw bytes"
                f"{' and typed contents' if typed else ''}; expected {spec.kserve_datatype} "
                f"{shape} in {size} raw bytes only"
            )
        values = np.frombuffer(raw, spec.numpy_dtype.newbyteorder("<"))
        if not np.isfinite(values).all() or (output.name == PROBABILITY and ((values < 0) | (values > 1)).any()):
            return f"{output.name} holds {values.tolist()[:8]}"
    return None


def raw_outputs(data: bytes, signature: ModelSignature = CROSS_ENCODER) -> dict[str, np.ndarray]:
    """Each output of a ModelInfer answer of `signature`'s model, by name, read from `raw_output_contents`."""
    response = kserve.ModelInferResponse.FromString(data)
    return {
        output.name: np.frombuffer(raw, signature.output(output.name).numpy_dtype.newbyteorder("<"))
        for output, raw in zip(response.outputs, response.raw_output_contents)
    }


# -- KServe ModelInfer of the two-tower ranker's models (item_tower, ranker) ----------------------------
# How a request's tensors are broken ("valid": as the server builds its own feeds; "malformed tensors":
# `malform`). The ranker's refusals are INVALID_ARGUMENT. "counts or days outside their range" and "extreme
# finite values" are finite values outside the signature's domain: refused or not, an OK answer must still be
# finite (the fuzzer found them answered OK with NaN or inf; the server now refuses negative counts and days,
# and any call whose outputs are not finite). `UNCHECKED_RANKER_REGIMES`: none left.
RANKER_REGIMES = (
    "valid", "NaN or infinite values", "history_mask not 0/1", "axis sizes disagree", "wrong widths",
    "too many rows", "counts or days outside their range", "extreme finite values", "malformed tensors",
)  # fmt: skip
UNCHECKED_RANKER_REGIMES: tuple[str, ...] = ()
TOWER_REGIMES = (
    "valid", "negative ids", "ids past the vocabulary", "int64 extremes", "masks not 0/1", "rows attending nothing",
    "axis sizes disagree", "sequence too short or too long", "too many rows", "malformed tensors",
)  # fmt: skip
MALFORMATIONS = (
    "wrong datatype", "missing input", "input given twice", "unknown input name", "data does not fit the shape",
    "wrong rank", "absurd shape",
)  # fmt: skip
ODD_DATATYPES = ("FP64", "FP16", "INT32", "INT64", "FP32", "BYTES", "BOOL", "UINT64", "", "fp32", "int64")
TYPED_CONTENTS = {"int64": "int64_contents", "float32": "fp32_contents"}
STAND_IN_DIM = 8  # embedding width of the ranker cases sent to a bundle without the ranker (refused unread)


def ranker_tensors(
    source: Source, facts: ModelFacts, max_history: int = 6, max_candidates: int = 8
) -> dict[str, np.ndarray]:
    """One customer's `RANKER` feeds built as the server builds Score's (`runtime.ranker`): 0 to `max_history`
    distinct catalog items with a count and days since bought (some unknown), 1 to `max_candidates` catalog
    candidates, their behavioural features (`behaviour_features`), arranged by `history_arrays` and
    `ranker_feeds` (an empty history is one masked slot). Copies: breaking them leaves the bundle's matrix."""
    items = facts.item_ids
    past = dict.fromkeys(source.choice(items) for _ in range(source.integer(0, max_history)))
    history = []
    for item in past:
        days = _one_of(source, lambda: None, lambda: source.integer(1, 2000) / 4)  # some unknown, some past the cap
        history.append(HistoryEntry(item_key(item), source.integer(1, 50), days))
    candidates = [source.choice(items) for _ in range(source.integer(1, max_candidates))]
    rows = np.array([facts.catalog_rows[item] for item in candidates], np.int64)
    if facts.tables is not None:
        features = behaviour_features(history, candidates, facts.tables)
    else:
        features = np.zeros((len(candidates), NUM_FEATURES), np.float32)
    feeds = ranker_feeds(facts.embeddings, history_arrays(history, facts.catalog_rows, MAX_HISTORY), rows, features)
    return {name: np.array(values, copy=True) for name, values in feeds.items()}


def tower_tensors(source: Source, facts: ModelFacts, max_items: int = 8) -> dict[str, np.ndarray]:
    """1 to `max_items` catalog items as the item tower reads them: `[CLS] item tokens [SEP]` (the catalog's
    tokens, cut to max_item_tokens as `Featurizer.encode_texts` cuts free text), padded with [PAD] to a drawn
    width up to max_item_tokens + 2."""
    featurizer = facts.featurizer
    rows = [
        (featurizer.cls_id, *featurizer.catalog[source.choice(facts.item_ids)], featurizer.sep_id)
        for _ in range(source.integer(1, max_items))
    ]
    width = source.integer(max(map(len, rows)), facts.max_item_tokens + 2)
    ids = np.full((len(rows), width), featurizer.pad_id, np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return dict(zip(ITEM_TOWER.input_names, (ids, mask)))


def _poke(source: Source, values: np.ndarray, options: Sequence) -> None:
    """Set one element of `values` (in place) to one of `options`."""
    values.reshape(-1)[source.integer(0, values.size - 1)] = source.choice(options)


def _rows_resized(values: np.ndarray, rows: int, axis: int = 0) -> np.ndarray:
    """`values` with `rows` entries along `axis`: cut, or its entries repeated in turn."""
    return np.take(values, np.arange(rows) % max(values.shape[axis], 1), axis=axis) if values.shape[axis] else values


def _resized_by_one(source: Source, values: np.ndarray, axis: int) -> np.ndarray:
    """One entry more or one fewer along `axis` (one more when there is only one)."""
    size = values.shape[axis]
    return _rows_resized(values, size + (1 if size <= 1 or _boolean(source) else -1), axis)


def break_ranker(regime: str, tensors: dict[str, np.ndarray], source: Source) -> None:
    """Break well-formed ranker feeds in place the way `regime` (`RANKER_REGIMES`) says."""
    embeddings, counts, days, mask, candidates, features = RANKER.input_names
    floats = (embeddings, counts, days, candidates, features)
    if regime == "NaN or infinite values":
        _poke(source, tensors[source.choice(floats)], (math.nan, math.inf, -math.inf))
    elif regime == "history_mask not 0/1":
        _poke(source, tensors[mask], (2, -1, 2**62, INT64_MIN, INT64_MAX))
    elif regime == "axis sizes disagree":
        name = source.choice(RANKER.input_names)
        tensors[name] = _resized_by_one(source, tensors[name], 0)
    elif regime == "wrong widths":
        name = source.choice((embeddings, candidates, features))
        tensors[name] = _resized_by_one(source, tensors[name], 1)
    elif regime == "too many rows":
        if _boolean(source):
            rows = LIMITS.max_context_items + source.integer(1, 8)
            names = (embeddings, counts, days, mask)
        else:
            rows = RANKER_LIMITS.ranker_max_batch_candidates + source.integer(1, 8)
            names = (candidates, features)
        for name in names:
            tensors[name] = _rows_resized(tensors[name], rows)
    elif regime == "counts or days outside their range":
        _poke(source, tensors[source.choice((counts, days))], (0.0, -0.5, -1.0, -2.0, -3.4e38))
    elif regime == "extreme finite values":
        _poke(source, tensors[source.choice(floats)], (3.4e38, -3.4e38, 1e30, -1e30, 1e-45))


def break_tower(regime: str, tensors: dict[str, np.ndarray], source: Source, facts: ModelFacts) -> None:
    """Break well-formed item-tower rows in place the way `regime` (`TOWER_REGIMES`) says."""
    ids_name, mask_name = ITEM_TOWER.input_names
    ids, mask = tensors[ids_name], tensors[mask_name]
    if regime == "negative ids":
        _poke(source, ids, (-1, -facts.vocab_size, -(2**40)))
    elif regime == "ids past the vocabulary":
        _poke(source, ids, (facts.vocab_size, facts.vocab_size + 1, 2**40))
    elif regime == "int64 extremes":
        _poke(source, ids, (INT64_MIN, INT64_MAX))
    elif regime == "masks not 0/1":
        _poke(source, mask, (2, -1, 2**62, INT64_MIN))
    elif regime == "rows attending nothing":
        mask[source.integer(0, mask.shape[0] - 1)] = 0
    elif regime == "axis sizes disagree":
        name = source.choice(ITEM_TOWER.input_names)
        tensors[name] = _resized_by_one(source, tensors[name], source.integer(0, 1))
    elif regime == "sequence too short or too long":
        width = _one_of(source, lambda: 1, lambda: facts.max_item_tokens + 2 + source.integer(1, 40))
        for name in ITEM_TOWER.input_names:
            tensors[name] = _rows_resized(tensors[name], width, axis=1)
    elif regime == "too many rows":
        for name in ITEM_TOWER.input_names:
            tensors[name] = _rows_resized(tensors[name], LIMITS.max_candidates + source.integer(1, 8))


def add_tensors(
    request: kserve.ModelInferRequest, signature: ModelSignature, tensors: dict[str, np.ndarray], raw: bool
) -> kserve.ModelInferRequest:
    """Every input of `signature` from `tensors` on `request`, as raw little-endian bytes or typed contents."""
    for spec in signature.inputs:
        values = np.asarray(tensors[spec.name], dtype=spec.numpy_dtype)
        tensor = request.inputs.add(name=spec.name, datatype=spec.kserve_datatype, shape=list(values.shape))
        if raw:
            request.raw_input_contents.append(np.ascontiguousarray(values, spec.numpy_dtype.newbyteorder("<")).tobytes())
        else:
            getattr(tensor.contents, TYPED_CONTENTS[spec.dtype]).extend(values.ravel().tolist())
    return request


def malform(source: Source, request: kserve.ModelInferRequest, signature: ModelSignature) -> None:
    """Break one input of a request in its form (`MALFORMATIONS`): datatype, presence, name, size, shape."""
    index = source.integer(0, len(request.inputs) - 1)
    tensor, raw = request.inputs[index], request.raw_input_contents
    how = source.choice(MALFORMATIONS)
    if how == "wrong datatype":
        tensor.datatype = source.choice([d for d in ODD_DATATYPES if d != tensor.datatype])
    elif how == "missing input":
        del request.inputs[index]
        if raw:
            del raw[index]
    elif how == "input given twice":
        request.inputs.add().CopyFrom(tensor)
        if raw:
            raw.append(raw[index])
    elif how == "unknown input name":
        tensor.name = _one_of(source, lambda: short_text(source), lambda: source.choice(CROSS_ENCODER.input_names))
    elif how == "data does not fit the shape":
        if raw:
            cut = source.integer(1, 8)
            raw[index] = _one_of(source, lambda: raw[index][:-cut], lambda: raw[index] + source.binary(cut, cut))
        else:
            values = getattr(tensor.contents, TYPED_CONTENTS[signature.input(tensor.name).dtype])
            if values and _boolean(source):
                del values[-1]
            else:
                values.append(0)
    elif how == "wrong rank":
        if tensor.shape and _boolean(source):
            del tensor.shape[-1]
        else:
            tensor.shape.append(1)
    elif how == "absurd shape":
        tensor.shape[source.integer(0, len(tensor.shape) - 1)] = source.choice((-1, 0, 2**31, 2**62, INT64_MIN, INT64_MAX))


def _two_stage_infer_request(
    source: Source, signature: ModelSignature, regime: str, tensors: dict[str, np.ndarray]
) -> kserve.ModelInferRequest:
    """The request of one `signature` model carrying `tensors`; one in ten under an odd version (NOT_FOUND)."""
    odd_version = source.integer(0, 9) == 0
    request = kserve.ModelInferRequest(
        model_name=signature.name,
        model_version=short_text(source) if odd_version else source.choice(SERVED_VERSION_ALIASES),
        id=short_text(source),
    )
    add_tensors(request, signature, tensors, raw=_boolean(source))
    if regime == "malformed tensors":
        malform(source, request, signature)
    for _ in range(source.integer(0, 2)):
        request.outputs.add(
            name=_one_of(source, lambda: source.choice(signature.output_names), lambda: short_text(source))
        )
    return request


def ranker_infer_request(
    source: Source, facts: ModelFacts, regimes: Sequence[str] = RANKER_REGIMES
) -> kserve.ModelInferRequest:
    """A ModelInfer of `ranker`: feeds built as the server builds them (`ranker_tensors`), broken or not (one
    of `regimes`), raw or typed, under a served version or an odd one, asking for any outputs."""
    regime = source.choice(regimes)
    tensors = ranker_tensors(source, facts)
    break_ranker(regime, tensors, source)
    return _two_stage_infer_request(source, RANKER, regime, tensors)


def tower_infer_request(source: Source, facts: ModelFacts) -> kserve.ModelInferRequest:
    """A ModelInfer of `item_tower`: catalog items' token rows (`tower_tensors`), broken or not (`TOWER_REGIMES`)."""
    regime = source.choice(TOWER_REGIMES)
    tensors = tower_tensors(source, facts)
    break_tower(regime, tensors, source, facts)
    return _two_stage_infer_request(source, ITEM_TOWER, regime, tensors)


def valid_two_stage_infer_request(source: Source, facts: ModelFacts) -> kserve.ModelInferRequest:
    """A ModelInfer of `ranker` or `item_tower` a two-stage bundle must answer OK: its feeds as the server
    builds them (`ranker_tensors`, `tower_tensors`), raw or typed, under any version the model answers to,
    asking for every output or some, in any order."""
    signature = source.choice((RANKER, ITEM_TOWER))
    tensors = ranker_tensors(source, facts) if signature is RANKER else tower_tensors(source, facts)
    request = kserve.ModelInferRequest(
        model_name=signature.name, model_version=source.choice([*SERVED_VERSION_ALIASES, facts.model_version])
    )
    add_tensors(request, signature, tensors, raw=_boolean(source))
    names = list(signature.output_names)
    for _ in range(source.integer(0, len(names))):
        request.outputs.add(name=names.pop(source.integer(0, len(names) - 1)))
    return request


# -- raw bytes --------------------------------------------------------------------------------
def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative numbers as protobuf writes int64: ten bytes
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes | int) -> bytes:
    key = _varint((number << 3) | wire_type)
    if wire_type == 0:
        return key + _varint(int(payload))
    if wire_type == 2:
        return key + _varint(len(payload)) + payload
    return key + bytes(payload)


def _wire_field(source: Source) -> bytes:
    """One protobuf field of any wire type: negative varints, bad UTF-8 strings, garbage sub-messages."""
    number = source.integer(1, 12)
    return _one_of(
        source,
        lambda: _field(number, 0, source.integer(INT64_MIN, INT64_MAX)),  # varint (negative: 10 bytes)
        lambda: _field(number, 2, source.binary(0, 64)),  # length-delimited
        lambda: _field(number, 1, source.binary(8, 8)),
        lambda: _field(number, 5, source.binary(4, 4)),
    )


def bad_utf8_candidate(junk: bytes) -> bytes:
    """A ScoreRequest/RankRequest whose candidate (field 2) has an item_id (field 1) that is not UTF-8."""
    return _field(2, 2, _field(1, 2, b"\xff" + junk))


def raw_message(source: Source) -> bytes:
    """Bytes that are no protobuf, a well-formed wire message of random fields, or a string that is not UTF-8."""
    return _one_of(
        source,
        lambda: source.binary(0, 512),
        lambda: b"".join(_wire_field(source) for _ in range(source.integer(0, 8))),
        lambda: bad_utf8_candidate(source.binary(0, 8)),
    )


# -- sending one case ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Answer:
    """What one call got: its code (see `HostileClient.send`), details, the response's bytes (OK only), and
    whether the server answered a health check after it."""

    code: str
    details: str
    data: bytes = b""
    healthy: bool = True


@dataclasses.dataclass
class HostileClient:
    """Sends hostile cases to one server and checks it still answers health checks. `ranker`: the bundle
    served holds the two-tower ranker (`ModelFacts.ranker`), which says which models and calls it serves."""

    target: str
    model_name: str
    model_version: str
    timeout_s: float = 30.0
    ranker: bool = False

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(
            self.target, options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", 64 << 20)]
        )
        self._raw = {
            method: self.channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            for method, path in METHODS.items()
        }

    def send(self, method: str, message: object) -> Answer:
        """One call; `message` is a protobuf message or raw bytes."""
        data = message if isinstance(message, bytes) else message.SerializeToString()
        try:
            response = self._raw[method](data, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            code, details = exc.code().name, exc.details() or ""
            if code == "RESOURCE_EXHAUSTED" and "metadata size exceeds" in details:
                code = OVERSIZED_DETAILS
            elif code == "NOT_FOUND" and self._names_unserved_model(method, data):
                code = UNSERVED_MODEL
            elif code == "FAILED_PRECONDITION" and method == "Recommend" and not self.ranker:
                code = NO_RANKER
            return Answer(code, details)
        return Answer("OK", "", response)

    def _names_unserved_model(self, method: str, data: bytes) -> bool:
        if method != "ModelInfer":
            return False
        request = kserve.ModelInferRequest()
        try:
            request.ParseFromString(data)
        except Exception:  # protobuf's DecodeError: the server could not have read a name either
            return False
        names = (self.model_name, CROSS_ENCODER.name, *(RANKER_SIGNATURES if self.ranker else ()))
        versions = (*SERVED_VERSION_ALIASES, self.model_version)
        return request.model_name not in names or request.model_version not in versions

    def check(self, method: str, message: object) -> Answer:
        """Send one case, then a health check."""
        answer = self.send(method, message)
        return dataclasses.replace(answer, healthy=serving(self.channel, self.timeout_s))

    def close(self) -> None:
        self.channel.close()


def describe(message: object) -> str:
    """A short description of a case for assertion messages (messages can be megabytes)."""
    text = repr(message) if isinstance(message, bytes) else str(message)
    return text if len(text) <= 600 else f"{text[:600]}... ({len(text)} characters)"


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What the cases need to know about the served bundle."""

    model_name: str
    model_version: str
    vocab_size: int  # token ids the model embeds: the manifest's `vocab_size`, else the tokenizer's size
    max_length: int
    item_ids: list[str]
    featurizer: Featurizer = dataclasses.field(repr=False, compare=False)  # the bundle's, catalog included
    ranker: bool = False  # the bundle holds the two-tower ranker: Recommend answers, item_tower and ranker are served
    texts: dict[str, str] = dataclasses.field(default_factory=dict, repr=False, compare=False)  # catalog id -> text
    # The ranker's item embedding matrix (rows in catalog.json order, `catalog_rows`) and behaviour tables; without
    # a ranker a zero stand-in `STAND_IN_DIM` wide and no tables (its cases are refused unread).
    embeddings: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0, STAND_IN_DIM), np.float32), repr=False, compare=False
    )
    catalog_rows: dict[str, int] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    tables: BehaviourTables | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def max_item_tokens(self) -> int:
        return self.featurizer.config.max_item_tokens

    @property
    def embedding_dim(self) -> int:
        return int(self.embeddings.shape[1])

    @classmethod
    def of(cls, bundle_root: Path) -> "ModelFacts":
        bundle = open_bundle(bundle_root)
        featurizer = bundle.featurizer()
        vocab_size = bundle.model(CROSS_ENCODER.name).info.get(VOCAB_SIZE) or featurizer.tokenizer.get_vocab_size()
        catalog_rows = {item: row for row, item in enumerate(featurizer.catalog)}  # the embedding matrix's rows
        ranker = has_ranker(bundle)
        if ranker:
            embeddings = np.load(bundle.data_path("item_embeddings"))
            tables = BehaviourTables.load(bundle.data_path("behaviour_tables"))
        else:
            embeddings, tables = np.zeros((len(catalog_rows), STAND_IN_DIM), np.float32), None
        return cls(
            bundle.name, bundle.version, vocab_size, featurizer.config.max_length, sorted(featurizer.catalog), featurizer,
            ranker, {item: entry["text"] for item, entry in load_catalog(bundle.catalog_path).items()},
            embeddings, catalog_rows, tables,
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Kind:
    """A kind of seeded case: how to build one, the answers it may get, and what an OK answer must hold."""

    build: Case
    allowed: frozenset[str] = ALLOWED
    verify: Callable[[object, bytes], str | None] | None = None  # (message, OK answer's bytes) -> what is wrong, or None
    # message -> the field an INVALID_ARGUMENT must name first in its details, or None: it must be answered OK
    expect: Callable[[object], str | None] | None = None


def cases(facts: ModelFacts, max_rerank_top: int = RANKER_LIMITS.max_rerank_top) -> dict[str, Kind]:
    """Seeded cases by kind: Score, Rank and Recommend messages, ModelInfer of the cross-encoder, well-formed
    cross-encoder rows (which must be answered, in raw outputs), ModelInfer of `ranker` and `item_tower`, their
    well-formed feeds (answered on a two-stage bundle, NOT_FOUND on one without the ranker), and raw bytes sent
    to any method; and Score of catalog items whose only hostile fields are days_ago and rerank_top, judged on
    their known answer (`two_stage_refusal`, `max_rerank_top` the served bound). On a bundle without the ranker
    Recommend may answer FAILED_PRECONDITION (`NO_RANKER`)."""
    no_ranker = frozenset() if facts.ranker else frozenset({NO_RANKER})
    ranker_rows = frozenset({"OK"}) if facts.ranker else frozenset({UNSERVED_MODEL})

    def raw_answer(message: object, data: bytes) -> str | None:
        return raw_answer_problem(message, data, facts.embedding_dim)

    return {
        "Score": Kind(lambda source: ("Score", score_request(source, facts.item_ids)), verify=score_answer_problem(facts)),
        "Rank": Kind(lambda source: ("Rank", rank_request(source, facts.item_ids)), verify=rank_answer_problem(facts)),
        "Score, days_ago and rerank_top": Kind(
            lambda source: ("Score", two_stage_score_request(source, facts.item_ids)),
            frozenset({"OK", "INVALID_ARGUMENT"}),
            score_answer_problem(facts),
            lambda request: two_stage_refusal(request, facts.ranker, max_rerank_top),
        ),
        "Recommend": Kind(
            lambda source: ("Recommend", recommend_request(source, facts.item_ids)), ALLOWED | no_ranker,
            recommend_answer_problem(facts),
        ),
        "ModelInfer": Kind(lambda source: ("ModelInfer", infer_request(source, facts)), verify=raw_answer_problem),
        "ModelInfer, well-formed rows": Kind(
            lambda source: ("ModelInfer", valid_infer_request(source, facts)), frozenset({"OK"}), raw_answer_problem
        ),
        "ModelInfer ranker": Kind(lambda source: ("ModelInfer", ranker_infer_request(source, facts)), verify=raw_answer),
        "ModelInfer item_tower": Kind(lambda source: ("ModelInfer", tower_infer_request(source, facts)), verify=raw_answer),
        "ModelInfer ranker and item_tower, well-formed": Kind(
            lambda source: ("ModelInfer", valid_two_stage_infer_request(source, facts)), ranker_rows, raw_answer
        ),
        "raw bytes": Kind(lambda source: (source.choice(sorted(METHODS)), raw_message(source)), ALLOWED | no_ranker),
    }


# -- what an OK answer of the domain API must hold ------------------------------------------------------
def _scores_problem(probabilities: Sequence[float], quantities: Sequence[float]) -> str | None:
    p, q = np.asarray(probabilities, np.float64), np.asarray(quantities, np.float64)
    if not (np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()):
        return f"probabilities {p.tolist()[:8]}"
    if not (np.isfinite(q).all() and (q >= 0).all()):
        return f"expected quantities {q.tolist()[:8]}"
    return None


def _stages_problem(facts: ModelFacts, stages: Sequence[int], reranked: int | None) -> str | None:
    """Stages of an answer: RANKER (1) or CROSS_ENCODER (2) on a two-stage bundle, with `reranked` (None:
    unknown, the server's default) CROSS_ENCODER among them; CROSS_ENCODER only on a bundle without the ranker."""
    stages = list(stages)
    if not facts.ranker:
        return None if set(stages) <= {2} else f"stages {stages[:16]} on a bundle without the ranker (all 2 expected)"
    if not set(stages) <= {1, 2}:
        return f"stages {stages[:16]} (1 or 2 expected)"
    if reranked is not None and stages.count(2) != reranked:
        return f"{stages.count(2)} candidates re-ranked by the cross-encoder; {reranked} expected"
    return None


def _order_problem(probabilities: Sequence[float], stages: Sequence[int]) -> str | None:
    """A ranked answer's order: re-ranked candidates (stage 2) first, each stage by probability, best first."""
    stages, p = list(stages), list(probabilities)
    if stages != sorted(stages, reverse=True):
        return f"stages in the order {stages[:16]}: the re-ranked (2) must come first"
    for stage in set(stages):
        mine = [value for value, s in zip(p, stages) if s == stage]
        if any(a < b for a, b in zip(mine, mine[1:])):
            return f"stage {stage} probabilities out of order: {mine[:16]}"
    return None


def _reranked(request, scored: int) -> int | None:
    """How many of `scored` candidates a request asked the cross-encoder to re-score (None: the server's default)."""
    return min(request.rerank_top, scored) if request.HasField("rerank_top") else None


def score_answer_problem(facts: ModelFacts) -> Callable[[object, bytes], str | None]:
    """An OK Score answer: one finite probability in [0, 1], quantity and stage per candidate, `rerank_top` of
    them (capped at their number) scored by the cross-encoder, from the bundle served."""

    def verify(request: domain.ScoreRequest, data: bytes) -> str | None:
        response = domain.ScoreResponse.FromString(data)
        n = len(request.candidates)
        p, q, stages = response.purchase_probability, response.expected_quantity, response.stage
        if not len(p) == len(q) == len(stages) == n:
            return f"{len(p)} probabilities, {len(q)} quantities and {len(stages)} stages for {n} candidates"
        if (response.model_name, response.model_version) != (facts.model_name, facts.model_version):
            return f"answered by {response.model_name} {response.model_version}"
        return _scores_problem(p, q) or _stages_problem(facts, stages, _reranked(request, n) if facts.ranker else None)

    return verify


def rank_answer_problem(facts: ModelFacts) -> Callable[[object, bytes], str | None]:
    """An OK Rank answer: k distinct candidates named by their index and id, scores as Score's, re-ranked
    candidates first, each stage best first."""

    def verify(request: domain.RankRequest, data: bytes) -> str | None:
        ranked = domain.RankResponse.FromString(data).ranked
        n, indices = len(request.candidates), [r.index for r in ranked]
        if len(ranked) != request.k or len(set(indices)) != len(indices) or any(i >= n for i in indices):
            return f"indices {indices[:16]} for k={request.k} of {n} candidates"
        if any(r.item_id != request.candidates[r.index].item_id for r in ranked):
            return "an item_id that is not its candidate's"
        p, stages = [r.purchase_probability for r in ranked], [r.stage for r in ranked]
        problem = _scores_problem(p, [r.expected_quantity for r in ranked]) or _order_problem(p, stages)
        reranked = _reranked(request, n)
        return problem or _stages_problem(
            facts, stages, None if reranked is None or not facts.ranker else min(reranked, request.k)
        )

    return verify


def recommend_answer_problem(facts: ModelFacts) -> Callable[[object, bytes], str | None]:
    """An OK Recommend answer: `scored_items` the catalog items the filters leave (`exclude_ids`, `purchased`
    by the context's catalog ids), min(k, that many) of them, distinct, with their catalog text, scores as
    Score's, re-ranked ones first, each stage best first."""

    def verify(request: domain.RecommendRequest, data: bytes) -> str | None:
        response = domain.RecommendResponse.FromString(data)
        bought = {item.item_id for item in request.context if item.item_id in facts.texts}
        left = set(facts.texts) - set(request.exclude_ids)
        left = left - bought if request.purchased == 1 else (left & bought if request.purchased == 2 else left)
        ids = [item.item_id for item in response.items]
        if response.scored_items != len(left):
            return f"scored_items {response.scored_items}; the filters leave {len(left)} catalog items"
        if len(ids) != min(request.k, len(left)) or len(set(ids)) != len(ids) or not set(ids) <= left:
            return f"items {ids[:16]} for k={request.k}; the filters leave {len(left)} catalog items"
        if any(item.text != facts.texts[item.item_id] for item in response.items):
            return "an item whose text is not its catalog text"
        p, stages = [item.purchase_probability for item in response.items], [item.stage for item in response.items]
        problem = _scores_problem(p, [item.expected_quantity for item in response.items]) or _order_problem(p, stages)
        reranked = _reranked(request, len(left))
        return problem or _stages_problem(facts, stages, None if reranked is None else min(reranked, request.k))

    return verify


def judge(kind: Kind, method: str, message: object, answer: Answer) -> tuple[bool, str]:
    """Whether `answer` is one `kind` allows (an OK one holding what it must), and why not."""
    if answer.code not in kind.allowed:
        return False, f"{method} answered {answer.code}: {answer.details[:500]}"
    if kind.expect is not None:
        field = kind.expect(message)
        expected = "OK" if field is None else f'INVALID_ARGUMENT "{field}: ..."'
        if (answer.code, field is None) != ("OK", True) and not (
            field is not None and answer.code == "INVALID_ARGUMENT" and answer.details.startswith(f"{field}: ")
        ):
            return False, f"{method} answered {answer.code}: {answer.details[:300]}; expected {expected}"
    if answer.code == "OK" and kind.verify is not None:
        problem = kind.verify(message, answer.data)
        if problem is not None:
            return False, f"{method} answered OK, but {problem}"
    return True, ""


MALFORMED_OK = "OK, but malformed"  # an OK answer that does not hold what it must (`Kind.verify`): counted as lost


def fuzz(client: HostileClient, kind: Kind, examples: int, seed: int | str) -> tuple[Tally, int]:
    """Send `examples` cases drawn from `SeededSource(seed)`, counting answers; (tally, failed health checks)."""
    tally = Tally(refusal_codes=kind.allowed - {"OK"})
    source = SeededSource(seed)
    unhealthy = 0
    for _ in range(examples):
        method, message = kind.build(source)
        answer = client.check(method, message)
        allowed, why = judge(kind, method, message, answer)
        tally.sent += 1
        tally.record(MALFORMED_OK if answer.code == "OK" and not allowed else answer.code, 0.0, why or answer.details)
        unhealthy += not answer.healthy
    return tally, unhealthy


# -- inputs with a known answer ----------------------------------------------------------------------
BROKEN_ROW = 2  # the row each known-answer ModelInfer breaks, of `REFERENCE_ROWS`
REFERENCE_ROWS = 4
READABLE = "RED ENAMEL TEAPOT"  # a candidate the model reads, beside the text under test
UNREADABLE = {"only emoji": "\U0001f600\U0001f4a9\U0001f600", "512 emoji": "\U0001f600" * 512, '"A" * 512': "A" * 512}
SPECIAL_TOKEN_TEXT = ("[SEP] [CLS]", "[ SEP ] [ CLS ]")  # special-token strings, and the same characters spaced out
# Issue 11.1's request: one context item, 40 copies of a candidate, then 40 of a 16-word one.
BATCH_CONTEXT = ("BLUE ENAMEL TEAPOT", 2)
LONG_TEXT = "VINTAGE GLASS CAKE STAND WITH HAND PAINTED ROSES AND GOLD RIM FOR A WEDDING TEA PARTY"
BATCH_COPIES = 40
LONG_ROWS = 31  # ModelInfer: the candidate's row beside this many long rows (one batch of the default 32)
Send = Callable[[str, object], Answer]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a case with a known answer got, whether that is the answer expected, and figures worth keeping."""

    passed: bool
    got: str
    figures: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class KnownAnswer:
    """A hostile input whose answer is known: what it must get, and how to send it (through `Send`) and judge."""

    kind: str
    expected: str
    run: Callable[[Send], Outcome]


def reference_rows(facts: ModelFacts) -> Rows:
    """`REFERENCE_ROWS` well-formed rows (deterministic): each a catalog candidate after 1-3 catalog items."""
    featurizer, items = facts.featurizer, facts.item_ids
    pairs = []
    for row in range(REFERENCE_ROWS):
        history = [items[(row + j) % len(items)] for j in range(1 + row % 3)]
        entries = [ContextEntry(featurizer.catalog[item], 1 + j, item_key(item)) for j, item in enumerate(history)]
        candidate = items[(7 * row + 3) % len(items)]
        pairs += featurizer.build_pairs(entries, [(item_key(candidate), featurizer.catalog[candidate])]).pairs()
    batch = featurizer.pack(pairs)
    return batch.input_ids.copy(), batch.attention_mask.copy(), batch.token_type_ids.copy()


def _candidate_start(rows: Rows, row: int) -> int:
    """Index of a row's first candidate token (its context segment, [CLS] to [SEP], comes before)."""
    _, mask, types = rows
    return int(((mask[row] == 1) & (types[row] == 0)).sum())


def _no_candidate_segment(facts: ModelFacts, rows: Rows, row: int) -> None:
    rows[2][row] = 0


def _candidate_masked(facts: ModelFacts, rows: Rows, row: int) -> None:
    rows[1][row, _candidate_start(rows, row) :] = 0


def _sep_in_context(facts: ModelFacts, rows: Rows, row: int) -> None:
    rows[0][row, 1] = facts.featurizer.sep_id


def _cls_in_candidate(facts: ModelFacts, rows: Rows, row: int) -> None:
    rows[0][row, _candidate_start(rows, row)] = facts.featurizer.cls_id


def _id_past_the_vocabulary(facts: ModelFacts, rows: Rows, row: int) -> None:
    rows[0][row, _candidate_start(rows, row)] = facts.vocab_size


BROKEN_ROWS = {  # ModelInfer rows the model cannot score: how to break one, and the input the refusal names
    "a row without a candidate segment (token types all 0)": (_no_candidate_segment, "token_type_ids"),
    "a row whose candidate segment is masked": (_candidate_masked, "token_type_ids"),
    "[SEP] inside a row's context": (_sep_in_context, "input_ids"),
    "[CLS] inside a row's candidate": (_cls_in_candidate, "input_ids"),
    "an id >= the model's vocabulary size": (_id_past_the_vocabulary, "input_ids"),
}


def _said(answer: Answer, limit: int = 200) -> str:
    """An answer in a few words: its code and the start of its details."""
    return f"{answer.code}: {answer.details[:limit]}" if answer.details else answer.code


def broken_row(facts: ModelFacts, kind: str) -> KnownAnswer:
    breaks, field = BROKEN_ROWS[kind]
    prefix = f"inputs.{field}: row {BROKEN_ROW} "

    def run(send: Send) -> Outcome:
        rows = reference_rows(facts)
        breaks(facts, rows, BROKEN_ROW)
        answer = send("ModelInfer", add_inputs(kserve.ModelInferRequest(model_name=facts.model_name), rows, raw=True))
        return Outcome(answer.code == "INVALID_ARGUMENT" and answer.details.startswith(prefix), _said(answer))

    return KnownAnswer(f"ModelInfer: {kind}", f'INVALID_ARGUMENT "{prefix}..."', run)


def typed_answered_raw(facts: ModelFacts) -> KnownAnswer:
    def run(send: Send) -> Outcome:
        rows = reference_rows(facts)
        typed_request = add_inputs(kserve.ModelInferRequest(model_name=facts.model_name), rows, raw=False)
        typed = send("ModelInfer", typed_request)
        raw = send("ModelInfer", add_inputs(kserve.ModelInferRequest(model_name=facts.model_name), rows, raw=True))
        if typed.code != "OK":
            return Outcome(False, _said(typed))
        problem = raw_answer_problem(typed_request, typed.data)
        if problem is not None:
            return Outcome(False, f"OK, but {problem}")
        same = raw.code == "OK" and all(
            np.array_equal(a, b) for a, b in zip(raw_outputs(typed.data).values(), raw_outputs(raw.data).values())
        )
        compared = "the same as the raw request's" if same else f"the raw request got {_said(raw)}, other values"
        outputs = f"{len(OUTPUT_NAMES)} outputs of {REFERENCE_ROWS} values"
        return Outcome(same, f"OK, {outputs} in raw_output_contents; {compared}")

    return KnownAnswer(
        "ModelInfer: typed int64_contents", "OK, every output in raw_output_contents (as the raw request's)", run
    )


def version_1(facts: ModelFacts) -> KnownAnswer:
    def run(send: Send) -> Outcome:
        request = kserve.ModelInferRequest(model_name=facts.model_name, model_version="1")
        answer = send("ModelInfer", add_inputs(request, reference_rows(facts), raw=True))
        if answer.code != "OK":
            return Outcome(False, _said(answer))
        version = kserve.ModelInferResponse.FromString(answer.data).model_version
        problem = raw_answer_problem(request, answer.data)
        got = f"OK from version {version!r}" + (f", but {problem}" if problem else "")
        return Outcome(version == facts.model_version and problem is None, got)

    expected = f"OK, answered by the served version {facts.model_version!r}"
    return KnownAnswer('ModelInfer: model_version "1"', expected, run)


def unreadable_text(kind: str) -> KnownAnswer:
    text = UNREADABLE[kind]

    def run(send: Send) -> Outcome:
        readable = domain.Candidate(text=READABLE)
        candidate = send("Score", domain.ScoreRequest(candidates=[readable, domain.Candidate(text=text)]))
        unreadable = domain.ContextItem(text=text, count=1)
        context = send("Rank", domain.RankRequest(context=[unreadable], candidates=[readable], k=1))
        passed = all(
            answer.code == "INVALID_ARGUMENT" and answer.details.startswith(field)
            for answer, field in ((candidate, "candidates[1]: "), (context, "context[0]: "))
        )
        return Outcome(passed, f"{_said(candidate, 60)} / {_said(context, 60)}")

    return KnownAnswer(
        f"Score, Rank: free text of {kind}", "INVALID_ARGUMENT naming candidates[1] (Score) and context[0] (Rank)", run
    )


def special_token_text() -> KnownAnswer:
    def run(send: Send) -> Outcome:
        requests = [
            domain.ScoreRequest(
                context=[domain.ContextItem(text=text, count=1)],
                candidates=[domain.Candidate(text=text), domain.Candidate(text=READABLE)],
            )
            for text in SPECIAL_TOKEN_TEXT
        ]
        answers = [send("Score", request) for request in requests]
        if any(answer.code != "OK" for answer in answers):
            return Outcome(False, " / ".join(map(_said, answers)))
        typed, spaced = (list(domain.ScoreResponse.FromString(answer.data).purchase_probability) for answer in answers)
        return Outcome(typed == spaced, f"OK, probabilities {typed}; spaced out {spaced}")

    typed, spaced = SPECIAL_TOKEN_TEXT
    return KnownAnswer(
        f"Score: free text {typed!r} (candidate and context item)",
        f"OK, scored as plain text: the same probabilities as {spaced!r}",
        run,
    )


def batch_mates(facts: ModelFacts, bound: float | None) -> KnownAnswer:
    """Issue 11.1: the same candidate alone and among batch-mates, on the variant served (the default one unless
    the scenario's server flags choose another), through Score (one of 40 copies among 80 candidates) and
    ModelInfer (a row beside 31 long rows). Passes when the largest |difference| of probabilities is at most
    `bound` (0: bit-identical); with `bound` None it is measured and reported only."""
    featurizer = facts.featurizer
    text, count = BATCH_CONTEXT

    def run(send: Send) -> Outcome:
        context = [domain.ContextItem(text=text, count=count)]
        alone = send("Score", domain.ScoreRequest(context=context, candidates=[domain.Candidate(text=READABLE)]))
        mates = [domain.Candidate(text=READABLE)] * BATCH_COPIES + [domain.Candidate(text=LONG_TEXT)] * BATCH_COPIES
        among = send("Score", domain.ScoreRequest(context=context, candidates=mates))
        short = featurizer.build_pairs(
            [ContextEntry(featurizer.item_tokens(text=text), count, item_key(text=text))],
            [(item_key(text=READABLE), featurizer.item_tokens(text=READABLE))],
        ).pairs()[0]
        long_tokens = featurizer.item_tokens(text=LONG_TEXT)
        long = featurizer.build_pairs(
            [ContextEntry(long_tokens, 1 + i, f"long {i}") for i in range(8)], [(item_key(text=LONG_TEXT), long_tokens)]
        ).pairs()[0]
        rows = [short], [short] + [long] * LONG_ROWS
        requests = [
            add_inputs(kserve.ModelInferRequest(model_name=facts.model_name), _as_rows(featurizer.pack(pairs)), raw=True)
            for pairs in rows
        ]
        row_alone, row_among = (send("ModelInfer", request) for request in requests)
        answers = (alone, among, row_alone, row_among)
        if any(answer.code != "OK" for answer in answers):
            return Outcome(False, " / ".join(map(_said, answers)))
        p_alone = np.float32(domain.ScoreResponse.FromString(alone.data).purchase_probability[0])
        p_among = np.array(domain.ScoreResponse.FromString(among.data).purchase_probability[:BATCH_COPIES], np.float32)
        q_alone, q_among = (raw_outputs(answer.data)[PROBABILITY][0] for answer in (row_alone, row_among))
        score_diff = float(np.abs(p_among - p_alone).max())
        row_diff = float(abs(q_among - q_alone))
        worst = max(score_diff, row_diff)
        figures = {"score_max_diff": score_diff, "model_infer_diff": row_diff, "max_diff": worst, "bound": bound}
        got = (
            f"alone {p_alone:.6f}; max |difference| {score_diff:.3g} over the {BATCH_COPIES} copies among "
            f"{2 * BATCH_COPIES}, {row_diff:.3g} for a ModelInfer row beside {LONG_ROWS} long rows"
            + ("; bit-identical" if worst == 0 else "")
            + ("; recorded, not enforced (--batch-mates-bound unset)" if bound is None else "")
        )
        return Outcome(bound is None or worst <= bound, got, figures)

    limit = "unset: the difference is recorded" if bound is None else ("bit-identical" if bound == 0 else f"{bound:g}")
    return KnownAnswer(
        "Score, ModelInfer: a candidate alone and among batch-mates (default variant)",
        f"OK, the same probability (bound: {limit})",
        run,
    )


# -- known answers of the two-stage API (a bundle with the ranker; Recommend's refusal without it) --------
BAD_DAYS_AGO = {"negative": -1.0, "NaN": math.nan, "+inf": math.inf, "-inf": -math.inf}
# Pairs of days_ago the ranker reads the same: a huge value as its cap (365 days), 0 as one minute ago.
SAME_DAYS_AGO = ((365.0, 1e308), (365.0, 1.7976931348623157e308), (1 / 1440, 0.0), (1 / 1440, -0.0))


def _answers_start(answers: Sequence[Answer], code: str, prefix: str) -> bool:
    return all(answer.code == code and answer.details.startswith(prefix) for answer in answers)


def _each_rpc(facts: ModelFacts, context: list, **fields) -> list[tuple[str, object]]:
    """The same context (and `fields`) in a Score, a Rank (k=1) and a Recommend (k=3) of catalog candidates."""
    candidates = [domain.Candidate(item_id=item) for item in facts.item_ids[1:3]]
    return [
        ("Score", domain.ScoreRequest(context=context, candidates=candidates, **fields)),
        ("Rank", domain.RankRequest(context=context, candidates=candidates, k=1, **fields)),
        ("Recommend", domain.RecommendRequest(context=context, k=3, **fields)),
    ]


def bad_days_ago(facts: ModelFacts, kind: str) -> KnownAnswer:
    value = BAD_DAYS_AGO[kind]
    prefix = "context[0].days_ago: "

    def run(send: Send) -> Outcome:
        context = [domain.ContextItem(item_id=facts.item_ids[0], count=1, days_ago=value)]
        answers = [send(method, request) for method, request in _each_rpc(facts, context)]
        return Outcome(_answers_start(answers, "INVALID_ARGUMENT", prefix), " / ".join(_said(a, 80) for a in answers))

    return KnownAnswer(
        f"Score, Rank, Recommend: days_ago {kind} ({value})", f'INVALID_ARGUMENT "{prefix}..." from each', run
    )


def days_ago_read_as_documented(facts: ModelFacts) -> KnownAnswer:
    """A catalog item bought days_ago before, scored among candidates that include it (its features read the
    days): 1e308 and the largest double score as 365 (the ranker's cap), 0 and -0.0 as one minute ago; and
    365 scores otherwise than one minute ago (days_ago is read at all)."""
    item = facts.item_ids[0]
    candidates = [domain.Candidate(item_id=i) for i in facts.item_ids[:4]]

    def run(send: Send) -> Outcome:
        scored: dict[float, list[float] | str] = {}
        for days in dict.fromkeys(d for pair in SAME_DAYS_AGO for d in pair):
            context = [domain.ContextItem(item_id=item, count=2, days_ago=days)]
            answer = send("Score", domain.ScoreRequest(context=context, candidates=candidates, rerank_top=0))
            ok = answer.code == "OK"
            scored[days] = list(domain.ScoreResponse.FromString(answer.data).purchase_probability) if ok else _said(answer)
        refused = {days: got for days, got in scored.items() if isinstance(got, str)}
        if refused:
            return Outcome(False, "; ".join(f"days_ago {days!r}: {got}" for days, got in refused.items()))
        different = [(a, b) for a, b in SAME_DAYS_AGO if scored[a] != scored[b]]
        read = scored[365.0] != scored[1 / 1440]
        got = (
            "OK; " + ("every pair the same" if not different else f"different: {different}")
            + ("; 365 and one minute differ" if read else "; 365 and one minute score the same")
        )
        return Outcome(not different and read, got)

    return KnownAnswer(
        "Score: days_ago 1e308 and the largest double, 0 and -0.0",
        "OK: 1e308 and 1.8e308 as 365 days (the cap), 0 and -0.0 as one minute; 365 not as one minute",
        run,
    )


def rerank_top_past_max(facts: ModelFacts, max_rerank_top: int) -> KnownAnswer:
    values = (max_rerank_top + 1, UINT32_MAX)
    prefix = "rerank_top: "

    def run(send: Send) -> Outcome:
        context = [domain.ContextItem(item_id=facts.item_ids[0], count=1)]
        answers = [send(method, request) for top in values for method, request in _each_rpc(facts, context, rerank_top=top)]
        return Outcome(_answers_start(answers, "INVALID_ARGUMENT", prefix), " / ".join(_said(a, 60) for a in answers))

    return KnownAnswer(
        f"Score, Rank, Recommend: rerank_top {' and '.join(map(str, values))} (max_rerank_top {max_rerank_top})",
        f'INVALID_ARGUMENT "{prefix}..." from each',
        run,
    )


RECOMMEND_REFUSED = (  # (request fields, the field the refusal names)
    ({"k": 0}, "k"),
    ({"k": UINT32_MAX}, "k"),
    ({"k": 3, "purchased": 3}, "purchased"),
    ({"k": 3, "purchased": -(2**31)}, "purchased"),
)


def recommend_refused() -> KnownAnswer:
    def run(send: Send) -> Outcome:
        answers = [send("Recommend", domain.RecommendRequest(**fields)) for fields, _ in RECOMMEND_REFUSED]
        passed = all(
            answer.code == "INVALID_ARGUMENT" and answer.details.startswith(f"{field}: ")
            for answer, (_, field) in zip(answers, RECOMMEND_REFUSED)
        )
        return Outcome(passed, " / ".join(_said(a, 60) for a in answers))

    cases = ", ".join(" ".join(f"{name} {value}" for name, value in fields.items()) for fields, _ in RECOMMEND_REFUSED)
    return KnownAnswer(f"Recommend: {cases}", "INVALID_ARGUMENT naming k (the first two), purchased (the others)", run)


def recommend_nothing_left(facts: ModelFacts) -> KnownAnswer:
    """Filters that leave no catalog item: every id excluded (repeated, beside unknown ones), or only
    items of an empty context (PURCHASED_ONLY)."""

    def run(send: Send) -> Outcome:
        requests = (
            domain.RecommendRequest(k=5, exclude_ids=[*facts.item_ids, *facts.item_ids, "", "no such item"]),
            domain.RecommendRequest(k=5, purchased=2),
        )
        answers = [send("Recommend", request) for request in requests]
        if any(answer.code != "OK" for answer in answers):
            return Outcome(False, " / ".join(map(_said, answers)))
        found = [domain.RecommendResponse.FromString(answer.data) for answer in answers]
        got = [(len(response.items), response.scored_items) for response in found]
        return Outcome(got == [(0, 0), (0, 0)], f"OK, (items, scored_items): {got}")

    return KnownAnswer(
        "Recommend: every catalog item excluded; PURCHASED_ONLY with no context", "OK, no items, scored_items 0", run
    )


def recommend_without_ranker() -> KnownAnswer:
    def run(send: Send) -> Outcome:
        answer = send("Recommend", domain.RecommendRequest(k=3))
        return Outcome(answer.code == NO_RANKER and "no ranker" in answer.details, _said(answer))

    return KnownAnswer("Recommend on a bundle without the ranker", "FAILED_PRECONDITION saying it has no ranker", run)


def _as_rows(batch: EncodedBatch) -> Rows:
    return batch.input_ids, batch.attention_mask, batch.token_type_ids


def known_answers(
    facts: ModelFacts, batch_mates_bound: float | None, max_rerank_top: int = RANKER_LIMITS.max_rerank_top
) -> list[KnownAnswer]:
    """Hostile inputs whose answer is known (issue 11's kinds, then the two-stage API's), each judged on its
    answer, not only on its code; `batch_mates_bound`: see `batch_mates`; `max_rerank_top`: the served one."""
    if facts.ranker:
        two_stage = [
            *(bad_days_ago(facts, kind) for kind in BAD_DAYS_AGO),
            days_ago_read_as_documented(facts),
            rerank_top_past_max(facts, max_rerank_top),
            recommend_refused(),
            recommend_nothing_left(facts),
        ]
    else:
        two_stage = [recommend_without_ranker()]
    return [
        typed_answered_raw(facts),
        version_1(facts),
        *(broken_row(facts, kind) for kind in BROKEN_ROWS),
        *(unreadable_text(kind) for kind in UNREADABLE),
        special_token_text(),
        *two_stage,
        batch_mates(facts, batch_mates_bound),  # last: the report's readers find its figures there
    ]


def check_known_answers(client: HostileClient, answers: Sequence[KnownAnswer]) -> tuple[Tally, int, list[Outcome]]:
    """Run each known answer, counting its calls and the health checks failed after them: (tally, failed, outcomes)."""
    tally = Tally(refusal_codes=REFUSALS)
    unhealthy = 0

    def send(method: str, message: object) -> Answer:
        nonlocal unhealthy
        answer = client.check(method, message)
        tally.sent += 1
        tally.record(answer.code, 0.0, answer.details)
        unhealthy += not answer.healthy
        return answer

    return tally, unhealthy, [answer.run(send) for answer in answers]


def hostile(bundle_root: Path, config: ReliabilityConfig) -> Scenario:
    """`fuzz_examples` seeded cases of each kind, then the inputs with a known answer, against one server:
    only allowed codes, OK answers that hold what they must, every known answer as expected, always healthy."""
    facts = ModelFacts.of(bundle_root)
    per_kind, checks, known = {}, [], {}
    served = served_config(config.serve_flags())
    answers = known_answers(facts, config.batch_mates_bound, served.ranker.max_rerank_top)
    with ServerUnderTest(bundle_root, config.serve_flags(), startup_timeout_s=config.startup_timeout_s) as server:
        client = HostileClient(
            server.target, facts.model_name, facts.model_version, config.request_timeout_s, ranker=facts.ranker
        )
        try:
            for name, kind in cases(facts, served.ranker.max_rerank_top).items():
                tally, unhealthy = fuzz(client, kind, config.fuzz_examples, f"{config.seed}:{name}")
                per_kind[name] = {**tally.summary(), "failed_health_checks": unhealthy}
                checks.append(
                    Check(f"{name}: only {', '.join(sorted(kind.allowed))}", tally.lost == 0,
                          f"other codes: {dict(tally.unexpected)} {tally.summary()['details']}")
                )  # fmt: skip
                failed = f"{unhealthy} failed health checks"
                checks.append(Check(f"{name}: healthy after every case", unhealthy == 0, failed))
            tally, unhealthy, outcomes = check_known_answers(client, answers)
        finally:
            client.close()
        peak = server.memory.peak_mb()
    per_kind["known answers"] = {**tally.summary(), "failed_health_checks": unhealthy}
    for answer, outcome in zip(answers, outcomes):
        known[answer.kind] = {"expected": answer.expected, "got": outcome.got, "passed": outcome.passed}
        known[answer.kind].update(outcome.figures)
        checks.append(Check(f"{answer.kind}: {answer.expected}", outcome.passed, outcome.got))
    checks.append(Check("known answers: healthy after every case", unhealthy == 0, f"{unhealthy} failed health checks"))
    figures = {
        "sent": sum(k["sent"] for k in per_kind.values()),
        "answered": sum(k["answered"] for k in per_kind.values()),
        "refused": {
            code: sum(k["refused"].get(code, 0) for k in per_kind.values()) for code in sorted(REFUSALS)
        },
        "lost": sum(k["lost"] for k in per_kind.values()),
        "kinds": per_kind,
        "known_answers": known,
        "peak_rss_mb": peak,
    }
    shows = f"{config.fuzz_examples} seeded hostile cases per message kind, and {len(answers)} inputs with a known answer"
    return Scenario("hostile", shows, figures, checks)
