"""TLS and mutual TLS with certificates made in the test, and the plaintext health port."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from highpeaks_ml.client import Client
from tests.conftest import ServerProcess
from tests.support import security as sec

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> sec.Pki:
    return sec.make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def rogue(tmp_path_factory) -> sec.Pki:
    """Certificates from a CA the server does not trust."""
    return sec.make_pki(tmp_path_factory.mktemp("rogue"), name="rogue")


def _server(tmp: Path, env: dict[str, str], *flags: str) -> ServerProcess:
    home = tmp / "home"
    home.mkdir()
    return ServerProcess(home, *flags, env=env)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, pki) -> Iterator[ServerProcess]:
    proc = _server(
        tmp_path_factory.mktemp("tls"),
        {
            "HIGHPEAKS_ML_TLS_CERT_FILE": str(pki.server_cert),
            "HIGHPEAKS_ML_TLS_KEY_FILE": str(pki.server_key),
        },
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory, pki) -> Iterator[tuple[ServerProcess, int]]:
    health_port = sec.free_port()
    proc = _server(
        tmp_path_factory.mktemp("mtls"),
        {
            "HIGHPEAKS_ML_TLS_CERT_FILE": str(pki.server_cert),
            "HIGHPEAKS_ML_TLS_KEY_FILE": str(pki.server_key),
            "HIGHPEAKS_ML_TLS_CLIENT_CA_FILE": str(pki.ca),
        },
        "--health-port",
        str(health_port),
    )
    yield proc, health_port
    proc.stop()


def _creds(ca: Path, cert: Path | None = None, key: Path | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )


def _health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def _fails(channel: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        _health(channel)
    return err.value.code()


def test_tls_serves_with_the_ca(tls_server, pki):
    with grpc.secure_channel(tls_server.target, _creds(pki.ca)) as ch:
        assert _health(ch) == SERVING
    assert "tls=True" in tls_server.output()


def test_tls_refuses_plaintext_and_untrusting_clients(tls_server, pki, rogue):
    with grpc.insecure_channel(tls_server.target) as ch:
        assert _fails(ch) == grpc.StatusCode.UNAVAILABLE
    with grpc.secure_channel(tls_server.target, _creds(rogue.ca)) as ch:
        assert _fails(ch) == grpc.StatusCode.UNAVAILABLE
    # ... and keeps serving the clients that do it right.
    with grpc.secure_channel(tls_server.target, _creds(pki.ca)) as ch:
        assert _health(ch) == SERVING


def test_client_and_cli_speak_tls(tls_server, pki):
    with Client(tls_server.target, tls_ca=pki.ca) as client:
        assert client.health() == "SERVING"
    env = {**os.environ, "HIGHPEAKS_ML_TLS_CA": str(pki.ca)}
    cli = [sys.executable, "-m", "highpeaks_ml.cli", "health", "--target", tls_server.target]
    ok = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.strip() == "SERVING", ok.stderr
    plain = subprocess.run(
        [*cli, "--timeout", "5"], capture_output=True, text=True, timeout=60, env=os.environ
    )
    assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr


def test_mtls_requires_a_trusted_client_certificate(mtls_server, pki, rogue):
    proc, _ = mtls_server
    with grpc.secure_channel(proc.target, _creds(pki.ca)) as ch:
        assert _fails(ch) == grpc.StatusCode.UNAVAILABLE
    rogue_creds = _creds(pki.ca, rogue.client_cert, rogue.client_key)
    with grpc.secure_channel(proc.target, rogue_creds) as ch:
        assert _fails(ch) == grpc.StatusCode.UNAVAILABLE
    with grpc.secure_channel(proc.target, _creds(pki.ca, pki.client_cert, pki.client_key)) as ch:
        assert _health(ch) == SERVING
    with Client(
        proc.target, tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key
    ) as client:
        assert client.health() == "SERVING"
    assert "tls=mutual" in proc.output()


def test_plaintext_health_port_serves_health_only(mtls_server):
    _, health_port = mtls_server
    with grpc.insecure_channel(f"127.0.0.1:{health_port}") as ch:
        assert _health(ch) == SERVING
        for service in ("highpeaks_ml.v1.PredictService", "highpeaks_ml.v1.TrainService"):
            stub = health_pb2_grpc.HealthStub(ch)
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            list(
                refl.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
                )
            )
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary("/highpeaks_ml.v1.ModelRegistryService/ListModels")(b"", timeout=5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_health_port_goes_not_serving_on_sigterm(tmp_path, pki):
    health_port = sec.free_port()
    proc = _server(
        tmp_path,
        {
            "HIGHPEAKS_ML_TLS_CERT_FILE": str(pki.server_cert),
            "HIGHPEAKS_ML_TLS_KEY_FILE": str(pki.server_key),
        },
        "--health-port",
        str(health_port),
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as ch:
            stream = health_pb2_grpc.HealthStub(ch).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=60
            )
            assert next(stream).status == SERVING
            proc.proc.send_signal(15)
            statuses = []
            with contextlib.suppress(grpc.RpcError):
                for msg in stream:
                    statuses.append(msg.status)
            assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
        assert proc.proc.wait(timeout=30) == 0
    finally:
        proc.stop()


def _serve_fails(tmp_path: Path, env: dict[str, str]) -> str:
    run = subprocess.run(
        [sys.executable, "-m", "highpeaks_ml.cli", "serve", "--port", "0"],
        env={**os.environ, "HIGHPEAKS_ML_HOME": str(tmp_path / "home"), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    return run.stdout + run.stderr


def test_bad_tls_settings_fail_at_start(tmp_path, pki, rogue):
    out = _serve_fails(tmp_path, {"HIGHPEAKS_ML_TLS_CERT_FILE": str(pki.server_cert)})
    assert "tls_cert_file and tls_key_file must be set together" in out
    out = _serve_fails(
        tmp_path,
        {
            "HIGHPEAKS_ML_TLS_CERT_FILE": str(pki.server_cert),
            "HIGHPEAKS_ML_TLS_KEY_FILE": str(rogue.server_key),
        },
    )
    assert "does not match" in out
    out = _serve_fails(
        tmp_path,
        {
            "HIGHPEAKS_ML_TLS_CERT_FILE": str(tmp_path / "missing.pem"),
            "HIGHPEAKS_ML_TLS_KEY_FILE": str(pki.server_key),
        },
    )
    assert "tls_cert_file: cannot read" in out
