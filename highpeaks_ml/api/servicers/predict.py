"""Servicer of highpeaks_ml.v1.PredictService."""

from __future__ import annotations

from typing import TYPE_CHECKING

from highpeaks_ml.v1 import predict_pb2_grpc

if TYPE_CHECKING:
    from highpeaks_ml.api.server import App


class PredictServicer(predict_pb2_grpc.PredictServiceServicer):
    """PredictService: every RPC not overridden here answers UNIMPLEMENTED."""

    def __init__(self, app: App) -> None:
        self.app = app
