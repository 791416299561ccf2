"""Servicer of highpeaks_ml.v1.TrainService."""

from __future__ import annotations

from typing import TYPE_CHECKING

from highpeaks_ml.v1 import train_pb2_grpc

if TYPE_CHECKING:
    from highpeaks_ml.api.server import App


class TrainServicer(train_pb2_grpc.TrainServiceServicer):
    """TrainService: every RPC not overridden here answers UNIMPLEMENTED."""

    def __init__(self, app: App) -> None:
        self.app = app
