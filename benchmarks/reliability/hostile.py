"""Hostile input: seeded Score, Rank and ModelInfer messages and raw bytes, inputs with a known answer, and a
client that sends them.

What an attacker or a broken client can send: random and huge lists,
empty and enormous strings, odd Unicode (controls, bidi overrides, zero
widths, combining marks, emoji, NUL), absurd numbers (uint32 maxima,
negative varints, int64 extremes), wrong dtypes and shapes, tensors whose
data does not match their shape, and bytes that are no protobuf at all or
protobuf with invalid UTF-8 in a string field. The only acceptable answers
are OK, INVALID_ARGUMENT and RESOURCE_EXHAUSTED, an OK ModelInfer answer
must carry its outputs in `raw_output_contents` (as Triton's do), and the
server must answer a health check after every case. Well-formed ModelInfer
rows are built as the server builds Score's (the bundle's catalog,
`Featurizer.build_pairs`, `Featurizer.pack`), so they follow the row layout
(`featurize.ROW_LAYOUT`); such rows, unbroken, must be answered OK.

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
answers; a candidate scores the same alone and among batch-mates.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import grpc
import numpy as np

from edgerec.benchmarks.harness.results import Tally
from edgerec.benchmarks.harness.server import ServerUnderTest, serving
from edgerec.benchmarks.reliability.config import ReliabilityConfig
from edgerec.benchmarks.reliability.report import Check, Scenario
from edgerec.core.bundle import VOCAB_SIZE, open_bundle
from edgerec.core.featurize import ContextEntry, EncodedBatch, Featurizer, item_key
from edgerec.core.signatures import CROSS_ENCODER
from edgerec.proto import grpc_service_pb2 as kserve
from edgerec.proto import recommender_pb2 as domain
from edgerec.runtime.config import ServerConfig
from edgerec.runtime.kserve_service import SERVED_VERSION_ALIASES

T = TypeVar("T")

# NOT_FOUND is the KServe protocol's answer to a model name or version this server does not serve;
# it is accepted only for a ModelInfer that names one (any other NOT_FOUND is a finding).
UNSERVED_MODEL = "NOT_FOUND (a model this server does not serve)"
ALLOWED = frozenset({"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", UNSERVED_MODEL})
REFUSALS = ALLOWED - {"OK"}
# A client that receives status details larger than its metadata limit reports RESOURCE_EXHAUSTED itself:
# that is the server echoing too much back, not the server refusing a request.
OVERSIZED_DETAILS = "RESOURCE_EXHAUSTED (client side: the status details were too large)"
UINT32_MAX = 2**32 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
LIMITS = ServerConfig()  # the server's default list limits: the cases go past them
_RECOMMENDER = domain.DESCRIPTOR.services_by_name["Recommender"].full_name
_KSERVE = kserve.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
METHODS = {
    "Score": f"/{_RECOMMENDER}/Score",
    "Rank": f"/{_RECOMMENDER}/Rank",
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


def _context_item(source: Source, known: Sequence[str], enormous: bool) -> domain.ContextItem:
    item_id = _one_of(source, lambda: source.choice(known), lambda: "", lambda: _item_id(source, known, enormous))
    return domain.ContextItem(item_id=item_id, text=_text(source, enormous), count=uint32(source))


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


def score_request(source: Source, known: Sequence[str]) -> domain.ScoreRequest:
    return domain.ScoreRequest(
        context=_list(source, lambda big: _context_item(source, known, big), LIMITS.max_context_items),
        candidates=_list(source, lambda big: _candidate(source, known, big), LIMITS.max_candidates),
    )


def rank_request(source: Source, known: Sequence[str]) -> domain.RankRequest:
    return domain.RankRequest(
        context=_list(source, lambda big: _context_item(source, known, big), LIMITS.max_context_items),
        candidates=_list(source, lambda big: _candidate(source, known, big), LIMITS.max_candidates),
        k=_one_of(source, lambda: source.integer(1, 6), lambda: uint32(source)),
    )


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


def raw_answer_problem(request: object, data: bytes) -> str | None:
    """What is wrong with an OK ModelInfer answer (None: nothing). It must hold what Triton's clients read:
    each requested output (every output if none was named), in order, with its datatype and shape [rows], its
    values in `raw_output_contents` at the same index (little-endian) and no typed contents; probabilities in
    [0, 1], quantities finite."""
    response = kserve.ModelInferResponse.FromString(data)
    rows = int(request.inputs[0].shape[0])
    wanted = [output.name for output in request.outputs] or list(OUTPUT_NAMES)
    names = [output.name for output in response.outputs]
    if names != wanted or len(response.raw_output_contents) != len(wanted):
        return f"outputs {names} with {len(response.raw_output_contents)} raw_output_contents; asked for {wanted}"
    for output, raw in zip(response.outputs, response.raw_output_contents):
        spec = CROSS_ENCODER.output(output.name)
        size = rows * spec.numpy_dtype.itemsize
        typed = output.HasField("contents")
        if output.datatype != spec.kserve_datatype or list(output.shape) != [rows] or typed or len(raw) != size:
            return (
                f"{output.name} is {output.datatype} {list(output.shape)} in {len(raw)} raw bytes"
                f"{' and typed contents' if typed else ''}; expected {spec.kserve_datatype} "
                f"[{rows}] in {size} raw bytes only"
            )
        values = np.frombuffer(raw, spec.numpy_dtype.newbyteorder("<"))
        if not np.isfinite(values).all() or (output.name == PROBABILITY and ((values < 0) | (values > 1)).any()):
            return f"{output.name} holds {values.tolist()[:8]}"
    return None


def raw_outputs(data: bytes) -> dict[str, np.ndarray]:
    """Each output of a ModelInfer answer, by name, read from `raw_output_contents`."""
    response = kserve.ModelInferResponse.FromString(data)
    return {
        output.name: np.frombuffer(raw, CROSS_ENCODER.output(output.name).numpy_dtype.newbyteorder("<"))
        for output, raw in zip(response.outputs, response.raw_output_contents)
    }


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
    """Sends hostile cases to one server and checks it still answers health checks."""

    target: str
    model_name: str
    model_version: str
    timeout_s: float = 30.0

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
        names, versions = (self.model_name, CROSS_ENCODER.name), (*SERVED_VERSION_ALIASES, self.model_version)
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

    @classmethod
    def of(cls, bundle_root: Path) -> "ModelFacts":
        bundle = open_bundle(bundle_root)
        featurizer = bundle.featurizer()
        vocab_size = bundle.model(CROSS_ENCODER.name).info.get(VOCAB_SIZE) or featurizer.tokenizer.get_vocab_size()
        return cls(
            bundle.name, bundle.version, vocab_size, featurizer.config.max_length, sorted(featurizer.catalog), featurizer
        )


@dataclasses.dataclass(frozen=True)
class Kind:
    """A kind of seeded case: how to build one, the answers it may get, and what an OK answer must hold."""

    build: Case
    allowed: frozenset[str] = ALLOWED
    verify: Callable[[object, bytes], str | None] | None = None  # (message, OK answer's bytes) -> what is wrong, or None


def cases(facts: ModelFacts) -> dict[str, Kind]:
    """Seeded cases by kind: the three messages, well-formed ModelInfer rows (which must be answered, in
    raw outputs), and raw bytes sent to any method."""
    return {
        "Score": Kind(lambda source: ("Score", score_request(source, facts.item_ids))),
        "Rank": Kind(lambda source: ("Rank", rank_request(source, facts.item_ids))),
        "ModelInfer": Kind(lambda source: ("ModelInfer", infer_request(source, facts)), verify=raw_answer_problem),
        "ModelInfer, well-formed rows": Kind(
            lambda source: ("ModelInfer", valid_infer_request(source, facts)), frozenset({"OK"}), raw_answer_problem
        ),
        "raw bytes": Kind(lambda source: (source.choice(sorted(METHODS)), raw_message(source))),
    }


def judge(kind: Kind, method: str, message: object, answer: Answer) -> tuple[bool, str]:
    """Whether `answer` is one `kind` allows (an OK one holding what it must), and why not."""
    if answer.code not in kind.allowed:
        return False, f"{method} answered {answer.code}: {answer.details[:500]}"
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


def _as_rows(batch: EncodedBatch) -> Rows:
    return batch.input_ids, batch.attention_mask, batch.token_type_ids


def known_answers(facts: ModelFacts, batch_mates_bound: float | None) -> list[KnownAnswer]:
    """Hostile inputs whose answer is known (issue 11's kinds), each judged on its answer, not only on its code;
    `batch_mates_bound`: see `batch_mates`."""
    return [
        typed_answered_raw(facts),
        version_1(facts),
        *(broken_row(facts, kind) for kind in BROKEN_ROWS),
        *(unreadable_text(kind) for kind in UNREADABLE),
        special_token_text(),
        batch_mates(facts, batch_mates_bound),
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
    answers = known_answers(facts, config.batch_mates_bound)
    with ServerUnderTest(bundle_root, config.serve_flags(), startup_timeout_s=config.startup_timeout_s) as server:
        client = HostileClient(server.target, facts.model_name, facts.model_version, config.request_timeout_s)
        try:
            for name, kind in cases(facts).items():
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
