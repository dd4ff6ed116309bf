"""The server's one typed configuration: every serving default lives here.

Four frozen dataclasses, one per layer (transport, batcher, backend, and the
two-stage ranker), each field documented with its default. A setting is read
from, in rising order of precedence: the defaults below, a TOML or JSON file
(`--config`, with sections `[server]`, `[batcher]`, `[backend]`, `[ranker]`),
environment variables (`EDGEREC_<FIELD>`, e.g. `EDGEREC_GRPC_PORT=9001`;
lists comma-separated), then command-line flags (`--grpc-port 9001`). Field
names are unique across the classes, so flags and variables need no prefix.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgerec.core.bundle import TRT_CACHE
from edgerec.core.sessions import PROVIDER_NAMES, SessionConfig, TensorRTProfile
from edgerec.core.settings import add_arguments, from_arguments, setting
from edgerec.runtime.backends.base import EXECUTION_MODES

try:
    import tomllib
except ImportError:  # Python 3.10: JSON config files only
    tomllib = None

ENV_PREFIX = "EDGEREC_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
# The headers gRPC clients send besides any of the caller's (path, authority, user agent, deadline...)
# take about 600 bytes as gRPC counts them; below this, ordinary calls would be refused.
MIN_METADATA_BYTES = 4096


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Transport: what is served, where, and who may call."""

    bundle: Path | None = setting(None, "bundle folder or .tar.gz to serve (required)")
    host: str = setting("127.0.0.1", "address gRPC binds to; 0.0.0.0 exposes the server to the network")
    grpc_port: int = setting(8001, "gRPC port; 0 picks a free port")
    metrics_host: str = setting("127.0.0.1", "address the Prometheus /metrics endpoint binds to")
    metrics_port: int = setting(8002, "Prometheus metrics port; 0 picks a free port, -1 turns metrics off")
    tls_cert: Path | None = setting(None, "PEM server certificate (chain); with --tls-key turns TLS on")
    tls_key: Path | None = setting(None, "PEM private key of --tls-cert")
    tls_client_ca: Path | None = setting(None, "PEM CA bundle; if set, clients must present a certificate it signed (mTLS)")
    auth_tokens: tuple[str, ...] = setting((), "bearer tokens accepted in `authorization: Bearer <token>`; none: auth off")
    auth_token_file: Path | None = setting(None, "file of accepted bearer tokens, one per line (added to --auth-tokens)")
    max_message_bytes: int = setting(
        4 * 1024 * 1024,
        "largest gRPC message received or sent, in bytes; a larger request gets RESOURCE_EXHAUSTED "
        "(gRPC itself drops one over twice this size unread)",
    )
    max_metadata_bytes: int = setting(
        16 * 1024,
        "largest metadata (headers) of one call, in bytes as gRPC counts them (name + value + 32 per "
        "header, its own headers included); larger gets RESOURCE_EXHAUSTED, every time. The largest bearer "
        "token accepted is this minus 1 KiB (15 KiB at the default; gRPC Python's other headers take about "
        "600 bytes). The default is gRPC's own hard limit, so every call that ever got through still does",
    )
    max_candidates: int = setting(1024, "most candidates in one Score/Rank request (and rows in one ModelInfer)")
    max_context_items: int = setting(256, "most context items in one request")
    drain_timeout_s: float = setting(30.0, "on SIGTERM, how long admitted requests may take to finish")
    port_file: Path | None = setting(None, "once serving, write the bound ports here as JSON (for supervisors and tests)")
    log_level: str = setting("INFO", "logging level of the server process")


@dataclasses.dataclass(frozen=True)
class BatcherConfig:
    """Dynamic batching: how requests are merged into batches, and the admission bound."""

    max_batch_size: int = setting(32, "most pairs in one batch; 1 turns batching off")
    max_batch_tokens: int = setting(4096, "token budget of one batch: pairs x longest pair (padding included)")
    max_queue_delay_ms: float = setting(2.0, "longest an idle worker waits for a batch to fill before running a partial one")
    max_queue_wait_ms: float = setting(
        5000.0,
        "admission bound in time: a request is refused (RESOURCE_EXHAUSTED) when the pairs admitted ahead of it "
        "would take longer than this to score at the measured service rate; 0: off (count bounds only)",
    )
    max_queue_pairs: int = setting(8192, "admission bound: pairs admitted and not yet scored; beyond it RESOURCE_EXHAUSTED")
    max_queue_requests: int = setting(1024, "admission bound: requests admitted and not yet answered")
    length_bucket_width: int = setting(16, "pairs are grouped by length in buckets this many tokens wide; 0: no grouping")


