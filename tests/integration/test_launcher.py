"""highpeaks_ml.launcher.ServerProcess with real servers: ready means answering, and a
server that cannot start says why (its own output) and leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from highpeaks_ml.launcher import ServerProcess, ServerStartError


def _health(target: str) -> int:
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status


def _running_with(home: Path) -> list[str]:
    """Command lines of live processes that name ``home`` (a server left behind)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if str(home).encode() in args:
            found.append(" ".join(a.decode(errors="replace") for a in args))
    return found


def test_a_started_server_answers_health_and_stops_cleanly(home):
    with ServerProcess(home) as srv:
        assert srv.port > 0 and srv.target == f"127.0.0.1:{srv.port}"
        assert _health(srv.target) == health_pb2.HealthCheckResponse.SERVING
        assert srv.terminate() == 0
        out = srv.output()
    assert f"listening address=127.0.0.1:{srv.port}" in out
    assert "received SIGTERM" in out and "stopped" in out
    assert srv.log_path.parent == home.parent and srv.log_path.is_file()


def test_json_logs_give_the_port_and_rpc_log_off_keeps_rpc_lines_out(home):
    # bench_serving, soak and gpu_check run with --rpc-log off: no line per RPC.
    with ServerProcess(home, "--rpc-log", "off", "--log-format", "json") as srv:
        assert _health(srv.target) == health_pb2.HealthCheckResponse.SERVING
        channel = grpc.insecure_channel(srv.target)
        with pytest.raises(grpc.RpcError):  # a failed call is not logged either
            channel.unary_unary("/highpeaks_ml.v1.ModelRegistryService/ListModels")(
                b"\xff", timeout=10
            )
        channel.close()
        srv.stop(grace_s=30)
        records = [json.loads(line) for line in srv.output().splitlines() if line.startswith("{")]
    assert "highpeaks_ml.rpc" not in {r["logger"] for r in records}
    assert [r["msg"] for r in records if r["msg"] in ("listening", "ready", "stopped")] == [
        "listening",
        "ready",
        "stopped",
    ]


def test_a_server_that_exits_at_start_up_raises_with_its_output(home):
    with pytest.raises(ServerStartError) as caught:
        ServerProcess(home, "--max-batch-size", "0")
    exc = caught.value
    assert exc.returncode == 2
    assert "exited with code 2 before it was ready" in str(exc)
    assert "invalid setting max_batch_size" in str(exc)  # the server's own words
    assert "invalid setting max_batch_size" in exc.output
    assert _running_with(home) == []


def test_a_server_not_ready_in_time_is_killed(home):
    with pytest.raises(ServerStartError, match=r"was not ready within 0\.2 s") as caught:
        ServerProcess(home, timeout=0.2)
    assert caught.value.returncode is None  # still starting when the time ran out
    assert _running_with(home) == []
