"""Thin servicers: convert protobuf to domain calls and back, nothing else."""

from __future__ import annotations

from typing import TYPE_CHECKING

from highpeaks_ml.api import oip_messages
from highpeaks_ml.api.servicers import oip
from highpeaks_ml.api.servicers.predict import PredictServicer
from highpeaks_ml.api.servicers.registry import RegistryServicer
from highpeaks_ml.api.servicers.train import TrainServicer
from highpeaks_ml.v1 import predict_pb2_grpc, registry_pb2_grpc, train_pb2_grpc

if TYPE_CHECKING:
    from highpeaks_ml.api.dispatch import Dispatcher
    from highpeaks_ml.api.server import App


def add_all(server: Dispatcher, app: App) -> None:
    """Register every public servicer on ``server`` (the server's ``Dispatcher``)."""
    train_pb2_grpc.add_TrainServiceServicer_to_server(TrainServicer(app), server)
    predict_pb2_grpc.add_PredictServiceServicer_to_server(PredictServicer(app), server)
    registry_pb2_grpc.add_ModelRegistryServiceServicer_to_server(RegistryServicer(app), server)
    server.add_registered_method_handlers(oip_messages.SERVICE_NAME, oip.method_handlers(app))