@dataclasses.dataclass(frozen=True)
class BackendConfig:
    """The ONNX Runtime backend of every served model: providers, variant precision, threads and warm-up."""

    providers: tuple[str, ...] = setting(
        ("tensorrt", "cuda", "cpu"), "execution providers to try, in order (tensorrt, cuda, cpu)"
    )
    precision: str | None = setting(None, "variant precision to load; default: each model's default variant for the device")
    intra_op_threads: int = setting(
        0, "threads running the model: inside one call when batched, rows at once when rows_alone; 0: one per core"
    )
    inter_op_threads: int = setting(1, "threads running independent operators in parallel")
    spin_wait: bool = setting(
        False,
        "let ONNX Runtime's threads spin between operators; off by default: on a small box the spinning "
        "threads take CPU from the gRPC and batching threads (see deploy/README.md, 'Session settings')",
    )
    cpu_memory_arena: bool = setting(
        True,
        "ONNX Runtime's CPU memory arena: activations are reused across runs; off, every run allocates and "
        "frees them afresh (more page faults and CPU per pair, and glibc heaps that grow under load)",
    )
    memory_pattern: bool = setting(
        False,
        "ONNX Runtime's memory pattern planning: one allocation plan kept per input shape; off by default, "
        "since every new batch shape adds a plan and resident memory then creeps under varied traffic",
    )
    execution: str = setting(
        "auto",
        "how a cut batch runs: 'batched' (one call, rows padded to the longest, intra_op_threads per call), "
        "'rows_alone' (one single-threaded call per row, cut to its own length, intra_op_threads rows at once: "
        "no score depends on its batch-mates or padding), 'auto' (rows_alone on the CPU, batched on a GPU)",
    )
    warm_up: bool = setting(True, "run a few batches of each size class before reporting SERVING")
    trt_cache_dir: Path | None = setting(None, "TensorRT engine cache folder; default: <bundle>/.trt-cache")

    def session_config(self, bundle_root: Path, max_batch: int, max_sequence: int) -> SessionConfig:
        """The ONNX Runtime session settings of a served model (`edgerec.core.sessions`).

        The TensorRT profile covers what the server can send: batches up to
        `max_batch` (the batcher's `max_batch_size`) of pairs up to
        `max_sequence` tokens (the featurizer's `max_length`), the same
        profile the export builds its engine cache with. The engine cache is
        `trt_cache_dir`, else `<bundle_root>/.trt-cache` (where the export built it).
        """
        return SessionConfig(
            providers=self.providers,
            intra_op_threads=self.intra_op_threads,
            inter_op_threads=self.inter_op_threads,
            spin_wait=self.spin_wait,
            cpu_memory_arena=self.cpu_memory_arena,
            memory_pattern=self.memory_pattern,
            trt_cache_dir=Path(self.trt_cache_dir or Path(bundle_root) / TRT_CACHE),
            trt_profile=TensorRTProfile.for_serving(max_batch, max_sequence),
        )


