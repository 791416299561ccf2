"""Graceful drain on SIGTERM: NOT_SERVING, new RPCs UNAVAILABLE, in-flight RPCs finish,
exit 0 before the grace period ends."""

from __future__ import annotations

import asyncio
import hashlib
import queue
import signal
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from highpeaks_ml.api.interceptors import ErrorMappingInterceptor, Lifecycle
from highpeaks_ml.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from tests.support import serving_models as sm
from tests.support.security import free_port

GRACE_S = 30
LIST_MODELS = "/highpeaks_ml.v1.ModelRegistryService/ListModels"
IMPORT = "/highpeaks_ml.v1.ModelRegistryService/ImportModel"
_END = object()


def _requests(q: queue.Queue) -> Iterator[reflection_pb2.ServerReflectionRequest]:
    """A request stream the test feeds one message at a time."""
    while True:
        item = q.get()
        if item is _END:
            return
        yield item


def _wait_draining(channel: grpc.Channel) -> None:
    """Until health says NOT_SERVING (or the server no longer takes calls)."""
    stub = health_pb2_grpc.HealthStub(channel)
    for _ in range(600):
        try:
            status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        except grpc.RpcError as err:
            # UNAVAILABLE once the connection is closed; CANCELLED for a call
            # that reached the server in the instant grpc's stop began (grpc's
            # own behaviour, docs/security.md).
            assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
            return
        if status == health_pb2.HealthCheckResponse.NOT_SERVING:
            return
        time.sleep(0.05)  # the signal handler has not run yet: poll again (bounded)
    raise AssertionError("the server never started draining")


def test_in_flight_stream_finishes_new_calls_refused_exit_zero(server_process):
    proc = server_process("--grace-period-s", str(GRACE_S))
    channel = grpc.insecure_channel(proc.target)
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    q: queue.Queue = queue.Queue()
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = stub.ServerReflectionInfo(_requests(q), timeout=120)
    q.put(ask)
    assert next(responses).list_services_response.service  # in flight now

    proc.proc.send_signal(signal.SIGTERM)
    _wait_draining(channel)
    time.sleep(0.3)  # past the instant grpc's stop begins (see _wait_draining)

    # A new RPC is refused, on this channel (GOAWAY: no new calls on this
    # connection, and the listener is closed) and on a new one.
    for ch in (channel, grpc.insecure_channel(proc.target)):
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary(LIST_MODELS)(b"", timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE

    # The RPC in flight still gets answers, then ends normally.
    q.put(ask)
    assert next(responses).list_services_response.service
    q.put(_END)
    assert list(responses) == []
    assert responses.code() == grpc.StatusCode.OK

    # Nothing left in flight: the process exits well before the grace period.
    assert proc.proc.wait(timeout=GRACE_S - 5) == 0
    out = proc.output()
    assert "received SIGTERM" in out and "stopped" in out
    channel.close()


def _in_flight(metrics_port: int, method: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "highpeaks_ml_rpcs_in_flight" and sample.labels["method"] == method:
                return sample.value
    return 0.0


def test_registry_publish_in_flight_completes_and_survives_restart(server_process, home):
    onnx = sm.iris_logreg().onnx
    metrics_port = free_port()
    proc = server_process("--grace-period-s", str(GRACE_S), "--metrics-port", str(metrics_port))
    channel = grpc.insecure_channel(proc.target)
    stub = registry_pb2_grpc.ModelRegistryServiceStub(channel)
    q: queue.Queue = queue.Queue()
    info = registry_pb2.ImportModelInfo(model_name="drained", task=common_pb2.TASK_CLASSIFICATION)
    q.put(registry_pb2.ImportModelRequest(info=info))
    q.put(registry_pb2.ImportModelRequest(chunk=onnx[:100]))
    future = stub.ImportModel.future(_requests(q), timeout=120)
    # The import is being handled (the server counts it in flight) ...
    for _ in range(600):
        if _in_flight(metrics_port, IMPORT) == 1:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the import never reached the server")

    # ... when the server is told to stop.
    proc.proc.send_signal(signal.SIGTERM)
    _wait_draining(channel)
    time.sleep(0.3)
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary(LIST_MODELS)(b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE

    # The rest of the upload arrives during the drain and the publish completes.
    q.put(registry_pb2.ImportModelRequest(chunk=onnx[100:]))
    q.put(_END)
    version = future.result(timeout=60)
    assert (version.model_name, version.version) == ("drained", 1)
    assert proc.proc.wait(timeout=GRACE_S - 5) == 0
    channel.close()

    # Acknowledged means durable: a new server on the same home serves it.
    again = server_process(home_dir=home)
    with grpc.insecure_channel(again.target) as ch:
        got = registry_pb2_grpc.ModelRegistryServiceStub(ch).GetModelVersion(
            registry_pb2.GetModelVersionRequest(
                model=common_pb2.ModelRef(name="drained", version=1)
            ),
            timeout=10,
        )
        assert got.sha256 == hashlib.sha256(onnx).hexdigest()


def test_drain_delay_keeps_serving_while_not_serving_then_refuses(server_process):
    """With --drain-delay-s the server answers normally (health NOT_SERVING)
    while load balancers catch up, then refuses new calls and exits."""
    delay = 2.0
    proc = server_process("--grace-period-s", str(GRACE_S), "--drain-delay-s", str(delay))
    channel = grpc.insecure_channel(proc.target)
    health = health_pb2_grpc.HealthStub(channel)
    list_models = channel.unary_unary(LIST_MODELS)
    list_models(b"", timeout=5)
    sent = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    _wait_draining(channel)
    assert time.monotonic() - sent < delay / 2, "NOT_SERVING must come at once"
    # Within the delay: NOT_SERVING, yet calls are still answered.
    status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    list_models(b"", timeout=5)
    # After it: refused, and the process exits long before the grace period.
    time.sleep(max(0.0, sent + delay + 0.5 - time.monotonic()))
    with pytest.raises(grpc.RpcError) as err:
        list_models(b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert proc.proc.wait(timeout=GRACE_S - 5) == 0
    channel.close()


def test_sigterm_with_nothing_in_flight_exits_at_once(server_process):
    proc = server_process("--grace-period-s", str(GRACE_S))
    # Far below the grace period: the server does not wait out the grace with no work.
    assert proc.terminate(signal.SIGTERM, timeout=GRACE_S - 10) == 0


async def _drain_codes() -> tuple[grpc.StatusCode, str, int]:
    """An in-process server (main-thread loop) whose lifecycle is draining."""
    lifecycle = Lifecycle()
    server = aio.server(interceptors=[ErrorMappingInterceptor(lifecycle=lifecycle)])
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)

    async def echo(request: bytes, context: aio.ServicerContext) -> bytes:
        return request

    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            assert await ch.unary_unary("/test.Echo/Echo")(b"x", timeout=5) == b"x"
            lifecycle.draining = True
            try:
                await ch.unary_unary("/test.Echo/Echo")(b"x", timeout=5)
            except aio.AioRpcError as err:
                code, details = err.code(), err.details() or ""
            else:
                raise AssertionError("a new call was accepted while draining")
            status = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
            return code, details, status.status
    finally:
        await server.stop(0)


def test_draining_flag_refuses_new_calls_but_not_health():
    code, details, health_status = asyncio.run(_drain_codes())
    assert code == grpc.StatusCode.UNAVAILABLE and "shutting down" in details
    assert health_status == health_pb2.HealthCheckResponse.SERVING  # health still answers
