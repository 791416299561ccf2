"""Thin servicers: convert protobuf to domain calls and back, nothing else."""

from __future__ import annotations

from typing import TYPE_CHECKING

from grpc import aio

from highpeaks_ml.api.servicers import oip
from highpeaks_ml.api.servicers.predict import PredictServicer
from highpeaks_ml.api.servicers.registry import RegistryServicer
from highpeaks_ml.api.servicers.train import TrainServicer
from highpeaks_ml.v1 import predict_pb2_grpc, registry_pb2_grpc, train_pb2_grpc

if TYPE_CHECKING:
    from highpeaks_ml.api.server import App


def add_all(server: aio.Server, app: App) -> None:
    """Register every public servicer on ``server``."""
    train_pb2_grpc.add_TrainServiceServicer_to_server(TrainServicer(app), server)
    predict_pb2_grpc.add_PredictServiceServicer_to_server(PredictServicer(app), server)
    registry_pb2_grpc.add_ModelRegistryServiceServicer_to_server(RegistryServicer(app), server)
    server.add_generic_rpc_handlers((oip.generic_handler(app),))
