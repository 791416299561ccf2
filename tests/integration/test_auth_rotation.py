"""JWT keys that rotate without a restart, against the real server (docs/security.md).

- ``--jwt-jwks-url``: a real HTTP endpoint on loopback (``sec.JwksServer``)
  whose keys the tests rotate, take down, hang and bring back;
- key files in the layout of a Kubernetes Secret volume (``..data`` symlink
  swapped atomically, as the kubelet does), with a broken version in between.

Intervals are short settings (a fraction of a second), so the suite stays
quick; the bounds the assertions use are the documented ones plus slack for
a loaded machine.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from highpeaks_ml.api.auth import PREDICT
from tests.conftest import ServerProcess
from tests.support import security as sec

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
OK = grpc.StatusCode.OK
LIST_MODELS = "/highpeaks_ml.v1.ModelRegistryService/ListModels"
#: How long a test waits for something the docs bound by a fraction of that.
PATIENCE_S = 15.0


def call(channel: grpc.Channel, tok: str, timeout: float = 10) -> tuple[grpc.StatusCode, str]:
    """ListModels with ``tok``: its status code and details."""
    try:
        channel.unary_unary(LIST_MODELS)(b"", metadata=sec.bearer(tok), timeout=timeout)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return OK, ""


def wait_for(what: str, done: Callable[[], bool], patience: float = PATIENCE_S) -> None:
    deadline = time.monotonic() + patience
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {patience:g} s: {what}")
        time.sleep(0.05)


def rs(key: Any, kid: str | None, sub: str = "alice") -> str:
    headers = {"kid": kid} if kid else {}
    return sec.token(key, sec.claims(PREDICT, sub=sub), "RS256", **headers)


def es(key: Any, kid: str, sub: str = "alice") -> str:
    return sec.token(key, sec.claims(PREDICT, sub=sub), "ES256", kid=kid)


def hs(secret: bytes, sub: str = "alice") -> str:
    return sec.token(secret, sec.claims(PREDICT, sub=sub), "HS256")


def metric(port: int, name: str, source: str) -> float:
    """The value of ``name{source="..."}`` on the server's /metrics (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.search(rf'^{name}{{source="{source}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def _env(**settings: object) -> dict[str, str]:
    base = {
        "auth_mode": "jwt",
        "jwt_issuer": sec.ISSUER,
        "jwt_audience": sec.AUDIENCE,
        "rpc_log": "errors",
        **settings,
    }
    return {f"HIGHPEAKS_ML_{k.upper()}": str(v) for k, v in base.items()}


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    procs: list[ServerProcess] = []

    def run(**settings: object) -> ServerProcess:
        home = tmp_path / f"home{len(procs)}"
        home.mkdir()
        procs.append(ServerProcess(home, env=_env(**settings)))
        return procs[-1]

    yield run
    for p in procs:
        p.stop()


@pytest.fixture
def channels() -> Iterator[Callable[[ServerProcess], grpc.Channel]]:
    opened: list[grpc.Channel] = []

    def open_(proc: ServerProcess) -> grpc.Channel:
        opened.append(grpc.insecure_channel(proc.target))
        return opened[-1]

    yield open_
    for ch in opened:
        ch.close()


# --- the JWKS URL ----------------------------------------------------------------------

MIN_REFRESH_S = 0.3


def test_a_new_kid_is_fetched_at_once_and_a_removed_key_is_refused(start, channels):
    """Periodic refresh off (an hour): every change here comes from the fetch
    an unknown kid triggers."""
    k1, k2, k3 = sec.rsa_key(), sec.ec_key(), sec.rsa_key()
    port = sec.free_port()
    with sec.JwksServer({"k1": k1}) as idp:
        proc = start(
            jwt_jwks_url=idp.url,
            jwt_jwks_refresh_s=3600,
            jwt_jwks_min_refresh_s=MIN_REFRESH_S,
            jwt_jwks_timeout_s=5,  # generous: a loaded machine must not fail the first try
            metrics_port=port,
        )
        chan = channels(proc)
        assert idp.hits == 1  # fetched once, before the server said SERVING
        tok1 = rs(k1, "k1")
        assert call(chan, tok1)[0] == OK

        def after_min_refresh() -> None:
            # The documented bound: a fetch for an unknown kid starts unless
            # one began less than jwt_jwks_min_refresh_s ago.
            time.sleep(max(0.0, idp.last_hit + MIN_REFRESH_S + 0.05 - time.monotonic()))

        tok2 = es(k2, "k2")
        after_min_refresh()
        code, details = call(chan, tok2)
        assert (code, "unknown token key id") == (UNAUTH, details)  # not published yet
        idp.publish({"k1": k1, "k2": k2})
        after_min_refresh()
        assert call(chan, tok2)[0] == OK  # the first try after publication

        # k1 removed, k3 added: the fetch k3 triggers drops k1, and tok1 (verified
        # and cached before) is refused from then on.
        idp.publish({"k2": k2, "k3": k3})
        after_min_refresh()
        assert call(chan, rs(k3, "k3"))[0] == OK
        code, details = call(chan, tok1)
        assert (code, details) == (UNAUTH, "unknown token key id")
        assert call(chan, tok2)[0] == OK

        # A flood of made-up kids: refused, and at most one fetch per
        # jwt_jwks_min_refresh_s reaches the identity service.
        before, t0 = idp.hits, time.monotonic()
        results = []
        threads = [
            threading.Thread(
                target=lambda i=i: results.extend(
                    call(chan, rs(k3, f"bogus-{i}-{j}"))[0] for j in range(25)
                )
            )
            for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        assert results == [UNAUTH] * 200
        assert idp.hits - before <= elapsed / MIN_REFRESH_S + 1, (idp.hits - before, elapsed)
        # Every fetch succeeded and changed the keys only when the document did.
        assert metric(port, "highpeaks_ml_auth_key_reload_failures_total", "jwks_url") == 0
        assert metric(port, "highpeaks_ml_auth_key_reloads_total", "jwks_url") == 3
    assert "Traceback" not in proc.output()


def test_identity_service_down_hanging_and_back(start, channels):
    """Down at start (not ready until it answers), periodic refresh, hanging
    and failing endpoint: cached keys keep working and nothing waits past the
    fetch timeout."""
    k1, k2, k3 = sec.rsa_key(), sec.rsa_key(), sec.ec_key()
    timeout_s, refresh_s = 1.0, 0.5
    port = sec.free_port()
    with sec.JwksServer({"k1": k1}, mode="error") as idp:
        started: list[ServerProcess] = []
        starter = threading.Thread(
            target=lambda: started.append(
                start(
                    jwt_jwks_url=idp.url,
                    jwt_jwks_refresh_s=refresh_s,
                    jwt_jwks_min_refresh_s=0.2,
                    jwt_jwks_timeout_s=timeout_s,
                    metrics_port=port,
                )
            )
        )
        starter.start()
        wait_for("the server retries the first fetch", lambda: idp.hits >= 2)
        idp.set_mode("up")
        starter.join(timeout=120)
        (proc,) = started
        out = proc.output()
        assert out.index("not SERVING until it answers") < out.index(" ready")
        chan = channels(proc)
        tok1 = rs(k1, "k1")
        assert call(chan, tok1)[0] == OK

        # Rotation by the periodic refresh alone (k1 is a known kid: nothing
        # else would fetch): within jwt_jwks_refresh_s, k1 is refused and k2 works.
        idp.publish({"k2": k2})
        wait_for("k1 refused after its removal", lambda: call(chan, tok1)[0] == UNAUTH)
        assert call(chan, rs(k2, "k2"))[0] == OK

        for mode in ("hang", "error"):
            idp.set_mode(mode)
            failures = metric(port, "highpeaks_ml_auth_key_reload_failures_total", "jwks_url")
            hits = idp.hits
            wait_for(f"a fetch against the {mode} endpoint", lambda h=hits: idp.hits > h)
            for i in range(2):
                # Fresh tokens (not from the token cache) of the cached key...
                assert call(chan, rs(k2, "k2", sub=f"{mode}-{i}"))[0] == OK
                # ... and an unknown kid, which waits at most for the fetch
                # timeout (past the deadline it would be DEADLINE_EXCEEDED).
                code, details = call(chan, rs(k1, "k-new"), timeout=timeout_s + 4)
                assert (code, details) == (UNAUTH, "unknown token key id"), mode
            wait_for(
                "the failed fetch counted",
                lambda f=failures: (
                    metric(port, "highpeaks_ml_auth_key_reload_failures_total", "jwks_url") > f
                ),
            )
        assert "JWKS fetch failed, the keys fetched before stay in use" in proc.output()

        # Back, with a new key: picked up (here by the refresh or the kid's fetch).
        idp.publish({"k2": k2, "k3": k3})
        idp.set_mode("up")
        wait_for("k3 accepted once the endpoint is back", lambda: call(chan, es(k3, "k3"))[0] == OK)
        assert call(chan, rs(k2, "k2", sub="after"))[0] == OK
    assert "Traceback" not in proc.output()


# --- key files in a Kubernetes Secret volume --------------------------------------------


class SecretVolume:
    """A directory laid out as the kubelet mounts a Secret: ``name -> ..data/name``,
    ``..data -> ..<version>``; ``update`` swaps ``..data`` atomically."""

    def __init__(self, root: Path, files: dict[str, bytes]) -> None:
        self.root = root
        root.mkdir()
        self.version = 0
        self._write(files)
        os.symlink(self._dir().name, root / "..data")
        for name in files:
            os.symlink(f"..data/{name}", root / name)

    def _dir(self) -> Path:
        return self.root / f"..2024_01_01_00_00_{self.version:02d}.000000000"

    def _write(self, files: dict[str, bytes]) -> None:
        d = self._dir()
        d.mkdir()
        for name, data in files.items():
            (d / name).write_bytes(data)

    def update(self, files: dict[str, bytes]) -> None:
        old = self._dir()
        self.version += 1
        self._write(files)
        tmp = self.root / "..data_tmp"
        os.symlink(self._dir().name, tmp)
        os.rename(tmp, self.root / "..data")  # the atomic swap
        for f in old.iterdir():
            f.unlink()
        old.rmdir()


def test_key_files_rotate_by_symlink_swap_and_a_broken_version_keeps_the_keys(
    tmp_path, start, channels
):
    ec1, ec2, ec4 = sec.ec_key(), sec.ec_key(), sec.ec_key()
    rsa1, rsa2 = sec.rsa_key(), sec.rsa_key()
    s1, s2 = b"1" * 40, b"2" * 40

    def files(jwks_keys: dict[str, Any], pem_key: Any, secret: bytes) -> dict[str, bytes]:
        return {
            "jwks.json": json.dumps(sec.jwks(jwks_keys)).encode(),
            "public-key.pem": sec.public_pem(pem_key),
            "secret": secret + b"\n",
        }

    vol = SecretVolume(tmp_path / "jwt", files({"j1": ec1}, rsa1, s1))
    port = sec.free_port()
    proc = start(
        jwt_algorithms="RS256,ES256,HS256",
        jwt_jwks_file=vol.root / "jwks.json",
        jwt_public_key_file=vol.root / "public-key.pem",
        jwt_secret_file=vol.root / "secret",
        jwt_key_file_check_s=0.2,
        metrics_port=port,
    )
    chan = channels(proc)
    old = [es(ec1, "j1"), rs(rsa1, None), hs(s1)]
    for tok in old:
        assert call(chan, tok)[0] == OK

    vol.update(files({"j2": ec2}, rsa2, s2))
    # One check reads all three files: once the new JWKS key works, so do the others.
    wait_for("the new JWKS file key accepted", lambda: call(chan, es(ec2, "j2"))[0] == OK)
    assert call(chan, rs(rsa2, None))[0] == OK
    assert call(chan, hs(s2))[0] == OK
    for tok in old:  # verified and cached before: refused now
        assert call(chan, tok)[0] == UNAUTH
    for source in ("jwks_file", "public_key_file", "secret_file"):
        assert metric(port, "highpeaks_ml_auth_key_reloads_total", source) == 2  # start + 1

    # A broken version of every file: logged and counted once each, old keys kept.
    vol.update({"jwks.json": b"{not json", "public-key.pem": b"garbage", "secret": b"short"})
    wait_for(
        "three failures counted",
        lambda: all(
            metric(port, "highpeaks_ml_auth_key_reload_failures_total", source) >= 1
            for source in ("jwks_file", "public_key_file", "secret_file")
        ),
    )
    time.sleep(1.0)  # five more checks of the same broken files: not counted again
    for source in ("jwks_file", "public_key_file", "secret_file"):
        assert metric(port, "highpeaks_ml_auth_key_reload_failures_total", source) == 1
    out = proc.output()
    assert out.count("JWT key file not reloaded, the previous keys stay in use") == 3
    assert "jwt_secret_file: the secret must be at least 32 bytes" in out
    for tok in (es(ec2, "j2", sub="b"), rs(rsa2, None, sub="b"), hs(s2, sub="b")):
        assert call(chan, tok)[0] == OK

    # Fixed again: the next good version is picked up.
    vol.update(files({"j4": ec4}, rsa2, s2))
    wait_for("the key after the broken version", lambda: call(chan, es(ec4, "j4"))[0] == OK)
    assert call(chan, es(ec2, "j2", sub="c"))[0] == UNAUTH
    assert "Traceback" not in proc.output()


# --- start-up -----------------------------------------------------------------------------


def test_a_plain_http_jwks_url_to_another_host_is_refused_at_start(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "highpeaks_ml.cli", "serve", "--port", "0"],
        env={
            **os.environ,
            "HIGHPEAKS_ML_HOME": str(tmp_path / "home"),
            **_env(jwt_jwks_url="http://identity.example.com/jwks.json"),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "jwt_jwks_url" in out and "must be https://" in out and "Traceback" not in out