@dataclasses.dataclass(frozen=True)
class RankerConfig:
    """The two-stage path of a bundle that holds the two-tower ranker (`runtime.ranker`, `runtime.two_stage`).

    The ranker's batcher takes the `[batcher]` section's time and request
    bounds (`max_queue_wait_ms`, `max_queue_requests`); its rows are
    candidates, each costing one unit, bounded by the settings below.
    """

    rerank_top: int = setting(
        0,
        "default number of the ranker's best candidates the cross-encoder re-scores when a request does not say "
        "(0: the ranker alone; measured on the UCI test split, re-ranking the top 10 lowered NDCG@10)",
    )
    max_rerank_top: int = setting(64, "largest rerank_top a request may ask for (each re-ranked candidate is one BERT pass)")
    ranker_max_batch_candidates: int = setting(
        16384, "most candidates in one batch of the ranker (a whole-catalog Recommend is one request's rows)"
    )
    ranker_max_queue_candidates: int = setting(
        65536, "admission bound of the ranker: candidates admitted and not yet scored; beyond it RESOURCE_EXHAUSTED "
        "(the [batcher] time bound usually refuses first)"
    )
    ranker_threads: int = setting(
        0,
        "the ranker's threads: a batch holding one request runs as one call on this many ONNX Runtime threads; "
        "a batch of several requests runs them this many at once, each single-threaded (as the cross-encoder's "
        "rows_alone); 0: one per core",
    )
    text_cache_size: int = setting(4096, "free-text item embeddings kept (least recently used out first)")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything `edgerec serve` needs."""

    server: ServerConfig = dataclasses.field(default_factory=ServerConfig)
    batcher: BatcherConfig = dataclasses.field(default_factory=BatcherConfig)
    backend: BackendConfig = dataclasses.field(default_factory=BackendConfig)
    ranker: RankerConfig = dataclasses.field(default_factory=RankerConfig)

    def ranker_batcher(self) -> BatcherConfig:
        """The ranker's batcher settings: candidates are its rows (length 1 each), cut without waiting."""
        ranker = self.ranker
        return dataclasses.replace(
            self.batcher,
            max_batch_size=ranker.ranker_max_batch_candidates,
            max_batch_tokens=ranker.ranker_max_batch_candidates,
            max_queue_delay_ms=0.0,
            max_queue_pairs=ranker.ranker_max_queue_candidates,
            length_bucket_width=0,
        )

    def validate(self) -> "Config":
        """Refuse settings that cannot work, naming the setting."""
        problems = []
        if self.batcher.max_batch_size < 1:
            problems.append("max_batch_size must be >= 1")
        if self.batcher.max_queue_delay_ms < 0:
            problems.append("max_queue_delay_ms must be >= 0")
        if self.batcher.max_queue_wait_ms < 0:
            problems.append("max_queue_wait_ms must be >= 0 (0: off)")
        if self.batcher.max_queue_pairs < self.server.max_candidates:
            problems.append("max_queue_pairs must be >= max_candidates, or a full request could never be admitted")
        if self.batcher.max_queue_requests < 1:
            problems.append("max_queue_requests must be >= 1")
        if self.batcher.length_bucket_width < 0:
            problems.append("length_bucket_width must be >= 0")
        if self.server.max_metadata_bytes < MIN_METADATA_BYTES:
            problems.append(f"max_metadata_bytes must be >= {MIN_METADATA_BYTES}, or ordinary calls' own headers are refused")
        if self.server.max_candidates < 1 or self.server.max_context_items < 0:
            problems.append("max_candidates must be >= 1 and max_context_items >= 0")
        if bool(self.server.tls_cert) != bool(self.server.tls_key):
            problems.append("tls_cert and tls_key go together")
        if self.server.tls_client_ca and not self.server.tls_cert:
            problems.append("tls_client_ca (mTLS) needs tls_cert and tls_key")
        ranker = self.ranker
        if not 0 <= ranker.rerank_top <= ranker.max_rerank_top:
            problems.append("rerank_top must be between 0 and max_rerank_top")
        if ranker.ranker_max_batch_candidates < 1 or ranker.ranker_threads < 0 or ranker.text_cache_size < 0:
            problems.append("ranker_max_batch_candidates must be >= 1, ranker_threads and text_cache_size >= 0")
        if ranker.ranker_max_queue_candidates < ranker.ranker_max_batch_candidates:
            problems.append("ranker_max_queue_candidates must be >= ranker_max_batch_candidates")
        if self.backend.execution not in EXECUTION_MODES:
            problems.append(f"backend.execution must be one of {', '.join(EXECUTION_MODES)}, got {self.backend.execution!r}")
        unknown = [p for p in self.backend.providers if p not in PROVIDER_NAMES]
        if unknown:
            problems.append(f"unknown provider(s) {unknown}; choose from {sorted(PROVIDER_NAMES)}")
        if problems:
            raise ValueError("invalid configuration: " + "; ".join(problems))
        return self

    def accepted_tokens(self) -> frozenset[str]:
        """Bearer tokens from the settings and the token file; empty means auth is off."""
        tokens = set(self.server.auth_tokens)
        if self.server.auth_token_file is not None:
            lines = Path(self.server.auth_token_file).read_text().splitlines()
            tokens.update(line.strip() for line in lines if line.strip() and not line.startswith("#"))
        return frozenset(tokens)


