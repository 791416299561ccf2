"""A Python client over the generated stubs.

>>> from highpeaks_ml.client import Client
>>> with Client("127.0.0.1:50051") as c:
...     c.health()
'SERVING'

Every method raises ``grpc.RpcError`` on a failed call (``.code()`` and
``.details()`` say why).

Against a server with ``auth_mode=jwt`` pass ``token=`` (sent as
``authorization: Bearer <token>`` metadata on every call); against a TLS
server pass ``tls_ca=`` (the CA that signed the server certificate) or
``tls=True`` for the system roots, and ``tls_cert=``/``tls_key=`` for mTLS.
"""

from __future__ import annotations

from pathlib import Path
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
        token: str | None = None,
        tls: bool = False,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        if token:
            metadata = (*metadata, ("authorization", f"Bearer {token}"))
        self.metadata = metadata
        self._own_channel = channel is None
        options = options or [
            ("grpc.max_receive_message_length", 256 * 1024 * 1024),
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
        ]
        if channel is None and (tls or tls_ca or tls_cert):
            if bool(tls_cert) != bool(tls_key):
                raise ValueError("tls_cert and tls_key go together")
            credentials = grpc.ssl_channel_credentials(
                root_certificates=Path(tls_ca).read_bytes() if tls_ca else None,
                private_key=Path(tls_key).read_bytes() if tls_key else None,
                certificate_chain=Path(tls_cert).read_bytes() if tls_cert else None,
            )
            channel = grpc.secure_channel(target, credentials, options=options)
        self.channel = channel or grpc.insecure_channel(target, options=options)
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
