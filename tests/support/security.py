"""Keys, tokens and certificates for the security tests, generated with `cryptography`.

Nothing here is a fixture; the test modules build what they need (module-scoped)
so key generation runs once per module.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import http.server
import ipaddress
import json
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ISSUER = "https://idp.test/"
AUDIENCE = "highpeaks-ml"


def free_port() -> int:
    """A port that was free a moment ago (for settings that cannot take 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hs256_env(directory: Path, secret: bytes) -> dict[str, str]:
    """Server environment for JWT auth with one HS256 ``secret`` (written to ``directory``)."""
    path = directory / "secret"
    path.write_bytes(secret)
    return {
        "HIGHPEAKS_ML_AUTH_MODE": "jwt",
        "HIGHPEAKS_ML_JWT_ALGORITHMS": "HS256",
        "HIGHPEAKS_ML_JWT_SECRET_FILE": str(path),
    }


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: Any) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def jwks(keys: dict[str, Any]) -> dict[str, Any]:
    """A JWKS document with the public halves of ``{kid: private key}``."""
    out = []
    for kid, key in keys.items():
        if isinstance(key, rsa.RSAPrivateKey):
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            jwk["alg"] = "RS256"
        else:
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
            jwk["alg"] = "ES256"
        jwk.update(kid=kid, use="sig")
        out.append(jwk)
    return {"keys": out}


def claims(
    scopes: str | None = "ml:predict",
    *,
    sub: str = "alice",
    exp_in: float | None = 300,
    **extra: Any,
) -> dict[str, Any]:
    """Claims for a token valid now (``exp_in`` None leaves ``exp`` out)."""
    now = int(time.time())
    out: dict[str, Any] = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now}
    if exp_in is not None:
        out["exp"] = now + int(exp_in)
    if scopes is not None:
        out["scope"] = scopes
    out.update(extra)
    return {k: v for k, v in out.items() if v is not None}


def token(key: Any, payload: dict[str, Any], alg: str = "RS256", **headers: Any) -> str:
    """A signed JWT (``key`` is a private key object or HMAC bytes)."""
    return jwt.encode(payload, key, algorithm=alg, headers=headers or None)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_token(payload: dict[str, Any], header: dict[str, Any], hmac_key: bytes | None) -> str:
    """A token built by hand (PyJWT refuses to make these): ``alg`` as given,
    HMAC-SHA256 over it with ``hmac_key`` (e.g. the RSA public key's PEM), or
    an empty signature when ``hmac_key`` is None."""
    signing_input = (
        _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())
    ).encode()
    sig = b"" if hmac_key is None else hmac.new(hmac_key, signing_input, hashlib.sha256).digest()
    return signing_input.decode() + "." + _b64(sig)


def bearer(tok: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {tok}"),)


# --- certificates ---------------------------------------------------------------------


@dataclass
class Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""

    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: Any,
    issuer: str,
    issuer_key: Any,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        b = b.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return b.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path, name: str = "test") -> Pki:
    """Write a CA, a server and a client certificate (with keys) under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, server_key, client_key = ec_key(), ec_key(), ec_key()
    ca = _cert(f"{name} CA", ca_key, f"{name} CA", ca_key, ca=True)
    server = _cert("localhost", server_key, f"{name} CA", ca_key, server=True)
    client = _cert(f"{name}-client", client_key, f"{name} CA", ca_key)
    pem = serialization.Encoding.PEM
    files = {
        "ca.pem": ca.public_bytes(pem),
        "server.pem": server.public_bytes(pem),
        "server.key": private_pem(server_key),
        "client.pem": client.public_bytes(pem),
        "client.key": private_pem(client_key),
    }
    for fname, data in files.items():
        (directory / fname).write_bytes(data)
    d = directory
    return Pki(
        d, d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key"
    )


# --- an identity service's JWKS endpoint ---------------------------------------------


class JwksServer:
    """A JWKS endpoint on 127.0.0.1 (``http.server`` in a thread) whose keys a test rotates.

    ``mode``: ``up`` answers the current document, ``error`` answers 500,
    ``hang`` holds every request until the mode changes (an identity service
    that accepts connections and never answers). ``hits`` counts requests.
    """

    def __init__(self, keys: dict[str, Any], *, mode: str = "up") -> None:
        self.document = jwks(keys)
        self.mode = mode
        self.hits = 0
        self.last_hit = 0.0  # time.monotonic() of the latest request
        self._changed = threading.Condition()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with outer._changed:
                    outer.hits += 1
                    outer.last_hit = time.monotonic()
                    outer._changed.wait_for(lambda: outer.mode != "hang", timeout=60)
                    mode, body = outer.mode, json.dumps(outer.document).encode()
                with contextlib.suppress(OSError):  # the client may have given up
                    if mode == "error":
                        self.send_error(500)
                        return
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"

    def publish(self, keys: dict[str, Any]) -> None:
        """Serve the public halves of ``{kid: private key}`` from now on."""
        with self._changed:
            self.document = jwks(keys)

    def set_mode(self, mode: str) -> None:
        with self._changed:
            self.mode = mode
            self._changed.notify_all()

    def close(self) -> None:
        self.set_mode("error")  # releases held requests
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> JwksServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
