"""Hostile input: seeded Score, Rank and ModelInfer messages and raw bytes, and a client that sends them.

What an attacker or a broken client can send: random and huge lists,
empty and enormous strings, odd Unicode (controls, bidi overrides, zero
widths, combining marks, emoji, NUL), absurd numbers (uint32 maxima,
negative varints, int64 extremes), wrong dtypes and shapes, tensors whose
data does not match their shape, and bytes that are no protobuf at all or
protobuf with invalid UTF-8 in a string field. The only acceptable answers
are OK, INVALID_ARGUMENT and RESOURCE_EXHAUSTED, and the server must answer
a health check after every case.

Each case is built from a `Source` of choices (an integer in a range, one of
some options, a text, some bytes). `edgerec reliability` draws them from a
seeded `SeededSource` (Python's `random`), so a run is repeatable and needs
no test library; the tests draw the same cases from hypothesis.
`HostileClient.check` sends one case and classifies its answer; `fuzz` runs
many for the report, counting answers by code.
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
from edgerec.core.bundle import open_bundle
from edgerec.core.signatures import CROSS_ENCODER
from edgerec.proto import grpc_service_pb2 as kserve
from edgerec.proto import recommender_pb2 as domain
from edgerec.runtime.config import ServerConfig

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
# The right KServe datatype three times in ten, else a wrong one.
DATATYPES = (CROSS_ENCODER.inputs[0].kserve_datatype,) * 3 + ("INT32", "FP32", "FP64", "BYTES", "BOOL", "", "int64")
REGIMES = ("valid", "negative ids", "ids past the vocabulary", "int64 extremes", "masks not 0/1", "rows attending nothing")


def _values(name: str, count: int, regime: str, vocab_size: int, rng: np.random.Generator) -> np.ndarray:
    """Values of one input tensor: model-valid, or broken the way `regime` says."""
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


def infer_request(source: Source, model_name: str, vocab_size: int, max_length: int) -> kserve.ModelInferRequest:
    """A ModelInfer request: half of them well formed (the model's signature, data fitting the shape) with
    values broken or not; the other half wrong in names, dtypes, shapes and sizes."""
    odd_name, odd_version = source.integer(0, 9) == 0, source.integer(0, 9) == 0
    request = kserve.ModelInferRequest(
        model_name=short_text(source) if odd_name else model_name,
        model_version=short_text(source) if odd_version else "",
        id=short_text(source),
    )
    well_formed = _boolean(source)
    regime = source.choice(REGIMES)
    raw = _boolean(source)
    rng = np.random.default_rng(source.integer(0, 2**32 - 1))
    if well_formed:
        rows, width = source.integer(1, 8), source.integer(1, max_length)
        names = list(INPUT_NAMES)
    else:
        rows = _one_of(
            source, lambda: source.integer(-3, 8), lambda: source.integer(9, 1100), lambda: source.choice([2**31, 2**62])
        )
        width = _one_of(source, lambda: source.integer(-3, max_length), lambda: source.integer(max_length + 1, 4 * max_length))
        names = [
            _one_of(source, lambda: source.choice(INPUT_NAMES), lambda: short_text(source))
            for _ in range(source.integer(0, 5))
        ]
    for name in names:
        if well_formed:
            shape, datatype, misfit = [rows, width], CROSS_ENCODER.input(name).kserve_datatype, 0
        else:
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
        values = _values(name, max(count, 1), regime, vocab_size, rng)[:count]
        if raw:
            data = values.astype("<i8").tobytes()
            request.raw_input_contents.append(
                data if well_formed else _one_of(source, lambda: data, lambda: source.binary(0, 64))
            )
        elif not well_formed and source.integer(0, 4) == 0:
            tensor.contents.fp32_contents.extend(values.astype(np.float32).tolist())  # the wrong dtype's field
        else:
            tensor.contents.int64_contents.extend(values.tolist())
    for _ in range(source.integer(0, 3)):
        request.outputs.add(name=_one_of(source, lambda: source.choice(OUTPUT_NAMES), lambda: short_text(source)))
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

    def send(self, method: str, message: object) -> tuple[str, str]:
        """(code, details) of one call; `message` is a protobuf message or raw bytes."""
        data = message if isinstance(message, bytes) else message.SerializeToString()
        try:
            self._raw[method](data, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            code, details = exc.code().name, exc.details() or ""
            if code == "RESOURCE_EXHAUSTED" and "metadata size exceeds" in details:
                code = OVERSIZED_DETAILS
            elif code == "NOT_FOUND" and self._names_unserved_model(method, data):
                code = UNSERVED_MODEL
            return code, details
        return "OK", ""

    def _names_unserved_model(self, method: str, data: bytes) -> bool:
        if method != "ModelInfer":
            return False
        request = kserve.ModelInferRequest()
        try:
            request.ParseFromString(data)
        except Exception:  # protobuf's DecodeError: the server could not have read a name either
            return False
        return request.model_name != self.model_name or request.model_version not in ("", self.model_version)

    def check(self, method: str, message: object, tally: Tally | None = None) -> tuple[str, str, bool]:
        """Send one case, then a health check: (code, details, still serving)."""
        code, details = self.send(method, message)
        if tally is not None:
            tally.sent += 1
            tally.record(code, 0.0, details)
        return code, details, serving(self.channel, self.timeout_s)

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
    vocab_size: int
    max_length: int
    item_ids: list[str]

    @classmethod
    def of(cls, bundle_root: Path) -> "ModelFacts":
        bundle = open_bundle(bundle_root)
        featurizer = bundle.featurizer()
        vocab_size = featurizer.tokenizer.get_vocab_size()
        return cls(bundle.name, bundle.version, vocab_size, featurizer.config.max_length, sorted(featurizer.catalog))


def cases(facts: ModelFacts) -> dict[str, Case]:
    """(method, message) builders by kind: the three messages, and raw bytes sent to any method."""
    return {
        "Score": lambda source: ("Score", score_request(source, facts.item_ids)),
        "Rank": lambda source: ("Rank", rank_request(source, facts.item_ids)),
        "ModelInfer": lambda source: (
            "ModelInfer", infer_request(source, facts.model_name, facts.vocab_size, facts.max_length)
        ),
        "raw bytes": lambda source: (source.choice(sorted(METHODS)), raw_message(source)),
    }


def fuzz(client: HostileClient, case: Case, examples: int, seed: int | str) -> tuple[Tally, int]:
    """Send `examples` cases drawn from `SeededSource(seed)`, counting answers; (tally, failed health checks)."""
    tally = Tally(refusal_codes=REFUSALS)
    source = SeededSource(seed)
    unhealthy = 0
    for _ in range(examples):
        _, _, healthy = client.check(*case(source), tally)
        unhealthy += not healthy
    return tally, unhealthy


def hostile(bundle_root: Path, config: ReliabilityConfig) -> Scenario:
    """`fuzz_examples` hostile cases of each kind against one server; only allowed codes, always healthy."""
    facts = ModelFacts.of(bundle_root)
    per_kind, checks = {}, []
    with ServerUnderTest(bundle_root, config.serve_flags(), startup_timeout_s=config.startup_timeout_s) as server:
        client = HostileClient(server.target, facts.model_name, facts.model_version, config.request_timeout_s)
        try:
            for kind, case in cases(facts).items():
                tally, unhealthy = fuzz(client, case, config.fuzz_examples, f"{config.seed}:{kind}")
                per_kind[kind] = {**tally.summary(), "failed_health_checks": unhealthy}
                checks.append(
                    Check(f"{kind}: only {', '.join(sorted(ALLOWED))}", tally.lost == 0,
                          f"other codes: {dict(tally.unexpected)} {tally.summary()['details']}")
                )  # fmt: skip
                healthy = Check(f"{kind}: healthy after every case", unhealthy == 0, f"{unhealthy} failed health checks")
                checks.append(healthy)
        finally:
            client.close()
        peak = server.memory.peak_mb()
    figures = {
        "sent": sum(k["sent"] for k in per_kind.values()),
        "answered": sum(k["answered"] for k in per_kind.values()),
        "refused": {
            code: sum(k["refused"].get(code, 0) for k in per_kind.values()) for code in sorted(REFUSALS)
        },
        "lost": sum(k["lost"] for k in per_kind.values()),
        "kinds": per_kind,
        "peak_rss_mb": peak,
    }
    return Scenario("hostile", f"{config.fuzz_examples} seeded hostile cases per message kind", figures, checks)
