"""The client flags (--target, --timeout, --token, --tls-ca/--tls-cert/--tls-key) go
before the command as well as after it, and the later one wins: the real CLI, as a
subprocess, against a real server that needs all of them (mutual TLS and a JWT)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from highpeaks_ml.api.auth import PREDICT
from highpeaks_ml.registry.local import LocalModelStore
from tests.conftest import ROOT, ServerProcess
from tests.support import security as sec
from tests.support import serving_models as sm

SECRET = b"cli-flags-secret-" * 3


@dataclass
class Secured:
    proc: ServerProcess
    pki: sec.Pki
    token: str

    def flags(self, target: str | None = None, token: str | None = None) -> list[str]:
        """Every client flag this server needs."""
        return [
            *("--target", target or self.proc.target),
            *("--token", token or self.token),
            *("--tls-ca", str(self.pki.ca)),
            *("--tls-cert", str(self.pki.client_cert)),
            *("--tls-key", str(self.pki.client_key)),
        ]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    tmp = tmp_path_factory.mktemp("cli-flags")
    pki = sec.make_pki(tmp_path_factory.mktemp("cli-flags-pki"))
    home = tmp / "home"
    home.mkdir()
    store = LocalModelStore(home)
    store.start()
    iris = sm.iris_logreg()
    store.publish("iris", iris.onnx, iris.meta, ("production",))
    env = {
        **sec.hs256_env(tmp, SECRET),
        "HIGHPEAKS_ML_TLS_CERT_FILE": str(pki.server_cert),
        "HIGHPEAKS_ML_TLS_KEY_FILE": str(pki.server_key),
        "HIGHPEAKS_ML_TLS_CLIENT_CA_FILE": str(pki.ca),
    }
    proc = ServerProcess(home, env=env)
    try:
        yield Secured(proc, pki, sec.token(SECRET, sec.claims(PREDICT), "HS256"))
    finally:
        proc.stop()


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    # No HIGHPEAKS_ML_* from the environment: the flags alone must do it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIGHPEAKS_ML_")}
    return subprocess.run(
        [sys.executable, "-m", "highpeaks_ml.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


def _lists_iris(r: subprocess.CompletedProcess[str]) -> None:
    assert r.returncode == 0, r.stderr
    assert "iris" in r.stdout and "production -> 1" in r.stdout, r.stdout


def test_flags_before_the_command(secured):
    _lists_iris(_cli(*secured.flags(), "models", "list"))
    r = _cli(*secured.flags(), "--timeout", "20", "health")
    assert r.returncode == 0 and r.stdout.strip() == "SERVING", (r.stdout, r.stderr)


def test_flags_after_the_command(secured):
    _lists_iris(_cli("models", "list", *secured.flags()))


def test_flags_split_around_the_command(secured):
    flags = secured.flags()
    _lists_iris(_cli(*flags[:4], "models", "list", *flags[4:]))


def test_the_later_flag_wins(secured):
    nobody = f"127.0.0.1:{sec.free_port()}"
    # Before the command: a dead address and a bad token; after it: the right ones.
    _lists_iris(
        _cli(*secured.flags(target=nobody, token="bad"), "models", "list", *secured.flags())
    )
    # The other way round, each flag alone: the later (wrong) value is the one used.
    r = _cli(*secured.flags(), "models", "list", "--target", nobody, "--timeout", "3")
    assert r.returncode == 1 and "UNAVAILABLE" in r.stderr, (r.returncode, r.stderr)
    r = _cli(*secured.flags(), "models", "list", "--token", "bad")
    assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr, (r.returncode, r.stderr)


def test_without_the_flags_the_call_is_refused(secured):
    """Control: the server really needs the flags (no certificate, no token: refused)."""
    r = _cli("models", "list", "--target", secured.proc.target, "--timeout", "5")
    assert r.returncode == 1, (r.stdout, r.stderr)
    flags = secured.flags()
    r = _cli(*flags[:2], *flags[4:], "models", "list")  # everything but the token
    assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr, r.stderr


def test_client_flags_before_serve_are_refused(tmp_path):
    """``highpeaks-ml --tls serve`` must not quietly start a plaintext server."""
    r = _cli("--tls", "--target", "127.0.0.1:1", "serve", "--home", str(tmp_path))
    assert r.returncode == 2
    assert "--target, --tls: client flags, not server settings" in r.stderr
