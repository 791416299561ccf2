"""The gRPC server: composition root, health, reflection, graceful shutdown.

``create_server(settings)`` builds and starts the server without blocking and
returns it with its bound port (``--port 0`` picks a free one). ``serve``
runs it until SIGTERM/SIGINT: health goes NOT_SERVING first, new work is
refused, in-flight RPCs get ``grace_period_s`` to finish, then it exits 0.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer as AsyncHealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer as AsyncReflectionServicer

from highpeaks_ml import __version__
from highpeaks_ml import metrics as metrics_mod
from highpeaks_ml.api import oip_messages
from highpeaks_ml.api import tracing as tracing_mod
from highpeaks_ml.api.auth import build_auth_interceptor
from highpeaks_ml.api.context import ANONYMOUS, NO_SUBJECT
from highpeaks_ml.api.dispatch import Dispatcher, HandlerLayer
from highpeaks_ml.api.interceptors import (
    ErrorMappingInterceptor,
    Lifecycle,
    MalformedRequestInterceptor,
)
from highpeaks_ml.config import AuthMode, ConfigError, Settings, read_setting_file
from highpeaks_ml.memory import keep_freed_memory
from highpeaks_ml.v1 import predict_pb2, registry_pb2, train_pb2

log = logging.getLogger("highpeaks_ml.server")

SERVING = health_pb2.HealthCheckResponse.SERVING
#: After the drain, how long grpc may still take to flush finished responses.
_FLUSH_S = 1.0
#: Request metadata (headers) allowed per call: room for a bearer token of
#: auth.MAX_TOKEN_CHARS and the usual headers; more is RESOURCE_EXHAUSTED.
MAX_METADATA_BYTES = 16 * 1024
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
#: How often TrainService's health follows the training backend's (a Ray cluster
#: may become unreachable and come back).
TRAINING_HEALTH_POLL_S = 2.0

#: Full names of the public services, from the generated descriptors.
PUBLIC_SERVICES: tuple[str, ...] = (
    train_pb2.DESCRIPTOR.services_by_name["TrainService"].full_name,
    predict_pb2.DESCRIPTOR.services_by_name["PredictService"].full_name,
    registry_pb2.DESCRIPTOR.services_by_name["ModelRegistryService"].full_name,
    # The Open Inference Protocol (its descriptors live in a private pool: docs/oip.md).
    oip_messages.SERVICE_NAME,
)
TRAIN_SERVICE = PUBLIC_SERVICES[0]


@dataclass
class App:
    """Everything the servicers share: settings and the domain services."""

    settings: Settings
    components: dict[str, Any] = field(default_factory=dict)
    closers: list[Any] = field(default_factory=list)
    #: What health reports as SERVING: start-up done, shutdown not begun (OIP ServerReady).
    ready: bool = False

    async def start(self) -> None:
        """Start-up work that must finish before the server reports SERVING."""
        for component in self.components.values():
            start = getattr(component, "start", None)
            if start is not None:
                result = start()
                if asyncio.iscoroutine(result):
                    await result

    async def shutdown(self) -> None:
        """Stop accepting new work (called when shutdown begins)."""
        for component in self.components.values():
            begin = getattr(component, "begin_shutdown", None)
            if begin is not None:
                result = begin()
                if asyncio.iscoroutine(result):
                    await result

    async def close(self) -> None:
        """Release resources (called after the gRPC server stopped)."""
        for component in reversed(list(self.components.values())):
            close = getattr(component, "close", None)
            if close is not None:
                try:
                    result = close()
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:
                    log.exception("error while closing %s", type(component).__name__)


class Server:
    """A started gRPC server with its app, health servicer and bound port."""

    def __init__(
        self,
        grpc_server: aio.Server,
        app: App,
        health_servicer: Any,
        port: int,
        *,
        lifecycle: Lifecycle | None = None,
        metrics: metrics_mod.Metrics | None = None,
        health_server: aio.Server | None = None,
    ) -> None:
        self.grpc_server = grpc_server
        self.app = app
        self.health = health_servicer
        self.port = port
        self.lifecycle = lifecycle or Lifecycle()
        self.metrics = metrics
        #: The plaintext health-only server (``health_port``), if any.
        self.health_server = health_server
        self._stopping = False
        self._stopped = asyncio.Event()
        self._training_health: asyncio.Task[None] | None = None

    async def set_serving(self, serving: bool) -> None:
        """Set the overall and per-service health status."""
        status = SERVING if serving else NOT_SERVING
        self.app.ready = serving
        for name in ("", *PUBLIC_SERVICES):
            await self.health.set(name, status)
        if serving:
            await self._set_training_health()

    async def _set_training_health(self, last: str | None = None) -> str | None:
        """TrainService NOT_SERVING while the training backend cannot run jobs (a Ray
        cluster unreachable); the server and the other services are not affected."""
        jobs = self.app.components.get("jobs")
        problem = jobs.health() if jobs is not None else None
        if self.app.ready and not self._stopping and problem != last:
            await self.health.set(TRAIN_SERVICE, SERVING if problem is None else NOT_SERVING)
            if problem is not None:
                log.warning("TrainService NOT_SERVING: %s", problem)
            elif last is not None:
                log.info("TrainService SERVING again")
        return problem

    def follow_training_health(self) -> None:
        """Start re-checking the training backend's health every few seconds."""

        async def follow() -> None:
            last = await self._set_training_health()
            while not self._stopping:
                await asyncio.sleep(TRAINING_HEALTH_POLL_S)
                last = await self._set_training_health(last)

        self._training_health = asyncio.create_task(follow(), name="training-health")

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop (docs/security.md, "Graceful drain").

        NOT_SERVING at once; keep serving for ``drain_delay_s`` while load
        balancers stop sending new connections; then grpc's stop sends GOAWAY
        (clients open new calls elsewhere) while the RPCs in flight finish,
        all within ``grace`` seconds; what is still running then is cancelled.
        """
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        if self._training_health is not None:
            self._training_health.cancel()
        settings = self.app.settings
        grace = settings.grace_period_s if grace is None else grace
        log.info("shutting down", extra={"grace_s": grace, "delay_s": settings.drain_delay_s})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        delay = min(settings.drain_delay_s, grace)
        if delay <= 0:
            # From here a call that still reaches a handler gets UNAVAILABLE.
            self.lifecycle.draining = True
        self.app.ready = False
        await self.health.enter_graceful_shutdown()  # readiness fails: no new traffic
        if delay > 0:
            # Still answering everything: endpoints and load balancers take a
            # moment to stop routing new connections here.
            await asyncio.sleep(delay)
            self.lifecycle.draining = True
        await self.app.shutdown()
        # GOAWAY now: clients send new calls over a new connection (to another
        # replica behind a Service); calls in flight carry on. The listener
        # closes, so callers of this process alone get UNAVAILABLE.
        closing = loop.create_task(self.grpc_server.stop(max(0.0, deadline - loop.time())))
        if not await self.lifecycle.wait_idle(deadline - loop.time()):
            log.warning("grace period over with RPCs in flight: cancelling them")
        # What is left: health watches (which never end) and responses still
        # being flushed; a moment to flush, then grpc cancels the rest.
        await self.grpc_server.stop(min(max(0.0, deadline - loop.time()), _FLUSH_S))
        await closing
        if self.health_server is not None:
            await self.health_server.stop(0)
        await self.app.close()
        if self.metrics is not None:
            self.metrics.stop_http()
        self._stopped.set()
        log.info("stopped")

    async def wait_for_termination(self) -> None:
        """Block until the server has stopped."""
        await self.grpc_server.wait_for_termination()


def _build_app(settings: Settings) -> App:
    """Create the domain services (registry, training, serving) for ``settings``."""
    from highpeaks_ml.registry.factory import open_store

    app = App(settings)
    # The directory under --home, or S3 (--store s3://...): one choice for all three stores.
    stores = open_store(settings)
    app.components["registry"] = stores.models
    from highpeaks_ml.serving.loadcheck import LoadCheck

    # Every publish (import, training) first proves that onnxruntime loads and runs it.
    app.components["registry"].set_publish_check(LoadCheck(settings))
    from highpeaks_ml.training.datasets import DatasetStore

    app.components["datasets"] = DatasetStore(
        settings.home, settings.max_dataset_bytes, stores.datasets
    )
    from highpeaks_ml.serving.manager import ModelManager

    # Chooses the execution provider (logged; device=cuda fails here when unusable).
    app.components["models"] = ModelManager(settings, app.components["registry"])
    from highpeaks_ml.training.jobs import JobManager

    # Last: its start() may submit the demo job, which needs everything above.
    app.components["jobs"] = JobManager(
        settings, app.components["registry"], app.components["datasets"], records=stores.jobs
    )
    return app


def _add_servicers(server: Dispatcher, app: App) -> None:
    from highpeaks_ml.api.servicers import add_all

    add_all(server, app)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (and mTLS with a client CA) from the configured PEM files, or None."""
    if not settings.tls_cert_file or not settings.tls_key_file:
        return None
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = read_setting_file(settings.tls_cert_file, "tls_cert_file")
    key = read_setting_file(settings.tls_key_file, "tls_key_file")
    # Check the pair here: grpc would only fail at the first handshake.
    try:
        leaf = x509.load_pem_x509_certificate(cert)
    except ValueError:
        raise ConfigError("tls_cert_file: not a PEM certificate") from None
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        raise ConfigError("tls_key_file: not an unencrypted PEM private key") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if private.public_key().public_bytes(enc, pub) != leaf.public_key().public_bytes(enc, pub):
        raise ConfigError("tls_key_file does not match the certificate in tls_cert_file")
    client_ca = None
    if settings.tls_client_ca_file:
        client_ca = read_setting_file(settings.tls_client_ca_file, "tls_client_ca_file")
        try:
            x509.load_pem_x509_certificates(client_ca)
        except ValueError:
            raise ConfigError("tls_client_ca_file: not PEM certificates") from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _warn_security(settings: Settings, tls: bool) -> None:
    # One line, at start-up, loud enough to be noticed in any log viewer.
    if settings.auth_mode == AuthMode.OFF:
        if _is_loopback(settings.host):
            log.warning(
                "AUTHENTICATION IS OFF (auth_mode=off): any local process may train, "
                "predict, change and delete models; set HIGHPEAKS_ML_AUTH_MODE=jwt outside "
                "development"
            )
        else:
            log.error(
                "!!! AUTHENTICATION IS OFF on non-loopback host %s: ANYONE who can reach "
                "this port may train, predict, change and delete models; set "
                "HIGHPEAKS_ML_AUTH_MODE=jwt !!!",
                settings.host,
            )
    elif not tls and not _is_loopback(settings.host):
        log.warning("auth_mode=jwt without TLS: bearer tokens cross the network in plaintext")


