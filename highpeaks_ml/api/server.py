"""The gRPC server: composition root, health, reflection, graceful shutdown.

``create_server(settings)`` builds and starts the server without blocking and
returns it with its bound port (``--port 0`` picks a free one). ``serve``
runs it until SIGTERM/SIGINT: health goes NOT_SERVING first, new work is
refused, in-flight RPCs get ``grace_period_s`` to finish, then it exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from typing import Any

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer as AsyncHealthServicer
from grpc_reflection.v1alpha import reflection

from highpeaks_ml import __version__
from highpeaks_ml.api.interceptors import ErrorMappingInterceptor
from highpeaks_ml.config import Settings
from highpeaks_ml.v1 import predict_pb2, registry_pb2, train_pb2

log = logging.getLogger("highpeaks_ml.server")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

#: Full names of the public services, from the generated descriptors.
PUBLIC_SERVICES: tuple[str, ...] = (
    train_pb2.DESCRIPTOR.services_by_name["TrainService"].full_name,
    predict_pb2.DESCRIPTOR.services_by_name["PredictService"].full_name,
    registry_pb2.DESCRIPTOR.services_by_name["ModelRegistryService"].full_name,
)


@dataclass
class App:
    """Everything the servicers share: settings and the domain services."""

    settings: Settings
    components: dict[str, Any] = field(default_factory=dict)
    closers: list[Any] = field(default_factory=list)

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

    def __init__(self, grpc_server: aio.Server, app: App, health_servicer: Any, port: int) -> None:
        self.grpc_server = grpc_server
        self.app = app
        self.health = health_servicer
        self.port = port
        self._stopping = False
        self._stopped = asyncio.Event()

    async def set_serving(self, serving: bool) -> None:
        """Set the overall and per-service health status."""
        status = SERVING if serving else NOT_SERVING
        for name in ("", *PUBLIC_SERVICES):
            await self.health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, refuse new work, drain for ``grace`` s, close."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        grace = self.app.settings.grace_period_s if grace is None else grace
        log.info("shutting down", extra={"grace_s": grace})
        await self.health.enter_graceful_shutdown()
        await self.app.shutdown()
        await self.grpc_server.stop(grace)
        await self.app.close()
        self._stopped.set()
        log.info("stopped")

    async def wait_for_termination(self) -> None:
        """Block until the server has stopped."""
        await self.grpc_server.wait_for_termination()


def _build_app(settings: Settings) -> App:
    """Create the domain services (registry, training, serving) for ``settings``."""
    app = App(settings)
    settings.home.mkdir(parents=True, exist_ok=True)
    return app


def _add_servicers(server: aio.Server, app: App) -> None:
    from highpeaks_ml.api.servicers import add_all

    add_all(server, app)


async def create_server(settings: Settings) -> tuple[Server, int]:
    """Build, bind and start the server; return it and its bound port (non-blocking).

    Health answers NOT_SERVING until the app's start-up work (recovery,
    eager model loading, the demo model) is done.
    """
    options = [
        ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
        ("grpc.max_send_message_length", settings.max_send_message_bytes),
        # Do not let a second server silently share the port (SO_REUSEPORT).
        ("grpc.so_reuseport", 0),
    ]
    grpc_server = aio.server(
        interceptors=[ErrorMappingInterceptor()],
        options=options,
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    health_servicer = AsyncHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    app = _build_app(settings)
    _add_servicers(grpc_server, app)
    service_names = (
        *PUBLIC_SERVICES,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(service_names, grpc_server)
    address = f"{settings.host}:{settings.port}"
    if ":" in settings.host and not settings.host.startswith("["):
        address = f"[{settings.host}]:{settings.port}"
    port = grpc_server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    server = Server(grpc_server, app, health_servicer, port)
    await server.set_serving(False)
    await grpc_server.start()
    log.info("listening", extra={"address": f"{settings.host}:{port}", "version": __version__})
    await app.start()
    await server.set_serving(True)
    log.info("ready")
    return server, port


async def serve(settings: Settings) -> int:
    """Run the server until SIGTERM or SIGINT; return the exit code."""
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
