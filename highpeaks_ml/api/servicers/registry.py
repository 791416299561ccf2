"""Servicer of highpeaks_ml.v1.ModelRegistryService."""

from __future__ import annotations

from typing import TYPE_CHECKING

from highpeaks_ml.v1 import registry_pb2_grpc

if TYPE_CHECKING:
    from highpeaks_ml.api.server import App


class RegistryServicer(registry_pb2_grpc.ModelRegistryServiceServicer):
    """ModelRegistryService: every RPC not overridden here answers UNIMPLEMENTED."""

    def __init__(self, app: App) -> None:
        self.app = app