def _address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def connection_options(settings: Settings) -> list[tuple[str, int]]:
    """grpc channel arguments for connection age and client keepalive (docs/deploy.md)."""
    options = [
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(settings.min_client_ping_interval_s)),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    if settings.max_connection_age_s > 0:
        options += [
            ("grpc.max_connection_age_ms", _ms(settings.max_connection_age_s)),
            ("grpc.max_connection_age_grace_ms", _ms(settings.max_connection_age_grace_s)),
        ]
    return options


def _ms(seconds: float) -> int:
    return max(1, min(2**31 - 1, round(seconds * 1000)))


async def create_server(settings: Settings) -> tuple[Server, int]:
    """Build, bind and start the server; return it and its bound port (non-blocking).

    Health answers NOT_SERVING until the app's start-up work (recovery,
    eager model loading, the demo model) is done. Unusable key or
    certificate files raise ``ConfigError`` before anything is bound.
    """
    options = [
        ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
        ("grpc.max_send_message_length", settings.max_send_message_bytes),
        # Do not let a second server silently share the port (SO_REUSEPORT).
        ("grpc.so_reuseport", 0),
        # One metadata limit, not grpc's soft/hard pair between which requests
        # are refused at random (a 9 KB bearer token failed one call in eight).
        ("grpc.max_metadata_size", MAX_METADATA_BYTES),
        ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
        *connection_options(settings),
    ]
    auth_interceptor = build_auth_interceptor(settings)
    credentials = _server_credentials(settings)
    _warn_security(settings, tls=credentials is not None)
    metrics = metrics_mod.Metrics()
    metrics_mod.install(metrics)
    lifecycle = Lifecycle()
    default_subject = ANONYMOUS if auth_interceptor is None else NO_SUBJECT
    # The layers around every method, outermost first, applied once per method
    # by the dispatcher (no grpc interceptors: they cost per call; see
    # api/dispatch.py). The error mapping is outside authentication, so its
    # refusals are mapped, logged and counted like any other RPC outcome.
    # Without authentication the error mapping also refuses unparsable requests
    # (MalformedRequestInterceptor's job): one wrapper less per call.
    layers: list[HandlerLayer] = [
        ErrorMappingInterceptor(
            metrics,
            lifecycle,
            default_subject,
            settings.rpc_log,
            malformed=auth_interceptor is None,
        )
    ]
    # Decided once: with tracing off (the default) no tracing code runs per call.
    tracing = tracing_mod.setup()
    if tracing is not None:
        # Outermost: the span covers authentication and the error mapping too.
        layers.insert(0, tracing.interceptor())
    if auth_interceptor is not None:
        layers.append(auth_interceptor)
        # Innermost: unparsable request bytes become INVALID_ARGUMENT, not UNKNOWN,
        # after the caller was authenticated.
        layers.append(MalformedRequestInterceptor())
    grpc_server = aio.server(
        options=options,
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    dispatcher = Dispatcher(layers)
    health_servicer = AsyncHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, dispatcher)
    app = _build_app(settings)
    if auth_interceptor is not None:
        # Last, so its start (the first JWKS fetch, which readiness waits
        # for) comes after model loading; it also stops the key watching.
        app.components["auth"] = auth_interceptor.authenticator
    if tracing is not None:
        app.components["tracing"] = tracing  # closed (spans flushed) at shutdown
        # Training jobs traced by stage, in the StartTraining call's trace.
        app.components["jobs"].tracer = tracing.jobs()
    _add_servicers(dispatcher, app)
    service_names = (
        *PUBLIC_SERVICES,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    # A pool of its own: the OIP's descriptors are not in protobuf's default pool.
    pool = oip_messages.reflection_pool(service_names)
    # What enable_server_reflection does for an aio server, on the dispatcher.
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        AsyncReflectionServicer(service_names, pool=pool), dispatcher
    )
    dispatcher.install(grpc_server)
    address = _address(settings.host, settings.port)
    if credentials is not None:
        port = grpc_server.add_secure_port(address, credentials)
    else:
        port = grpc_server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    health_server = None
    if settings.health_port:
        health_server = _health_only_server(settings, health_servicer, metrics)
    server = Server(
        grpc_server,
        app,
        health_servicer,
        port,
        lifecycle=lifecycle,
        metrics=metrics,
        health_server=health_server,
    )
    if settings.metrics_port:
        try:
            metrics.serve_http(settings.host, settings.metrics_port)
        except OSError as exc:
            raise ConfigError(f"metrics_port {settings.metrics_port}: {exc.strerror}") from None
    await server.set_serving(False)
    await grpc_server.start()
    if health_server is not None:
        await health_server.start()
        log.info("plaintext health port", extra={"health_port": settings.health_port})
    log.info(
        "listening",
        extra={
            "address": f"{settings.host}:{port}",
            "version": __version__,
            "tls": "mutual" if settings.tls_client_ca_file else bool(credentials),
            "auth": settings.auth_mode.value,
        },
    )
    await app.start()
    await server.set_serving(True)
    server.follow_training_health()
    log.info("ready")
    return server, port


