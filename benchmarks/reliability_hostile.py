"""Hostile input: hypothesis strategies for Score, Rank and ModelInfer messages and raw bytes.

What an attacker or a broken client can send: random and huge lists,
empty and enormous strings, odd Unicode (controls, bidi overrides, zero
widths, combining marks, emoji, NUL), absurd numbers (uint32 maxima,
negative varints, int64 extremes), wrong dtypes and shapes, tensors whose
data does not match their shape, and bytes that are no protobuf at all or
protobuf with invalid UTF-8 in a string field. The only acceptable answers
are OK, INVALID_ARGUMENT and RESOURCE_EXHAUSTED, and the server must answer
a health check after every case.

`HostileClient.check` sends one case and classifies its answer; the tests
run the strategies under `@given` (one server for the whole session), and
`fuzz` runs them for the reliability report, counting answers by code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from edgerec.benchmarks.reliability_config import ReliabilityConfig
from edgerec.benchmarks.reliability_harness import Check, Scenario, ServerUnderTest, Tally, serving
from edgerec.proto import grpc_service_pb2 as kserve
from edgerec.proto import recommender_pb2 as domain
from edgerec.runtime.bundle import open_bundle
from edgerec.runtime.config import ServerConfig
from edgerec.runtime.featurize import Featurizer, FeaturizerConfig
from edgerec.settings import from_jsonable

# NOT_FOUND is the KServe protocol's answer to a model name or version this server does not serve;
# it is accepted only for a ModelInfer that names one (any other NOT_FOUND is a finding).
UNSERVED_MODEL = "NOT_FOUND (a model this server does not serve)"
ALLOWED = frozenset({"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", UNSERVED_MODEL})
REFUSALS = ALLOWED - {"OK"}
# A client that receives status details larger than its metadata limit reports RESOURCE_EXHAUSTED itself:
# that is the server echoing too much back, not the server refusing a request.
OVERSIZED_DETAILS = "RESOURCE_EXHAUSTED (client side: the status details were too large)"
UINT32_MAX = 2**32 - 1
LIMITS = ServerConfig()  # the server's default list limits: the fuzzer goes past them
INT64 = st.integers(-(2**63), 2**63 - 1)
METHODS = {
    "Score": "/edgerec.v1.Recommender/Score",
    "Rank": "/edgerec.v1.Recommender/Rank",
    "ModelInfer": "/inference.GRPCInferenceService/ModelInfer",
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

# -- strings and numbers ---------------------------------------------------------------------
# protobuf cannot encode lone surrogates, so they are left to the raw-bytes strategy
any_char = st.characters(exclude_categories=("Cs",))
short_text = st.one_of(st.just(""), st.text(any_char, max_size=40), st.sampled_from(ODD_STRINGS))
enormous_text = st.builds(
    lambda unit, n: unit * n, st.sampled_from(["a", "é", "\U0001f600", "\u0301", " ", "\x00", "\u200b", "LAMP "]),
    st.integers(500, 60_000),
)
uint32 = st.one_of(st.integers(0, 10), st.sampled_from([UINT32_MAX, 2**31, 2**31 - 1, 1000, 999]), st.integers(0, UINT32_MAX))


def _texts(enormous: bool) -> st.SearchStrategy[str]:
    return st.one_of(short_text, enormous_text) if enormous else short_text


def _item_ids(known: Sequence[str], enormous: bool) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(list(known)), _texts(enormous))


def _candidates(known: Sequence[str], enormous: bool) -> st.SearchStrategy[domain.Candidate]:
    """A catalog item (odd text beside it), a new item described by odd text, or anything at all."""
    texts = _texts(enormous)
    return st.one_of(
        st.builds(domain.Candidate, item_id=st.sampled_from(list(known)), text=texts),
        st.builds(domain.Candidate, item_id=st.just(""), text=texts),
        st.builds(domain.Candidate, item_id=_item_ids(known, enormous), text=texts),
    )


def _context_items(known: Sequence[str], enormous: bool) -> st.SearchStrategy[domain.ContextItem]:
    texts = _texts(enormous)
    return st.one_of(
        st.builds(domain.ContextItem, item_id=st.sampled_from(list(known)), text=texts, count=uint32),
        st.builds(domain.ContextItem, item_id=st.just(""), text=texts, count=uint32),
        st.builds(domain.ContextItem, item_id=_item_ids(known, enormous), text=texts, count=uint32),
    )


def _lists(element: Callable[[bool], st.SearchStrategy], limit: int) -> st.SearchStrategy[list]:
    """A few elements that may hold enormous strings, or one small element repeated: up to 64 times, or
    past the server's default `limit` (long valid lists would only time the engine)."""
    return st.one_of(
        st.lists(element(True), min_size=1, max_size=6),
        st.lists(element(True), max_size=6),
        st.builds(
            lambda item, n: [item] * n, element(False), st.one_of(st.integers(7, 64), st.integers(limit + 1, limit * 3 // 2))
        ),
    )


def score_requests(known: Sequence[str]) -> st.SearchStrategy[domain.ScoreRequest]:
    return st.builds(
        lambda context, candidates: domain.ScoreRequest(context=context, candidates=candidates),
        _lists(lambda big: _context_items(known, big), LIMITS.max_context_items),
        _lists(lambda big: _candidates(known, big), LIMITS.max_candidates),
    )


def rank_requests(known: Sequence[str]) -> st.SearchStrategy[domain.RankRequest]:
    return st.builds(
        lambda context, candidates, k: domain.RankRequest(context=context, candidates=candidates, k=k),
        _lists(lambda big: _context_items(known, big), LIMITS.max_context_items),
        _lists(lambda big: _candidates(known, big), LIMITS.max_candidates),
        st.one_of(st.integers(1, 6), uint32),
    )


# -- KServe ModelInfer ------------------------------------------------------------------------------
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES = ("purchase_probability", "expected_quantity")
DATATYPES = ("INT64", "INT64", "INT64", "INT32", "FP32", "FP64", "BYTES", "BOOL", "", "int64")
REGIMES = ("valid", "negative ids", "ids past the vocabulary", "int64 extremes", "masks not 0/1", "rows attending nothing")


def _values(name: str, count: int, regime: str, vocab_size: int, rng: np.random.Generator) -> np.ndarray:
    """Values of one input tensor: model-valid, or broken the way `regime` says."""
    if name == "input_ids":
        values = rng.integers(0, vocab_size, size=count)
        if regime == "negative ids":
            values[rng.integers(count)] = -rng.integers(1, 2**40)
        elif regime == "ids past the vocabulary":
            values[rng.integers(count)] = vocab_size + rng.integers(0, 2**40)
        elif regime == "int64 extremes":
            values[rng.integers(count)] = rng.choice([np.iinfo(np.int64).min, np.iinfo(np.int64).max])
        return values
    values = np.ones(count, dtype=np.int64) if name == "attention_mask" else rng.integers(0, 2, size=count)
    if name == "attention_mask" and regime == "rows attending nothing":
        values[:] = 0
    if regime == "masks not 0/1":
        values[rng.integers(count)] = rng.choice([2, -1, 2**62])
    return values


@st.composite
def infer_requests(draw, model_name: str, vocab_size: int, max_length: int) -> kserve.ModelInferRequest:
    """ModelInfer requests: half of them well formed (the model's signature, data fitting the shape) with
    values broken or not; the other half wrong in names, dtypes, shapes and sizes."""
    odd_name, odd_version = draw(st.integers(0, 9)) == 0, draw(st.integers(0, 9)) == 0
    request = kserve.ModelInferRequest(
        model_name=draw(short_text) if odd_name else model_name,
        model_version=draw(short_text) if odd_version else "",
        id=draw(short_text),
    )
    well_formed = draw(st.booleans())
    regime = draw(st.sampled_from(REGIMES))
    raw = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if well_formed:
        rows, width = draw(st.integers(1, 8)), draw(st.integers(1, max_length))
        names = list(INPUT_NAMES)
    else:
        rows = draw(st.one_of(st.integers(-3, 8), st.integers(9, 1100), st.sampled_from([2**31, 2**62])))
        width = draw(st.one_of(st.integers(-3, max_length), st.integers(max_length + 1, 4 * max_length)))
        names = draw(st.lists(st.one_of(st.sampled_from(INPUT_NAMES), short_text), max_size=5))
    for name in names:
        if well_formed:
            shape, datatype, misfit = [rows, width], "INT64", 0
        else:
            shape = draw(st.one_of(st.just([rows, width]), st.lists(INT64, max_size=4), st.just([rows, width + 1])))
            datatype, misfit = draw(st.sampled_from(DATATYPES)), draw(st.sampled_from([0, 0, -1, 1]))
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        plausible = 0 < rows <= 1100 and 0 < width <= 4 * max_length
        count = max(0, (rows * width if plausible else draw(st.integers(0, 64))) + misfit)
        values = _values(name, max(count, 1), regime, vocab_size, rng)[:count]
        if raw:
            data = values.astype("<i8").tobytes()
            request.raw_input_contents.append(data if well_formed else draw(st.one_of(st.just(data), st.binary(max_size=64))))
        elif not well_formed and draw(st.integers(0, 4)) == 0:
            tensor.contents.fp32_contents.extend(values.astype(np.float32).tolist())  # the wrong dtype's field
        else:
            tensor.contents.int64_contents.extend(values.tolist())
    for name in draw(st.lists(st.one_of(st.sampled_from(OUTPUT_NAMES), short_text), max_size=3)):
        request.outputs.add(name=name)
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


_field_payloads = st.one_of(
    st.tuples(st.just(0), INT64),  # varint (negative: 10 bytes)
    st.tuples(st.just(2), st.binary(max_size=64)),  # length-delimited: strings with bad UTF-8, garbage sub-messages
    st.tuples(st.just(1), st.binary(min_size=8, max_size=8)),
    st.tuples(st.just(5), st.binary(min_size=4, max_size=4)),
)
wire_messages = st.builds(
    lambda fields: b"".join(_field(number, wire, payload) for number, (wire, payload) in fields),
    st.lists(st.tuples(st.integers(1, 12), _field_payloads), max_size=8),
)
def bad_utf8_candidate(junk: bytes) -> bytes:
    """A ScoreRequest/RankRequest whose candidate (field 2) has an item_id (field 1) that is not UTF-8."""
    return _field(2, 2, _field(1, 2, b"\xff" + junk))


bad_utf8 = st.builds(bad_utf8_candidate, st.binary(max_size=8))
raw_messages = st.one_of(st.binary(max_size=512), wire_messages, bad_utf8)


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


def fuzz(client: HostileClient, cases: st.SearchStrategy, examples: int, seed: int) -> tuple[Tally, int]:
    """Run `examples` hypothesis cases of (method, message), counting answers; (tally, failed health checks)."""
    tally = Tally(refusal_codes=REFUSALS)
    unhealthy = 0

    @hypothesis_seed(seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # count what happens; do not shrink
        suppress_health_check=list(HealthCheck),
    )
    @given(cases)
    def case(method_and_message: tuple[str, object]) -> None:
        nonlocal unhealthy
        _, _, healthy = client.check(*method_and_message, tally)
        unhealthy += not healthy

    case()
    return tally, unhealthy


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What the strategies need to know about the served bundle."""

    model_name: str
    model_version: str
    vocab_size: int
    max_length: int
    item_ids: list[str]

    @classmethod
    def of(cls, bundle_root: Path) -> "ModelFacts":
        bundle = open_bundle(bundle_root)
        featurizer = Featurizer.from_files(
            bundle.tokenizer_path, from_jsonable(FeaturizerConfig, bundle.manifest["featurizer"]), bundle.catalog_path
        )
        vocab_size = featurizer.tokenizer.get_vocab_size()
        return cls(bundle.name, bundle.version, vocab_size, featurizer.config.max_length, sorted(featurizer.catalog))


def message_kinds(facts: ModelFacts) -> dict[str, st.SearchStrategy]:
    """(method, message) strategies by kind: the three messages, and raw bytes sent to any method."""
    return {
        "Score": st.tuples(st.just("Score"), score_requests(facts.item_ids)),
        "Rank": st.tuples(st.just("Rank"), rank_requests(facts.item_ids)),
        "ModelInfer": st.tuples(st.just("ModelInfer"), infer_requests(facts.model_name, facts.vocab_size, facts.max_length)),
        "raw bytes": st.tuples(st.sampled_from(sorted(METHODS)), raw_messages),
    }


def hostile(bundle_root: Path, config: ReliabilityConfig) -> Scenario:
    """`fuzz_examples` hostile cases of each kind against one server; only allowed codes, always healthy."""
    facts = ModelFacts.of(bundle_root)
    per_kind, checks = {}, []
    with ServerUnderTest(bundle_root, config.serve_flags(), startup_timeout_s=config.startup_timeout_s) as server:
        client = HostileClient(server.target, facts.model_name, facts.model_version, config.request_timeout_s)
        try:
            for kind, cases in message_kinds(facts).items():
                tally, unhealthy = fuzz(client, cases, config.fuzz_examples, config.seed)
                per_kind[kind] = {**tally.summary(), "failed_health_checks": unhealthy}
                checks.append(
                    Check(f"{kind}: only {', '.join(sorted(ALLOWED))}", tally.lost == 0,
                          f"other codes: {dict(tally.unexpected)} {tally.summary()['details']}")
                )  # fmt: skip
                checks.append(Check(f"{kind}: healthy after every case", unhealthy == 0, f"{unhealthy} failed health checks"))
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
    return Scenario("hostile", f"{config.fuzz_examples} hypothesis cases per message kind", figures, checks)
