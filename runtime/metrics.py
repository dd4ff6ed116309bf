"""Prometheus metrics of the server, in base units (seconds, pairs, ratios).

Each server owns a private registry, so several servers (tests, benchmarks)
can live in one process. Histograms use explicit buckets chosen for a CPU
cross-encoder: milliseconds to seconds for times, powers of two for sizes.
Batch metrics count the batches of every model of the served version together.

Stages. The cross-encoder's batcher reports under `edgerec_*` (pairs); the
two-tower ranker's batcher reports the same batch series under
`edgerec_ranker_*` (its rows are candidates: `edgerec_ranker_pairs_scored_total`
counts candidates scored by the ranker), from `Metrics.for_stage("ranker")`.
Per request, `edgerec_stage_seconds{stage}` times each stage a Score, Rank or
Recommend request went through (queue included) and
`edgerec_stage_candidates_total{stage}` counts the candidates each scored
(`ranker`, `cross_encoder`: the re-ranked ones, or all on a bundle without the ranker).

Calls: what is counted where. `edgerec_requests_received_total{method}`
counts every call gRPC hands to the server's code, on arrival (the
interceptor, `runtime.status.CallGate`). `edgerec_requests_total{method,code}`
counts each of them once more when it ends, with the code its client got:
- our services' methods (`edgerec.v1.Recommender`, the KServe service): by
  `runtime.status.rpc`, including requests over `max_message_bytes`
  (RESOURCE_EXHAUSTED, refused by our own decoder so that they reach this
  boundary), bytes that do not parse (INVALID_ARGUMENT), calls whose
  deadline passed while they ran (DEADLINE_EXCEEDED, though gRPC cancels
  them) and calls their client abandoned (CANCELLED);
- refused by the interceptor before any handler: no accepted bearer token
  (UNAUTHENTICATED), an unknown method (UNIMPLEMENTED, method label
  `unknown`, so clients cannot mint label values);
- health checks and reflection: by the interceptor when they end.
Every count is taken before the answer goes out (a unary call's client that
has its answer finds it counted; a stream is counted as it ends).
`edgerec_request_failures_total` repeats the non-OK ones. DEADLINE_EXCEEDED
versus CANCELLED: a call gRPC cancels within `status.DEADLINE_SLACK_S` of
its deadline is counted DEADLINE_EXCEEDED.
Calls the server's code never sees are in neither: what gRPC's transport
refuses (metadata over `max_metadata_bytes`, a message over gRPC's own hard
cap of twice `max_message_bytes`, calls arriving while the server stops).
`received - requests` (summed over codes) is the calls in flight plus the
few that gRPC ended after they arrived but before their request message
did (the client's deadline or cancellation came first).
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
PADDING_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
# The method label of calls to methods the server does not have.
UNKNOWN_METHOD = "unknown"


class Metrics:
    """The server's counters, gauges and histograms on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None, prefix: str = "edgerec") -> None:
        """`prefix` names every series (`<prefix>_queue_depth_pairs`, ...); `for_stage` makes the ranker's."""
        self.registry = registry if registry is not None else CollectorRegistry()
        self.prefix = prefix
        self._stages: dict[str, Metrics] = {}
        r = self.registry
        self.received = Counter(
            f"{prefix}_requests_received", "RPCs that reached the server's code, on arrival, by method", ["method"], registry=r
        )
        self.requests = Counter(
            f"{prefix}_requests", "RPCs ended, by method and final status code", ["method", "code"], registry=r
        )
        self.failures = Counter(
            f"{prefix}_request_failures", "RPCs that ended with a status other than OK", ["method", "code"], registry=r
        )
        self.request_seconds = Histogram(
            f"{prefix}_request_seconds", "RPC time inside the server", ["method"], buckets=TIME_BUCKETS, registry=r
        )
        self.queue_seconds = Histogram(
            f"{prefix}_queue_seconds", "time from admission to a request's first batch", buckets=TIME_BUCKETS, registry=r
        )
        self.compute_seconds = Histogram(
            f"{prefix}_compute_seconds", "backend time of one batch", buckets=TIME_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            f"{prefix}_batch_size_pairs", "pairs in one batch", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.padding_ratio = Histogram(
            f"{prefix}_batch_padding_ratio", "share of a batch's tokens that are padding", buckets=PADDING_BUCKETS, registry=r
        )
        self.pairs = Counter(f"{prefix}_pairs_scored", "pairs run through a backend", registry=r)
        self.queue_depth = Gauge(f"{prefix}_queue_depth_pairs", "pairs waiting for a batch", registry=r)
        self.queue_requests = Gauge(f"{prefix}_queue_requests", "requests admitted and not yet answered", registry=r)
        self.service_rate = Gauge(
            f"{prefix}_service_rate_pairs_per_second",
            "measured pairs scored per second of compute (moving average over recent batches); admission's "
            "estimated wait is the pairs admitted / this",
            registry=r,
        )
        self.dropped_requests = Counter(
            f"{prefix}_dropped_requests",
            "requests that left the queue (deadline passed, caller cancelled) with pairs never computed",
            ["reason"],
            registry=r,
        )
        self.dropped_pairs = Counter(
            f"{prefix}_dropped_pairs", "pairs dropped before they cost compute, by reason", ["reason"], registry=r
        )
        self.batch_failures = Counter(f"{prefix}_batch_failures", "batches whose backend raised", registry=r)
        self.reloads = Counter(f"{prefix}_bundle_reloads", "bundle hot reloads, by result", ["result"], registry=r)
        self.model_info = Gauge(
            f"{prefix}_model_info",
            "the model version being served (value 1): one series per model, with its variant and provider",
            ["model_name", "version", "model", "precision", "provider"],
            registry=r,
        )

        self.stage_seconds = Histogram(
            f"{prefix}_stage_seconds", "time of one request in one stage, queue included", ["stage"],
            buckets=TIME_BUCKETS, registry=r,
        )
        self.stage_candidates = Counter(
            f"{prefix}_stage_candidates", "candidates scored per stage", ["stage"], registry=r
        )

    def for_stage(self, stage: str) -> "Metrics":
        """The batch metrics of another stage's batcher on this registry (`edgerec_<stage>_*`), made once
        per server so that every model version (hot reloads) reports into the same series."""
        if stage not in self._stages:
            self._stages[stage] = Metrics(self.registry, f"{self.prefix}_{stage}")
        return self._stages[stage]

    def observe_stage(self, stage: str, candidates: int, seconds: float) -> None:
        self.stage_seconds.labels(stage).observe(seconds)
        self.stage_candidates.labels(stage).inc(candidates)

    # -- hooks used by the batcher ------------------------------------------
    def observe_batch(self, pairs: int, real_tokens: int, padded_tokens: int, seconds: float) -> None:
        self.batch_size.observe(pairs)
        self.padding_ratio.observe(1.0 - real_tokens / padded_tokens if padded_tokens else 0.0)
        self.compute_seconds.observe(seconds)
        self.pairs.inc(pairs)

    def set_queue(self, pairs: int, requests: int) -> None:
        self.queue_depth.set(pairs)
        self.queue_requests.set(requests)

    # -- hooks used by the transport -----------------------------------------
    def observe_arrival(self, method: str) -> None:
        self.received.labels(method).inc()

    def observe_request(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        if code != "OK":
            self.failures.labels(method, code).inc()
        self.request_seconds.labels(method).observe(seconds)

    def set_model(self, model_name: str, version: str, models: Mapping[str, tuple[str, str]]) -> None:
        """The served version: bundle `model_name` and `version`, and for each model its
        (variant precision, provider); replaces what was set before."""
        self.model_info.clear()
        for model, (precision, provider) in models.items():
            self.model_info.labels(model_name, version, model, precision, provider).set(1)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 if never set); for tests and health reports."""
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found


def serve_metrics(metrics: Metrics, host: str, port: int):
    """Serve /metrics over HTTP in a daemon thread; returns the HTTP server (`.server_port`, `.shutdown()`)."""
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server
