"""The error-mapping interceptor on a real aio server: every domain error gets its code,
an unexpected exception is INTERNAL with no traceback or path, streams too."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc import aio

from highpeaks_ml import errors
from highpeaks_ml.api.errors import INTERNAL_MESSAGE
from highpeaks_ml.api.interceptors import ErrorMappingInterceptor

CASES = {
    "invalid": (errors.InvalidArgument("bad 'rows': -1"), grpc.StatusCode.INVALID_ARGUMENT),
    "notfound": (errors.NotFound("model 'x' not found"), grpc.StatusCode.NOT_FOUND),
    "exists": (errors.AlreadyExists("dup"), grpc.StatusCode.ALREADY_EXISTS),
    "precondition": (errors.FailedPrecondition("aliased"), grpc.StatusCode.FAILED_PRECONDITION),
    "unavailable": (errors.Unavailable("loading"), grpc.StatusCode.UNAVAILABLE),
    "exhausted": (errors.ResourceExhausted("limit"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    "unauth": (errors.Unauthenticated("no token"), grpc.StatusCode.UNAUTHENTICATED),
    "denied": (errors.PermissionDenied("scope"), grpc.StatusCode.PERMISSION_DENIED),
    "unimpl": (NotImplementedError(), grpc.StatusCode.UNIMPLEMENTED),
    "boom": (
        RuntimeError("secret /var/lib/models/x.onnx exploded"),
        grpc.StatusCode.INTERNAL,
    ),
}


async def _unary(request: bytes, context: aio.ServicerContext) -> bytes:
    exc, _ = CASES[request.decode()]
    raise exc


async def _stream(request: bytes, context: aio.ServicerContext):
    yield b"first"
    exc, _ = CASES[request.decode()]
    raise exc


def _handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        "test.Errors",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        },
    )


async def _call(case: str, streaming: bool) -> tuple[grpc.StatusCode, str, list[bytes]]:
    """Serve on this (main-thread) loop, call through a real channel, stop."""
    server = aio.server(interceptors=[ErrorMappingInterceptor()])
    server.add_generic_rpc_handlers((_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    received: list[bytes] = []
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            try:
                if streaming:
                    async for item in ch.unary_stream("/test.Errors/Stream")(
                        case.encode(), timeout=5
                    ):
                        received.append(item)
                else:
                    await ch.unary_unary("/test.Errors/Unary")(case.encode(), timeout=5)
            except aio.AioRpcError as err:
                return err.code(), err.details() or "", received
    finally:
        await server.stop(0)
    raise AssertionError("the call did not fail")


@pytest.mark.parametrize("case", sorted(CASES))
def test_unary_mapping(case):
    code, details, _ = asyncio.run(_call(case, streaming=False))
    assert code == CASES[case][1]
    if code == grpc.StatusCode.INTERNAL:
        assert details == INTERNAL_MESSAGE
        assert "/var/lib" not in details and "Traceback" not in details
    elif code != grpc.StatusCode.UNIMPLEMENTED:
        assert details == CASES[case][0].message


@pytest.mark.parametrize("case", ["notfound", "boom"])
def test_stream_mapping(case):
    code, details, received = asyncio.run(_call(case, streaming=True))
    assert received == [b"first"]
    assert code == CASES[case][1]
    assert "exploded" not in details
