"""The Python client retries idempotent calls that fail UNAVAILABLE (grpc retry policy)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from highpeaks_ml.client import IDEMPOTENT_METHODS, Client, service_config
from highpeaks_ml.registry.local import LocalModelStore
from highpeaks_ml.v1 import predict_pb2, registry_pb2, train_pb2
from tests.conftest import ServerProcess
from tests.support import serving_models as sm

PREDICT_UNAVAILABLE = re.compile(
    r"rpc method=/highpeaks_ml\.v1\.PredictService/Predict code=UNAVAILABLE"
)


def _broken_model(home: Path) -> None:
    """A version whose file no longer matches its sha256: Predict answers UNAVAILABLE."""
    store = LocalModelStore(home)
    store.start()
    sm.publish_broken(store, home)


def _attempts(server: ServerProcess, before: int, want: int) -> int:
    # The server writes its log line after the answer: poll briefly.
    for _ in range(100):
        seen = len(PREDICT_UNAVAILABLE.findall(server.output())) - before
        if seen >= want:
            break
        time.sleep(0.05)
    return seen


def test_unavailable_predictions_are_retried_writes_are_not(
    home: Path, server_process: Callable[..., ServerProcess]
) -> None:
    _broken_model(home)
    server = server_process()
    X = sm.iris_logreg().X[:2]
    with Client(server.target) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.predict("broken", X)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _attempts(server, 0, 4) == 4  # the policy's maxAttempts
    with Client(server.target, retries=False) as client, pytest.raises(grpc.RpcError):
        client.predict("broken", X)
    assert _attempts(server, 4, 1) == 1


def test_the_retry_list_names_real_idempotent_methods_only() -> None:
    services = {
        "highpeaks_ml.v1.PredictService": predict_pb2.DESCRIPTOR.services_by_name["PredictService"],
        "highpeaks_ml.v1.ModelRegistryService": registry_pb2.DESCRIPTOR.services_by_name[
            "ModelRegistryService"
        ],
        "highpeaks_ml.v1.TrainService": train_pb2.DESCRIPTOR.services_by_name["TrainService"],
    }
    for service, methods in IDEMPOTENT_METHODS.items():
        if service in services:
            known = {m.name for m in services[service].methods}
            assert set(methods) <= known, (service, set(methods) - known)
    retried = {m for methods in IDEMPOTENT_METHODS.values() for m in methods}
    # Anything that creates or removes state could apply twice.
    for write in (
        "ImportModel",
        "DeleteModelVersion",
        "DeleteAlias",
        "StartTraining",
        "UploadDataset",
        "CancelTrainingJob",
    ):
        assert write not in retried
    assert '"retryableStatusCodes": ["UNAVAILABLE"]' in service_config()