SECTIONS: dict[str, type] = {
    "server": ServerConfig, "batcher": BatcherConfig, "backend": BackendConfig, "ranker": RankerConfig
}


def _field_names() -> dict[str, str]:
    """Field name -> section; field names must be unique across sections (flags have no prefix)."""
    owner: dict[str, str] = {}
    for section, cls in SECTIONS.items():
        for field in dataclasses.fields(cls):
            if field.name in owner:
                raise RuntimeError(f"setting {field.name!r} is defined in both {owner[field.name]} and {section}")
            owner[field.name] = section
    return owner


FIELD_SECTION = _field_names()


def _convert(annotation: Any, value: Any, source: str) -> Any:
    """Turn a file or environment value into the field's type."""
    args = typing.get_args(annotation)
    if type(None) in args:
        if value is None or value == "":
            return None
        annotation = next(a for a in args if a is not type(None))
    origin = typing.get_origin(annotation)
    if origin in (tuple, list):
        items = value.split(",") if isinstance(value, str) else list(value)
        item_type = typing.get_args(annotation)[0]
        return tuple(_convert(item_type, item.strip() if isinstance(item, str) else item, source) for item in items if item != "")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        lowered = str(value).strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{source}: {value!r} is not a boolean (use true/false)")
    try:
        return annotation(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: {value!r} is not a valid {annotation.__name__}") from exc


def _replace(obj: Any, values: Mapping[str, Any], source: str) -> Any:
    hints = typing.get_type_hints(type(obj))
    converted = {name: _convert(hints[name], value, f"{source} {name}") for name, value in values.items()}
    return dataclasses.replace(obj, **converted)


def read_file(path: Path) -> dict[str, dict[str, Any]]:
    """A config file's sections: TOML (`.toml`) or JSON, `{"server": {...}, "batcher": {...}, ...}` (`SECTIONS`)."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".toml":
        if tomllib is None:
            raise ValueError(f"{path}: TOML needs Python 3.11+; use a JSON file")
        data = tomllib.loads(text)
    else:
        data = json.loads(text)
    unknown_sections = set(data) - set(SECTIONS)
    if unknown_sections:
        raise ValueError(f"{path}: unknown section(s) {sorted(unknown_sections)}; expected {sorted(SECTIONS)}")
    for section, values in data.items():
        names = {f.name for f in dataclasses.fields(SECTIONS[section])}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"{path}: unknown setting(s) {sorted(unknown)} in [{section}]")
    return data


def load_config(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Defaults, then the config file, then `EDGEREC_*` variables, then flags (flags win)."""
    environ = os.environ if environ is None else environ
    config = Config()
    file_path = getattr(args, "config", None) or environ.get(CONFIG_ENV)
    if file_path:
        for section, values in read_file(Path(file_path)).items():
            config = dataclasses.replace(
                config, **{section: _replace(getattr(config, section), values, f"{file_path} [{section}]")}
            )
    for section in SECTIONS:
        from_env = {
            name: environ[ENV_PREFIX + name.upper()]
            for name, owner in FIELD_SECTION.items()
            if owner == section and ENV_PREFIX + name.upper() in environ
        }
        if from_env:
            config = dataclasses.replace(config, **{section: _replace(getattr(config, section), from_env, "environment")})
    if args is not None:
        config = Config(
            server=from_arguments(ServerConfig, args, base=config.server),
            batcher=from_arguments(BatcherConfig, args, base=config.batcher),
            backend=from_arguments(BackendConfig, args, base=config.backend),
            ranker=from_arguments(RankerConfig, args, base=config.ranker),
        )
    return config.validate()


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config` plus one flag per setting, each documented with its default."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"TOML or JSON file with [server], [batcher], [backend], [ranker] sections (or ${CONFIG_ENV}); "
        f"environment variables {ENV_PREFIX}<SETTING> override it, flags override both",
    )
    for cls in SECTIONS.values():
        add_arguments(parser, cls)
