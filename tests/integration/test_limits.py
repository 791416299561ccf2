"""Transport limits: message sizes (compressed or not), concurrent RPCs.

Each refusal is RESOURCE_EXHAUSTED and leaves the same channel usable.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import ServerProcess

LIMIT = 1024
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def limited(tmp_path_factory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("limits") / "home"
    home.mkdir()
    proc = ServerProcess(
        home,
        "--max-receive-message-bytes",
        str(LIMIT),
        "--max-send-message-bytes",
        str(LIMIT),
        "--max-concurrent-rpcs",
        "2",
    )
    yield proc
    proc.stop()


@pytest.fixture
def chan(limited) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(limited.target) as ch:
        yield ch


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def unknown_field_message(size: int, fill: bytes = b"z") -> bytes:
    """A valid protobuf encoding of exactly ``size`` bytes: one unknown bytes field 1000.

    Any request message accepts it (unknown fields are kept, not refused), so
    it probes the transport limit of any method.
    """
    tag = _varint(1000 << 3 | 2)
    for body in range(size, 0, -1):
        total = len(tag) + len(_varint(body)) + body
        if total == size:
            return tag + _varint(body) + fill * body
    raise AssertionError(size)


def _check(channel: grpc.Channel, service: str = "", **kw) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10, **kw).status


def test_message_at_the_limit_passes_one_byte_over_is_refused(chan):
    at_limit = health_pb2.HealthCheckRequest(service="x" * (LIMIT - 3))
    assert at_limit.ByteSize() == LIMIT
    with pytest.raises(grpc.RpcError) as err:
        _check(chan, at_limit.service)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # read and answered
    over = health_pb2.HealthCheckRequest(service="x" * (LIMIT - 2))
    assert over.ByteSize() == LIMIT + 1
    with pytest.raises(grpc.RpcError) as err:
        _check(chan, over.service)
    assert err.value.code() == EXHAUSTED
    assert _check(chan) == SERVING  # the same channel serves the next call


@pytest.mark.parametrize(
    "method",
    [
        "/highpeaks_ml.v1.PredictService/Predict",
        "/highpeaks_ml.v1.ModelRegistryService/ListModels",
        "/highpeaks_ml.v1.TrainService/StartTraining",
    ],
)
def test_one_byte_over_on_unary_methods(chan, method):
    payload = unknown_field_message(LIMIT + 1)
    assert len(payload) == LIMIT + 1
    with pytest.raises(grpc.RpcError) as err:
        chan.unary_unary(method)(payload, timeout=10)
    assert err.value.code() == EXHAUSTED
    assert _check(chan) == SERVING


def test_one_byte_over_in_the_middle_of_a_stream(chan):
    stub = reflection_pb2_grpc.ServerReflectionStub(chan)
    good = reflection_pb2.ServerReflectionRequest(list_services="")
    over = reflection_pb2.ServerReflectionRequest(host="h" * (LIMIT - 4), list_services="")
    assert over.ByteSize() == LIMIT + 1
    responses = stub.ServerReflectionInfo(iter([good, over]), timeout=10)
    assert next(responses).list_services_response.service  # the first one is answered
    with pytest.raises(grpc.RpcError) as err:
        list(responses)
    assert err.value.code() == EXHAUSTED
    assert _check(chan) == SERVING


@pytest.mark.parametrize("size", [LIMIT + 1, 100 * LIMIT, 10_000 * LIMIT])
def test_gzip_cannot_inflate_past_the_limit(chan, size):
    request = health_pb2.HealthCheckRequest(service="a" * size)
    # Compressed, this is far below the limit: only the decompressed size counts.
    with pytest.raises(grpc.RpcError) as err:
        _check(chan, request.service, compression=grpc.Compression.Gzip)
    assert err.value.code() == EXHAUSTED
    assert _check(chan, compression=grpc.Compression.Gzip) == SERVING
    assert _check(chan) == SERVING


def test_response_over_the_send_limit(chan, limited):
    stub = reflection_pb2_grpc.ServerReflectionStub(chan)
    req = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="highpeaks_ml.v1.TrainService"
    )
    with pytest.raises(grpc.RpcError) as err:
        list(stub.ServerReflectionInfo(iter([req]), timeout=10))
    assert err.value.code() == EXHAUSTED
    assert _check(chan) == SERVING
    assert "was never retrieved" not in limited.output()


def test_concurrent_rpcs_beyond_the_limit(chan):
    stub = health_pb2_grpc.HealthStub(chan)
    watches = [stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60) for _ in range(2)]
    try:
        # Each has answered, so both are in flight on the server.
        for w in watches:
            assert next(w).status == SERVING
        with pytest.raises(grpc.RpcError) as err:
            _check(chan)
        assert err.value.code() == EXHAUSTED
    finally:
        for w in watches:
            w.cancel()
    # Once the server has seen the cancellations, calls go through again.
    deadline = time.monotonic() + 30
    while True:
        try:
            assert _check(chan) == SERVING
            break
        except grpc.RpcError as exc:
            assert exc.code() == EXHAUSTED
            assert time.monotonic() < deadline, "the slots were never released"
            time.sleep(0.05)


def test_request_metadata_limit_is_one_sharp_limit(chan):
    for _ in range(20):  # below: always accepted (no random refusals) ...
        assert _check(chan, metadata=(("x-big", "x" * 12_000),)) == SERVING
    for _ in range(5):  # ... above: always RESOURCE_EXHAUSTED, the channel stays usable
        with pytest.raises(grpc.RpcError) as err:
            _check(chan, metadata=(("x-big", "x" * 17_000),))
        assert err.value.code() == EXHAUSTED
        assert _check(chan) == SERVING
