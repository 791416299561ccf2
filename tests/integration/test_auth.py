"""Bearer JWT authentication and per-method scopes, against the real server.

One server verifies RS256/ES256 tokens from a JWKS (with issuer and audience);
a second one also accepts HS256 with a shared secret next to an RSA public key
PEM, the set-up in which algorithm confusion would bite.
"""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from highpeaks_ml.api.auth import ADMIN, METHOD_SCOPES, PREDICT, PUBLIC_METHODS, TRAIN
from highpeaks_ml.api.server import PUBLIC_SERVICES
from highpeaks_ml.v1 import predict_pb2, registry_pb2, train_pb2
from tests.conftest import ServerProcess
from tests.support import security as sec
from tests.support.hostile import served_methods

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
OK = grpc.StatusCode.OK
ALL_SCOPES = f"{PREDICT} {TRAIN} {ADMIN}"
LIST_MODELS = "/highpeaks_ml.v1.ModelRegistryService/ListModels"


def _methods() -> dict[str, tuple[bool, bool]]:
    """Full path -> (client streaming, server streaming) of every public method."""
    out = {}
    for module in (train_pb2, predict_pb2, registry_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                out[f"/{service.full_name}/{m.name}"] = (m.client_streaming, m.server_streaming)
    return out


METHODS = _methods()


def invoke(
    channel: grpc.Channel,
    method: str,
    metadata: tuple[tuple[str, str], ...] = (),
    kind: tuple[bool, bool] | None = None,
) -> tuple[grpc.StatusCode, str]:
    """Call ``method`` with an empty request (raw bytes); its status code and details."""
    client_streaming, server_streaming = kind or METHODS.get(method, (False, False))
    kw = {"metadata": metadata, "timeout": 10}
    try:
        if client_streaming and server_streaming:
            list(channel.stream_stream(method)(iter([]), **kw))
        elif client_streaming:
            channel.stream_unary(method)(iter([]), **kw)
        elif server_streaming:
            list(channel.unary_stream(method)(b"", **kw))
        else:
            channel.unary_unary(method)(b"", **kw)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return OK, ""


# --- servers ----------------------------------------------------------------------------


class Keys:
    def __init__(self) -> None:
        self.rsa = sec.rsa_key()
        self.ec = sec.ec_key()
        self.other_rsa = sec.rsa_key()  # not configured anywhere
        self.secret = b"s" * 40


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


def _start(tmp: Path, env: dict[str, str]) -> ServerProcess:
    home = tmp / "home"
    home.mkdir()
    return ServerProcess(home, env=env)


@pytest.fixture(scope="module")
def jwks_server(tmp_path_factory, keys) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("auth-jwks")
    (tmp / "jwks.json").write_text(json.dumps(sec.jwks({"rsa-1": keys.rsa, "ec-1": keys.ec})))
    proc = _start(
        tmp,
        {
            "HIGHPEAKS_ML_AUTH_MODE": "jwt",
            "HIGHPEAKS_ML_JWT_JWKS_FILE": str(tmp / "jwks.json"),
            "HIGHPEAKS_ML_JWT_ISSUER": sec.ISSUER,
            "HIGHPEAKS_ML_JWT_AUDIENCE": sec.AUDIENCE,
            "HIGHPEAKS_ML_JWT_LEEWAY_S": "30",
        },
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def hs_server(tmp_path_factory, keys) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("auth-hs")
    (tmp / "pub.pem").write_bytes(sec.public_pem(keys.rsa))
    (tmp / "secret").write_bytes(keys.secret + b"\n")
    proc = _start(
        tmp,
        {
            "HIGHPEAKS_ML_AUTH_MODE": "jwt",
            "HIGHPEAKS_ML_JWT_ALGORITHMS": "RS256,HS256",
            "HIGHPEAKS_ML_JWT_PUBLIC_KEY_FILE": str(tmp / "pub.pem"),
            "HIGHPEAKS_ML_JWT_SECRET_FILE": str(tmp / "secret"),
        },
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def chan(jwks_server) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(jwks_server.target)
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def hs_chan(hs_server) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(hs_server.target)
    yield ch
    ch.close()


def rs(keys: Keys, scopes: str | None = ALL_SCOPES, **kw) -> str:
    return sec.token(keys.rsa, sec.claims(scopes, **kw), "RS256", kid="rsa-1")


# --- the scope table ----------------------------------------------------------------


def test_every_public_method_has_a_scope():
    assert set(METHODS) <= set(METHOD_SCOPES), set(METHODS) - set(METHOD_SCOPES)
    assert not set(METHOD_SCOPES) & PUBLIC_METHODS


def test_every_served_method_is_in_the_table(chan):
    """Whatever services the server registers (OIP included, once it is there),
    each of their methods has an entry: a new RPC cannot ship without one."""
    served = {
        m for m in served_methods(chan) if not m.startswith(("/grpc.health.", "/grpc.reflection."))
    }
    assert len(served) >= len(METHODS)
    assert served <= set(METHOD_SCOPES), served - set(METHOD_SCOPES)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_needs_its_scope(chan, keys, method):
    needed = METHOD_SCOPES[method]
    others = " ".join(s for s in (PREDICT, TRAIN, ADMIN) if s != needed)
    assert invoke(chan, method)[0] == UNAUTH
    code, details = invoke(chan, method, sec.bearer(rs(keys, others)))
    assert code == DENIED and needed in details
    code, _ = invoke(chan, method, sec.bearer(rs(keys, needed)))
    assert code not in (UNAUTH, DENIED)


# --- the JWT cases -------------------------------------------------------------------


def _expect_unauth(channel, metadata, fragment: str = "") -> None:
    code, details = invoke(channel, LIST_MODELS, metadata)
    assert code == UNAUTH, (code, details)
    assert fragment in details


def test_valid_rs256_and_es256_tokens(chan, keys):
    assert invoke(chan, LIST_MODELS, sec.bearer(rs(keys)))[0] not in (UNAUTH, DENIED)
    es = sec.token(keys.ec, sec.claims(PREDICT), "ES256", kid="ec-1")
    assert invoke(chan, LIST_MODELS, sec.bearer(es))[0] not in (UNAUTH, DENIED)


def test_missing_token(chan):
    _expect_unauth(chan, (), "missing credentials")


@pytest.mark.parametrize(
    "value",
    [
        "Bearer",
        "Bearer not.a.jwt",
        "Bearer abc",
        "Basic dXNlcjpwYXNz",
        "Bearer a b",
        "x" * 9000,
        "Bearer " + "a" * 8200,
    ],
)
def test_malformed_authorization(chan, value):
    # Repeated: between grpc's soft and hard metadata limits requests used to
    # be refused at random; the server sets one limit (16 KiB).
    for _ in range(10):
        _expect_unauth(chan, (("authorization", value),))


def test_expired_token(chan, keys):
    _expect_unauth(chan, sec.bearer(rs(keys, exp_in=-120)), "expired")


def test_expired_within_leeway_is_accepted(chan, keys):
    code, _ = invoke(chan, LIST_MODELS, sec.bearer(rs(keys, exp_in=-5)))
    assert code not in (UNAUTH, DENIED)


def test_token_without_exp(chan, keys):
    _expect_unauth(chan, sec.bearer(rs(keys, exp_in=None)), "'exp'")


def test_not_yet_valid(chan, keys):
    _expect_unauth(chan, sec.bearer(rs(keys, nbf=int(time.time()) + 600)), "not yet valid")
    _expect_unauth(chan, sec.bearer(rs(keys, iat=int(time.time()) + 600)), "not yet valid")


def test_wrong_audience_and_missing_audience(chan, keys):
    _expect_unauth(chan, sec.bearer(rs(keys, aud="someone-else")), "audience")
    payload = sec.claims(ALL_SCOPES)
    del payload["aud"]
    _expect_unauth(chan, sec.bearer(sec.token(keys.rsa, payload, kid="rsa-1")), "'aud'")


def test_wrong_issuer(chan, keys):
    _expect_unauth(chan, sec.bearer(rs(keys, iss="https://evil.test/")), "issuer")


def test_alg_none(chan, keys):
    for alg in ("none", "None", "NONE"):
        forged = sec.forged_token(sec.claims(ALL_SCOPES), {"alg": alg, "kid": "rsa-1"}, None)
        _expect_unauth(chan, sec.bearer(forged), "not allowed")


def test_hs256_signed_with_rsa_public_key_is_refused(chan, hs_chan, keys):
    pem = sec.public_pem(keys.rsa)
    forged = sec.forged_token(sec.claims(ALL_SCOPES), {"alg": "HS256", "kid": "rsa-1"}, pem)
    # HS256 not in the allow-list...
    _expect_unauth(chan, sec.bearer(forged), "not allowed")
    # ... and where it is, the RSA public key is never used as the HMAC secret.
    forged = sec.forged_token(sec.claims(ALL_SCOPES), {"alg": "HS256", "typ": "JWT"}, pem)
    code, details = invoke(hs_chan, LIST_MODELS, sec.bearer(forged))
    assert code == UNAUTH and "signature" in details


def test_hs256_with_the_shared_secret_and_rs256_with_the_pem(hs_chan, keys):
    good_hs = sec.token(keys.secret, sec.claims(PREDICT), "HS256")
    assert invoke(hs_chan, LIST_MODELS, sec.bearer(good_hs))[0] not in (UNAUTH, DENIED)
    good_rs = sec.token(keys.rsa, sec.claims(PREDICT), "RS256", kid="anything")
    assert invoke(hs_chan, LIST_MODELS, sec.bearer(good_rs))[0] not in (UNAUTH, DENIED)
    wrong = sec.token(b"w" * 40, sec.claims(PREDICT), "HS256")
    assert invoke(hs_chan, LIST_MODELS, sec.bearer(wrong))[0] == UNAUTH


def test_unknown_kid_missing_kid_and_wrong_key(chan, keys):
    payload = sec.claims(ALL_SCOPES)
    _expect_unauth(chan, sec.bearer(sec.token(keys.rsa, payload, kid="rsa-9")), "key id")
    _expect_unauth(chan, sec.bearer(sec.token(keys.rsa, payload)), "kid")
    # A known kid, but signed by a key the server does not have.
    _expect_unauth(chan, sec.bearer(sec.token(keys.other_rsa, payload, kid="rsa-1")), "signature")
    # An RS256 token naming the EC key: no key of that kid verifies RS256.
    _expect_unauth(chan, sec.bearer(sec.token(keys.rsa, payload, kid="ec-1")))


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        _Recorder.hits.append(self.path)
        body = json.dumps(sec.jwks({"attacker": self.server.attacker_key})).encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_keys_are_never_fetched_from_token_headers(chan, keys):
    attacker = sec.rsa_key()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    httpd.attacker_key = attacker  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/jwks.json"
    try:
        jwk = sec.jwks({"attacker": attacker})["keys"][0]
        payload = sec.claims(ALL_SCOPES)
        for headers in (
            {"kid": "attacker", "jku": url},
            {"kid": "attacker", "x5u": url},
            {"kid": "attacker", "jwk": jwk},
            {"kid": "rsa-1", "jku": url, "jwk": jwk},
        ):
            forged = sec.token(attacker, payload, "RS256", **headers)
            _expect_unauth(chan, sec.bearer(forged))
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert _Recorder.hits == []


def test_two_authorization_headers(chan, keys):
    good = rs(keys)
    md = (("authorization", f"Bearer {good}"), ("authorization", f"Bearer {good}"))
    _expect_unauth(chan, md, "more than one")


@pytest.mark.parametrize("claim", ["scope", "scp", "permissions"])
def test_scope_claim_forms(chan, keys, claim):
    value: object = ["ml:train", "ml:predict"] if claim != "scope" else "ml:train ml:predict"
    payload = sec.claims(None, **{claim: value})
    tok = sec.token(keys.rsa, payload, kid="rsa-1")
    assert invoke(chan, LIST_MODELS, sec.bearer(tok))[0] not in (UNAUTH, DENIED)
    # A scope that merely contains the name is not the scope.
    payload = sec.claims(None, **{claim: ["ml:predictor", "xml:predict"]})
    tok = sec.token(keys.rsa, payload, kid="rsa-1")
    assert invoke(chan, LIST_MODELS, sec.bearer(tok))[0] == DENIED


def test_no_scopes_at_all(chan, keys):
    assert invoke(chan, LIST_MODELS, sec.bearer(rs(keys, None)))[0] == DENIED


# --- exempt methods, look-alikes, unknown methods, streams ---------------------------------


def test_health_and_reflection_need_no_token(chan):
    stub = health_pb2_grpc.HealthStub(chan)
    status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(chan)
    responses = refl.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert set(PUBLIC_SERVICES) <= names


def test_health_with_a_bad_token_still_answers(chan):
    stub = health_pb2_grpc.HealthStub(chan)
    resp = stub.Check(
        health_pb2.HealthCheckRequest(service=""), metadata=sec.bearer("junk"), timeout=5
    )
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


LOOK_ALIKES = [
    "/highpeaks_ml.v1.ModelRegistryService/listmodels",
    "/highpeaks_ml.v1.ModelRegistryService/ListModels/",
    "/highpeaks_ml.v1.ModelRegistryService/ListModelsX",
    "/highpeaks_ml.v1.modelregistryservice/ListModels",
    "/grpc.health.v1.Health/Check2",
    "/grpc.health.v1.HealthX/Check",
    "/grpc.health.v2.Health/Check",
    "/grpc.reflection.v1alpha.ServerReflection/Other",
    "/x.grpc.health.v1.Health/Check",
    "/no.Such/Method",
]


@pytest.mark.parametrize("method", LOOK_ALIKES)
@pytest.mark.parametrize("kind", [(False, False), (True, True)])
def test_look_alike_and_unknown_methods(chan, keys, method, kind):
    assert invoke(chan, method, kind=kind)[0] == UNAUTH
    assert invoke(chan, method, sec.bearer("junk"), kind=kind)[0] == UNAUTH
    code, _ = invoke(chan, method, sec.bearer(rs(keys)), kind=kind)
    assert code in (grpc.StatusCode.UNIMPLEMENTED, DENIED)


def test_streaming_rpcs_are_refused_with_a_status(chan, keys):
    streams = [m for m, (cs, ss) in METHODS.items() if cs or ss]
    assert len(streams) >= 4
    for method in streams:
        assert invoke(chan, method)[0] == UNAUTH, method
        assert invoke(chan, method, sec.bearer(rs(keys, "nothing")))[0] == DENIED, method


def test_server_still_serves_and_logs_the_subject(chan, keys, jwks_server):
    invoke(chan, LIST_MODELS, sec.bearer(rs(keys, sub="svc-billing")))
    invoke(chan, LIST_MODELS)
    stub = health_pb2_grpc.HealthStub(chan)
    assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
    out = jwks_server.output()
    assert re.search(r"rpc method=\S+/ListModels code=\w+ ms=\S+ subject=svc-billing", out)
    assert re.search(r"rpc method=\S+/ListModels code=UNAUTHENTICATED ms=\S+ subject=-", out)
    assert "Traceback" not in out


# --- start-up validation -------------------------------------------------------------------


def _serve_fails(tmp_path: Path, env: dict[str, str]) -> str:
    import os

    proc = subprocess.run(
        [sys.executable, "-m", "highpeaks_ml.cli", "serve", "--port", "0"],
        env={**os.environ, "HIGHPEAKS_ML_HOME": str(tmp_path / "home"), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_jwt_mode_without_a_key_fails_at_start(tmp_path):
    out = _serve_fails(tmp_path, {"HIGHPEAKS_ML_AUTH_MODE": "jwt"})
    assert "auth_mode=jwt needs a key" in out and "Traceback" not in out


def test_unusable_key_files_fail_at_start(tmp_path, keys):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    out = _serve_fails(
        tmp_path, {"HIGHPEAKS_ML_AUTH_MODE": "jwt", "HIGHPEAKS_ML_JWT_PUBLIC_KEY_FILE": str(bad)}
    )
    assert "jwt_public_key_file" in out and "Traceback" not in out
    # An EC key with only RS256 allowed can verify nothing.
    ec_pem = tmp_path / "ec.pem"
    ec_pem.write_bytes(sec.public_pem(keys.ec))
    out = _serve_fails(
        tmp_path,
        {
            "HIGHPEAKS_ML_AUTH_MODE": "jwt",
            "HIGHPEAKS_ML_JWT_ALGORITHMS": "RS256",
            "HIGHPEAKS_ML_JWT_PUBLIC_KEY_FILE": str(ec_pem),
        },
    )
    assert "fits none of jwt_algorithms" in out
    short = tmp_path / "short"
    short.write_bytes(b"tiny")
    out = _serve_fails(
        tmp_path,
        {
            "HIGHPEAKS_ML_AUTH_MODE": "jwt",
            "HIGHPEAKS_ML_JWT_ALGORITHMS": "HS256",
            "HIGHPEAKS_ML_JWT_SECRET_FILE": str(short),
        },
    )
    assert "at least 32 bytes" in out
    out = _serve_fails(tmp_path, {"HIGHPEAKS_ML_JWT_ALGORITHMS": "RS256,none"})
    assert "'none' is never accepted" in out


def test_auth_off_warns_once(server):
    out = server.output()
    assert out.count("AUTHENTICATION IS OFF") == 1


def test_cli_sends_the_token(jwks_server, keys):
    import os

    cli = [
        sys.executable,
        "-m",
        "highpeaks_ml.cli",
        "models",
        "list",
        "--json",
        "--target",
        jwks_server.target,
    ]
    env = {k: v for k, v in os.environ.items() if k != "HIGHPEAKS_ML_TOKEN"}
    refused = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    token = rs(keys, PREDICT)
    ok = subprocess.run(
        cli, env={**env, "HIGHPEAKS_ML_TOKEN": token}, capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0, ok.stderr
    flag = subprocess.run(
        [*cli, "--token", token], env=env, capture_output=True, text=True, timeout=60
    )
    assert flag.returncode == 0, flag.stderr
