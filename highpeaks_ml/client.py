"""A Python client over the generated stubs.

>>> from highpeaks_ml.client import Client
>>> with Client("127.0.0.1:50051") as c:
...     c.health()
'SERVING'

Every method raises ``grpc.RpcError`` on a failed call (``.code()`` and
``.details()`` say why).
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from highpeaks_ml.v1 import predict_pb2_grpc, registry_pb2_grpc, train_pb2_grpc


class Client:
    """Synchronous client of the High Peaks ML services."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        timeout: float | None = 30.0,
        channel: grpc.Channel | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
        options: list[tuple[str, Any]] | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.metadata = metadata
        self._own_channel = channel is None
        self.channel = channel or grpc.insecure_channel(
            target,
            options=options
            or [
                ("grpc.max_receive_message_length", 256 * 1024 * 1024),
                ("grpc.max_send_message_length", 256 * 1024 * 1024),
            ],
        )
        self.train = train_pb2_grpc.TrainServiceStub(self.channel)
        self.predictor = predict_pb2_grpc.PredictServiceStub(self.channel)
        self.registry = registry_pb2_grpc.ModelRegistryServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        """Close the channel (when this client created it)."""
        if self._own_channel:
            self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _kw(self, timeout: float | None = None) -> dict[str, Any]:
        return {"timeout": timeout or self.timeout, "metadata": self.metadata}

    def health(self, service: str = "") -> str:
        """The grpc.health.v1 status name of ``service`` ('' = the whole server)."""
        resp = self._health.Check(health_pb2.HealthCheckRequest(service=service), **self._kw())
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))
