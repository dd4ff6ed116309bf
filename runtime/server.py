"""Assembles and runs the gRPC server (`edgerec serve`).

One grpc.aio server carries the domain API (`edgerec.v1.Recommender`), the
KServe v2 protocol (`inference.GRPCInferenceService`), the standard health
service (SERVING once the model version is loaded and warm, NOT_SERVING
while draining) and server reflection; Prometheus metrics are served over HTTP
beside it. It binds 127.0.0.1 unless told otherwise and bounds message sizes.

Operations:
- SIGTERM/SIGINT: stop admitting, finish every admitted request (up to
  `drain_timeout_s`), exit 0. During start-up (signals are caught from the
  first instruction of `edgerec serve`, `runtime.process`): exit 0 without
  serving, as soon as the bundle being loaded is read (a load cannot be
  interrupted; it is then freed).
- SIGHUP (or `Server.reload`): load, verify and warm up the bundle at
  `--bundle` again (a `latest` symlink is followed anew) or at a given path,
  then swap it in atomically; the old version finishes what it admitted. A
  bundle that fails to load is logged and counted, and the old one keeps
  serving. SIGHUPs coalesce (`Server.request_reload`): while a reload runs,
  any number of them queue one more, which reads the bundle after all of
  them; one received during start-up after the bundle was read reloads once
  serving, one received before is covered by the start-up load itself.

`start_server(config)` runs a server in a background thread of the calling
process (tests, benchmarks); `Server` runs on the caller's own event loop;
`edgerec.runtime.process.ServerProcess` runs `edgerec serve` as a child process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from edgerec.proto import describing
from edgerec.runtime import kserve_service, recommender_service
from edgerec.runtime.auth import BearerTokens, server_credentials
from edgerec.runtime.config import Config, add_config_arguments, load_config
from edgerec.core.errors import EdgeRecError, ErrorCode
from edgerec.runtime.metrics import Metrics, serve_metrics
from edgerec.runtime.model_version import ModelVersion
from edgerec.runtime.process import catch_signals
from edgerec.runtime.status import CallGate, add_servicer

log = logging.getLogger(__name__)

SERVED_SERVICES = (recommender_service.SERVICE.full_name, kserve_service.SERVICE.full_name)
# After each batch the worker thread needs the GIL back from a busy event loop; at Python's
# default switch interval (5 ms) the worker could sit idle that long between batches.
GIL_SWITCH_INTERVAL_S = 0.001
# On shutdown, how long answered calls may take to send their responses before open streams are cut.
RESPONSE_FLUSH_S = 1.0
# gRPC itself refuses a received message over this many times `max_message_bytes` before reading it (a
# memory guard); a smaller one over the limit is read and refused by our own decoder (`runtime.status`),
# so that the call reaches the status boundary and is counted with a message naming the setting.
TRANSPORT_MESSAGE_FACTOR = 2
GRPC_INT_MAX = 2**31 - 1  # gRPC's channel arguments are C ints


class Server:
    """The running server: gRPC services, the current model version, metrics and health."""

    def __init__(self, config: Config) -> None:
        self.config = config.validate()
        self.metrics = Metrics()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._current: ModelVersion | None = None
        self._draining = False
        self._grpc: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._metrics_http = None
        self._reload_lock: asyncio.Lock | None = None
        # SIGHUP coalescing: reloads asked for so far, and how many of those a load began after.
        self._reloads_requested = 0
        self._reloads_covered = 0
        self._reload_task: asyncio.Task | None = None
        self._loading_started = False
        self.serving = False

    # -- what the services see ------------------------------------------------
    def model_version(self) -> ModelVersion:
        """The model version serving now; UNAVAILABLE before the first one is loaded."""
        if self._current is None:
            raise EdgeRecError(ErrorCode.UNAVAILABLE, "no model is loaded yet")
        return self._current

    def ready(self) -> bool:
        return self._current is not None and not self._draining and self._current.ready

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> "Server":
        """Load the bundle and serve it; returns without serving if `abandon_start` was called meanwhile."""
        settings = self.config.server
        if settings.bundle is None:
            raise ValueError("no bundle to serve: pass --bundle PATH (a bundle folder or .tar.gz)")
        self._reload_lock = asyncio.Lock()
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        self._loading_started = True
        self._reloads_covered = self._reloads_requested  # reloads asked for so far: this load reads the bundle
        loaded = await self._load(settings.bundle)
        if self._draining:  # asked to stop while the bundle loaded: free it, never serve
            await loaded.retire(0)
            return self
        self._current = loaded
        try:
            await self._serve(settings)
        except BaseException:
            await self.stop(grace=0)
            raise
        self.serving = True
        if self._reloads_requested > self._reloads_covered:
            log.info("reloading: a SIGHUP came while start-up was loading the bundle")
            self._start_reloads()
        return self

    def abandon_start(self) -> None:
        """Stop requested before serving: `start` frees what it is loading and returns without serving."""
        self._draining = True

    async def _serve(self, settings) -> None:
        tokens = self.config.accepted_tokens()
        gate = CallGate(self.metrics, SERVED_SERVICES, BearerTokens(tokens) if tokens else None)
        self._grpc = grpc.aio.server(
            interceptors=[gate],
            options=[
                # our decoder refuses requests over max_message_bytes (`runtime.status`); this is gRPC's cap
                (
                    "grpc.max_receive_message_length",
                    min(TRANSPORT_MESSAGE_FACTOR * settings.max_message_bytes, GRPC_INT_MAX),
                ),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                # gRPC refuses metadata between its soft and hard limits at random; equal, a size gets one answer
                ("grpc.max_metadata_size", settings.max_metadata_bytes),
                ("grpc.absolute_max_metadata_size", settings.max_metadata_bytes),
                ("grpc.so_reuseport", 0),  # a second server on the same port fails instead of sharing it
            ],
        )
        limit = settings.max_message_bytes
        add_servicer(
            self._grpc,
            recommender_service.RecommenderService(self.model_version, self.metrics, limit),
            recommender_service.SERVICE,
        )
        add_servicer(
            self._grpc,
            kserve_service.KServeService(self.model_version, self.ready, self.metrics, limit),
            kserve_service.SERVICE,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        # Reflection reads one pool; edgerec's files live in their own (edgerec.proto.POOL), health's and
        # reflection's in protobuf's default one: describe all of them from one pool built for it.
        described = (
            recommender_service.SERVICE,
            kserve_service.SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"],
            reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
        )
        reflection.enable_server_reflection(
            [service.full_name for service in described], self._grpc, pool=describing(s.file for s in described)
        )
        self.port = self._bind(settings)
        await self._grpc.start()
        for service in ("", *SERVED_SERVICES):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if settings.metrics_port >= 0:
            self._metrics_http = serve_metrics(self.metrics, settings.metrics_host, settings.metrics_port)
            self.metrics_port = self._metrics_http.server_port
        if settings.port_file is not None:
            _write_port_file(settings.port_file, {"grpc_port": self.port, "metrics_port": self.metrics_port, "pid": os.getpid()})
        log.info(
            "serving %s %s on %s:%d%s%s; metrics on %s",
            self._current.name,
            self._current.version,
            settings.host,
            self.port,
            " (TLS" + (", client certificates required)" if settings.tls_client_ca else ")") if settings.tls_cert else "",
            " with bearer-token auth" if tokens else "",
            f"{settings.metrics_host}:{self.metrics_port}" if self.metrics_port is not None else "(off)",
        )

    def _bind(self, settings) -> int:
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        address = f"{host}:{settings.grpc_port}"
        try:
            if settings.tls_cert:
                credentials = server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
                return self._grpc.add_secure_port(address, credentials)
            return self._grpc.add_insecure_port(address)
        except RuntimeError as exc:  # grpc raises RuntimeError when it cannot bind
            raise OSError(f"cannot listen on {address}: {exc}") from exc

    async def _load(self, path: Path) -> ModelVersion:
        log.info("loading bundle %s", path)
        loaded = await asyncio.to_thread(ModelVersion.load, Path(path), self.config, self.metrics)
        await loaded.start()
        self.metrics.set_model(loaded.name, loaded.version, loaded.variants())
        return loaded

    def request_reload(self) -> None:
        """Reload the configured bundle soon (SIGHUP), coalescing requests.

        At most one reload runs and at most one more waits behind it: any
        number of requests made while a reload runs are served by the next
        one, which reads the bundle path after all of them. Before serving, a
        request is served by the start-up load if that had not read the bundle
        yet, else by one reload once serving. Each request is logged with what
        became of it.
        """
        already_queued = self._reloads_requested > self._reloads_covered
        self._reloads_requested += 1
        if self._draining:
            log.info("SIGHUP while stopping: no reload")
        elif not self._loading_started:
            log.info("SIGHUP before start-up read the bundle: the start-up load reads it")
        elif not self.serving:
            log.info("SIGHUP during start-up: the bundle is read again once serving")
        elif self._reload_task is None or self._reload_task.done():
            log.info("SIGHUP: reloading %s", self.config.server.bundle)
            self._start_reloads()
        elif already_queued:
            log.info("SIGHUP: coalesced with the reload already queued")
        else:
            log.info("SIGHUP: a reload is running; one more is queued behind it")

    def _start_reloads(self) -> None:
        self._reload_task = asyncio.get_running_loop().create_task(self._run_requested_reloads())

    async def _run_requested_reloads(self) -> None:
        while self._reloads_requested > self._reloads_covered and not self._draining:
            self._reloads_covered = self._reloads_requested  # this reload reads the bundle after all of them
            await self.reload()

    async def reload(self, path: Path | None = None) -> bool:
        """Load a bundle (default: the configured path again) and swap it in; False leaves the old one serving."""
        path = Path(path or self.config.server.bundle)
        async with self._reload_lock:
            if self._draining:
                return False
            try:
                new = await self._load(path)
            except Exception as exc:
                self.metrics.reloads.labels("failed").inc()
                old = self._current
                log.error(
                    "reload of %s failed; still serving %s %s: %s",
                    path, old.name, old.version, exc,
                    exc_info=not isinstance(exc, EdgeRecError),  # an unexpected failure gets its traceback
                )
                return False
            if self._draining:  # the server began to stop while the new bundle loaded
                await new.retire(0)
                return False
            old, self._current = self._current, new
            self.metrics.reloads.labels("ok").inc()
            log.info("reloaded: now serving %s %s (was %s %s)", new.name, new.version, old.name, old.version)
            await old.retire(self.config.server.drain_timeout_s)
            return True

    async def stop(self, grace: float | None = None) -> bool:
        """Stop admitting, let admitted requests finish (up to `grace` s), stop. True if none was cut short."""
        grace = self.config.server.drain_timeout_s if grace is None else grace
        self._draining = True
        await self._health.enter_graceful_shutdown()  # health watchers see NOT_SERVING
        finished = True
        stopping = asyncio.create_task(self._grpc.stop(grace)) if self._grpc is not None else None
        if self._current is not None:
            log.info(
                "draining: no new requests; finishing %d admitted request(s) (up to %.0f s)",
                self._current.admitted_requests,
                grace,
            )
            finished = await self._current.retire(grace)  # every admitted request is scored
        if stopping is not None:
            # Answered calls get a moment to send their responses; open streams (health Watch,
            # reflection) would otherwise hold the whole grace period, so they are then cut.
            done, _ = await asyncio.wait([stopping], timeout=RESPONSE_FLUSH_S)
            if not done:
                await self._grpc.stop(0)
                await stopping
        if self._reload_task is not None:  # a reload under way sees `_draining` once its load ends, frees it
            await asyncio.gather(self._reload_task, return_exceptions=True)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        return finished


def _write_port_file(path: Path, ports: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(json.dumps(ports) + "\n")
    scratch.replace(path)  # readers never see a half-written file


class ServerHandle:
    """A `Server` running on its own event loop in a background thread of this process."""

    def __init__(self, config: Config, timeout: float = 120.0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="edgerec-server", daemon=True)
        self._thread.start()
        self.server = Server(config)
        try:
            self._call(self.server.start(), timeout)
        except BaseException:
            self._close_loop()
            raise

    def _call(self, coroutine, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def metrics_port(self) -> int | None:
        return self.server.metrics_port

    @property
    def target(self) -> str:
        """`host:port` for `grpc.insecure_channel` / `grpc.secure_channel`."""
        return f"{self.server.config.server.host}:{self.port}"

    @property
    def metrics(self) -> Metrics:
        return self.server.metrics

    def reload(self, path: Path | None = None, timeout: float | None = 120.0) -> bool:
        return self._call(self.server.reload(path), timeout)

    def stop(self, grace: float | None = None) -> bool:
        if not self._thread.is_alive():
            return True
        try:
            return self._call(self.server.stop(grace))
        finally:
            self._close_loop()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def start_server(config: Config, timeout: float = 120.0) -> ServerHandle:
    """Start a server in a background thread; returns once it is serving (`handle.port`, `handle.stop()`)."""
    return ServerHandle(config, timeout)


async def serve_until_signalled(config: Config) -> int:
    """Serve until SIGTERM/SIGINT, reloading on SIGHUP; 0 if every admitted request finished.

    Signals caught before this runs (`edgerec.runtime.process.catch_signals`, from the first instruction
    of `edgerec serve`) are acted on first; a stop asked for during start-up ends it without serving.
    """
    server = Server(config)
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if signum == signal.SIGHUP:
            server.request_reload()
            return
        if not stop.is_set():
            log.info("%s: stopping%s", signal.Signals(signum).name, "" if server.serving else " before serving")
        stop.set()

    with _signals_to(asyncio.get_running_loop(), on_signal):
        if stop.is_set():
            log.info("stopped before serving")
            return 0
        starting = asyncio.create_task(server.start())
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                server.abandon_start()  # the load under way cannot be interrupted: it is freed when it ends
            await starting
            if not server.serving:
                log.info("stopped before serving")
                return 0
            await stopping
        finally:
            stopping.cancel()
        finished = await server.stop()
    log.info("stopped%s", "" if finished else "; some admitted requests did not finish in time")
    return 0 if finished else 1


@contextlib.contextmanager
def _signals_to(loop: asyncio.AbstractEventLoop, on_signal: Callable[[int], None]) -> Iterator[None]:
    """Hand the process's SIGTERM, SIGINT and SIGHUP to `on_signal` on `loop` while the block runs.

    Those caught before (`catch_signals`) are handed over first, in order. Python runs signal handlers
    in the main thread only, so a wake-up socket makes the loop's thread run them at once even when the
    signal landed on another thread; the process's handlers stay installed afterwards (signals are
    then only recorded), so none can kill it while it ends.
    """
    signals = catch_signals()
    wake_reader, wake_writer = socket.socketpair()
    wake_reader.setblocking(False)
    wake_writer.setblocking(False)
    previous_fd = signal.set_wakeup_fd(wake_writer.fileno(), warn_on_full_buffer=False)
    loop.add_reader(wake_reader.fileno(), _drain, wake_reader)
    try:
        for signum in signals.attach(lambda signum: loop.call_soon_threadsafe(on_signal, signum)):
            on_signal(signum)
        yield
    finally:
        signals.attach(None)
        loop.remove_reader(wake_reader.fileno())
        signal.set_wakeup_fd(previous_fd)
        wake_reader.close()
        wake_writer.close()


def _drain(wake_reader: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while wake_reader.recv(512):
            pass


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args)
    except ValueError as exc:
        print(f"edgerec serve: {exc}")
        return 2
    if config.server.bundle is None:
        print("edgerec serve: --bundle PATH is required (a bundle folder or .tar.gz)")
        return 2
    logging.basicConfig(level=config.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signals = catch_signals()  # installed already by `edgerec serve`; here for any other caller
    try:
        return asyncio.run(serve_until_signalled(config))
    except (EdgeRecError, OSError) as exc:  # a bundle that does not load, a port that is taken, a missing file
        log.error("cannot serve: %s", exc)
        return 1
    finally:
        signals.ignore()  # the server is done; a late signal must not turn its exit status into death by signal