def _health_only_server(
    settings: Settings, health_servicer: Any, metrics: metrics_mod.Metrics
) -> aio.Server:
    """A plaintext server with grpc.health.v1 only, for Kubernetes' native gRPC probes.

    The kubelet's gRPC probe cannot speak TLS, so with TLS on the probes
    target this port; it answers the same health statuses as the main port,
    nothing else (no reflection, no services, tiny messages).
    """
    server = aio.server(
        options=[
            ("grpc.max_receive_message_length", 4096),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=64,
    )
    dispatcher = Dispatcher(
        [ErrorMappingInterceptor(metrics, None, NO_SUBJECT), MalformedRequestInterceptor()]
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, dispatcher)
    dispatcher.install(server)
    address = _address(settings.host, settings.health_port)
    if server.add_insecure_port(address) == 0:
        raise OSError(f"could not bind {address}")
    return server


async def serve(settings: Settings) -> int:
    """Run the server until SIGTERM or SIGINT; return the exit code."""
    # Process-wide, so here (the process is a server) and not in create_server.
    allocator = keep_freed_memory(settings.keep_freed_memory_mb * 1024 * 1024)
    log.info("memory allocator: %s", allocator)
    server, _port = await create_server(settings)
    loop = asyncio.get_running_loop()
    stop_task: list[asyncio.Task[None]] = []

    def _on_signal(signum: int) -> None:
        log.info("received %s", signal.Signals(signum).name)
        if not stop_task:
            stop_task.append(loop.create_task(server.stop()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, sig)
    await server.wait_for_termination()
    if stop_task:
        await stop_task[0]
    return 0


__all__ = [
    "PUBLIC_SERVICES",
    "App",
    "Server",
    "create_server",
    "serve",
]
