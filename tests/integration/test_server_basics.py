"""The foundation, through real channels: health, reflection, shutdown, error mapping."""

from __future__ import annotations

import signal
import subprocess

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from highpeaks_ml.api.server import PUBLIC_SERVICES
from tests.conftest import grpcurl

ALL_SERVICES = {
    *PUBLIC_SERVICES,
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
}


def _check(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_overall_and_per_service(channel):
    assert _check(channel, "") == health_pb2.HealthCheckResponse.SERVING
    for name in PUBLIC_SERVICES:
        assert _check(channel, name) == health_pb2.HealthCheckResponse.SERVING


def test_health_unknown_service_is_not_found(channel):
    with pytest.raises(grpc.RpcError) as err:
        _check(channel, "nope")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def _reflection_services(channel: grpc.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    return {s.name for r in responses for s in r.list_services_response.service}


def test_reflection_lists_every_service(channel):
    assert _reflection_services(channel) == ALL_SERVICES


def test_reflection_describes_public_files(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    req = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="highpeaks_ml.v1.PredictService"
    )
    (resp,) = list(stub.ServerReflectionInfo(iter([req]), timeout=5))
    names = set()
    for raw in resp.file_descriptor_response.file_descriptor_proto:
        fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
        names.add(fd.name)
    assert "highpeaks_ml/v1/predict.proto" in names


def test_grpcurl_list_describe_and_health(server):
    target = server.target
    out = subprocess.run(
        [grpcurl(), "-plaintext", target, "list"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    assert set(out) == ALL_SERVICES
    described = subprocess.run(
        [grpcurl(), "-plaintext", target, "describe", "highpeaks_ml.v1.TrainService"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "rpc StartTraining" in described and "rpc WatchTrainingJob" in described
    health = subprocess.run(
        [grpcurl(), "-plaintext", "-d", '{"service": ""}', target, "grpc.health.v1.Health/Check"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert '"status": "SERVING"' in health


def test_request_id_is_echoed_per_call(channel):
    # Several calls of one method: the interceptors reuse one wrapped handler
    # per method, and the id must still come from each call's own metadata.
    stub = health_pb2_grpc.HealthStub(channel)
    generated = set()
    for rid in ("abc-123", "def-456", None, "abc-123", None):
        _, call = stub.Check.with_call(
            health_pb2.HealthCheckRequest(service=""),
            metadata=(("x-request-id", rid),) if rid else None,
            timeout=5,
        )
        echoed = dict(call.trailing_metadata())["x-request-id"]
        if rid:
            assert echoed == rid
        else:
            assert len(echoed) == 32 and echoed not in generated
            generated.add(echoed)


def test_sigterm_goes_not_serving_then_exits_zero(server_process):
    proc = server_process()
    channel = grpc.insecure_channel(proc.target)
    stub = health_pb2_grpc.HealthStub(channel)
    stream = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
    assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
    proc.proc.send_signal(signal.SIGTERM)
    statuses = []
    try:
        for msg in stream:
            statuses.append(msg.status)
    except grpc.RpcError:
        pass
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
    assert proc.proc.wait(timeout=30) == 0
    out = proc.output()
    assert "received SIGTERM" in out and "stopped" in out
    channel.close()


def test_rpc_log_errors_keeps_only_the_calls_that_failed(server_process):
    proc = server_process("--rpc-log", "errors")
    list_models = "/highpeaks_ml.v1.ModelRegistryService/ListModels"
    with grpc.insecure_channel(proc.target) as channel:
        call = channel.unary_unary(list_models)
        call(b"", timeout=10)  # OK: not logged
        with pytest.raises(grpc.RpcError) as err:
            call(b"\xff", timeout=10)  # malformed: INVALID_ARGUMENT, logged
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert proc.terminate() == 0
    lines = [ln for ln in proc.output().splitlines() if " rpc method=" in ln]
    assert len(lines) == 1 and "code=INVALID_ARGUMENT" in lines[0], lines
