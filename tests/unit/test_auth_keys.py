"""Key loading, token parsing and claim handling of api/auth.py (no sockets)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from pydantic import ValidationError

from highpeaks_ml import errors
from highpeaks_ml.api.auth import Authenticator, _jwks_keys, bearer_token, load_keys, scopes_of
from highpeaks_ml.config import ConfigError, Settings
from tests.support import security as sec


def settings(**kw) -> Settings:
    return Settings.load({"auth_mode": "jwt", **kw})


def write(tmp_path: Path, name: str, data: bytes | str | dict) -> Path:
    p = tmp_path / name
    if isinstance(data, dict):
        data = json.dumps(data)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def test_jwks_rules(tmp_path):
    rsa, ec = sec.rsa_key(), sec.ec_key()
    doc = sec.jwks({"a": rsa, "b": ec})
    keys = load_keys(settings(jwt_jwks_file=write(tmp_path, "ok.json", doc)))
    assert {(k.kid, tuple(sorted(k.algorithms))) for k in keys} == {
        ("a", ("RS256",)),  # the JWK's alg restricts the RSA key to RS256
        ("b", ("ES256",)),
    }
    dup = {"keys": [doc["keys"][0], doc["keys"][0]]}
    with pytest.raises(ConfigError, match="duplicate kid"):
        load_keys(settings(jwt_jwks_file=write(tmp_path, "dup.json", dup)))
    nokid = {"keys": [{k: v for k, v in doc["keys"][0].items() if k != "kid"}]}
    with pytest.raises(ConfigError, match="needs a 'kid'"):
        load_keys(settings(jwt_jwks_file=write(tmp_path, "nokid.json", nokid)))
    enc_only = {"keys": [{**doc["keys"][0], "use": "enc"}]}
    with pytest.raises(ConfigError, match="no usable verification key"):
        load_keys(settings(jwt_jwks_file=write(tmp_path, "enc.json", enc_only)))
    for bad in ("[]", '{"keys": []}', "not json", '{"keys": "x"}'):
        with pytest.raises(ConfigError, match="not a JWKS"):
            load_keys(settings(jwt_jwks_file=write(tmp_path, "bad.json", bad)))


def test_a_symmetric_jwks_key_needs_an_hs_algorithm(tmp_path):
    oct_key = {"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTIz"}]}
    path = write(tmp_path, "oct.json", oct_key)
    with pytest.raises(ConfigError, match="fits none"):
        load_keys(settings(jwt_jwks_file=path))
    (key,) = load_keys(settings(jwt_jwks_file=path, jwt_algorithms="HS256"))
    assert key.algorithms == {"HS256"} and isinstance(key.key, bytes)


def test_pem_certificate_and_eddsa_keys(tmp_path):
    pki = sec.make_pki(tmp_path / "pki")
    (key,) = load_keys(settings(jwt_public_key_file=pki.server_cert))  # an EC certificate
    assert key.algorithms == {"ES256"}
    ed = ed25519.Ed25519PrivateKey.generate()
    pem = ed.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = write(tmp_path, "ed.pem", pem)
    with pytest.raises(ConfigError, match="fits none"):
        load_keys(settings(jwt_public_key_file=path))
    auth = Authenticator(settings(jwt_public_key_file=path, jwt_algorithms="EdDSA"))
    tok = sec.token(ed, {"sub": "e", "exp": int(time.time()) + 60, "scope": "ml:admin"}, "EdDSA")
    principal = auth.authenticate(sec.bearer(tok))
    assert principal.subject == "e" and principal.scopes == {"ml:admin"}


def test_missing_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_keys(settings(jwt_public_key_file=tmp_path / "nope.pem"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer abc.def.ghi", "abc.def.ghi"),
        ("  Bearer   abc.def.ghi  ", "abc.def.ghi"),
    ],
)
def test_bearer_token_forms(value, expected):
    assert bearer_token((("authorization", value),)) == expected


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer"),),
        (("authorization", "Token abc"),),
        (("authorization", "Bearer a b"),),
        (("authorization", b"Bearer abc"),),
        (("authorization", "Bearer " + "a" * 9000),),
        (("authorization", "Bearer a"), ("authorization", "Bearer a")),
    ],
)
def test_bearer_token_refusals(metadata):
    with pytest.raises(errors.Unauthenticated):
        bearer_token(metadata)


def test_scopes_of_claim_forms():
    assert scopes_of({"scope": "a b  c"}) == {"a", "b", "c"}
    assert scopes_of({"scp": ["a", 1, None, "b"]}) == {"a", "b"}
    assert scopes_of({"scp": "x y", "permissions": ["z"]}) == {"x", "y", "z"}
    assert scopes_of({"scope": 7, "permissions": {"a": 1}}) == frozenset()


def test_cached_tokens_are_rechecked_against_exp(tmp_path, monkeypatch):
    secret = write(tmp_path, "s", b"k" * 32)
    auth = Authenticator(settings(jwt_secret_file=secret, jwt_algorithms="HS256", jwt_leeway_s=0))
    verified = []
    real_verify = auth._verify
    monkeypatch.setattr(auth, "_verify", lambda t: verified.append(t) or real_verify(t))
    now = time.time()
    tok = sec.token(b"k" * 32, {"sub": "a", "exp": int(now) + 60}, "HS256")
    assert auth.authenticate(sec.bearer(tok)).subject == "a"
    assert auth.authenticate(sec.bearer(tok)).subject == "a"
    assert len(verified) == 1  # the second came from the cache
    # Past its exp the cached entry is dropped and the token verified again
    # (and refused by PyJWT's own clock check once it really is expired).
    monkeypatch.setattr(time, "time", lambda: now + 120)
    auth.authenticate(sec.bearer(tok))
    assert len(verified) == 2
    expired = sec.token(b"k" * 32, {"sub": "a", "exp": int(now) - 5}, "HS256")
    with pytest.raises(errors.Unauthenticated, match="expired"):
        auth.authenticate(sec.bearer(expired))


@pytest.mark.parametrize(
    "url",
    [
        "https://idp.example.com/.well-known/jwks.json",
        "https://10.0.0.7:8443/keys",
        "http://127.0.0.1:8080/jwks",
        "http://127.3.2.1/jwks",
        "http://localhost:9000/jwks",
        "http://[::1]:9000/jwks",
    ],
)
def test_jwks_urls_accepted(url):
    assert settings(jwt_jwks_url=url).jwt_jwks_url == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://idp.example.com/jwks", "must be https://"),
        ("http://10.0.0.7/jwks", "must be https://"),
        ("http://localhost.evil.example/jwks", "must be https://"),
        ("ftp://127.0.0.1/jwks", "must be an https:// URL"),
        ("file:///etc/jwks.json", "with a host"),
        ("idp.example.com/jwks", "with a host"),
        ("https://idp.example.com:99999/jwks", "not a valid URL"),
    ],
)
def test_jwks_urls_refused(url, why):
    with pytest.raises(ValidationError, match=re.escape(why)):
        settings(jwt_jwks_url=url)


def test_a_jwks_url_alone_is_a_key_source():
    assert settings(jwt_jwks_url="https://idp.example.com/jwks").jwt_jwks_file is None
    with pytest.raises(ValidationError, match="needs a key"):
        settings(jwt_jwks_url="")


def test_a_fetched_jwks_skips_what_this_server_cannot_use():
    """The identity service's document may hold keys for other algorithms or
    uses; they are skipped (and reported), symmetric keys never taken."""
    rsa, ec384 = sec.rsa_key(), ec.generate_private_key(ec.SECP384R1())
    good = sec.jwks({"good": rsa})["keys"][0]
    other_alg = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec384.public_key()))
    doc = {
        "keys": [
            good,
            {**other_alg, "kid": "es384"},
            {"kty": "oct", "kid": "s", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTIz", "alg": "HS256"},
            {**good, "kid": "enc", "use": "enc"},
            {k: v for k, v in good.items() if k != "kid"},
            {**good},  # a duplicate kid
        ]
    }
    s = settings(jwt_jwks_url="https://idp.example.com/jwks", jwt_algorithms="RS256,HS256")
    keys, skipped = _jwks_keys(doc, "jwt_jwks_url", s, remote=True)
    assert [k.kid for k in keys] == ["good"]
    assert len(skipped) == 4
    assert any("symmetric key is never taken from a URL" in why for why in skipped)
    with pytest.raises(ConfigError, match="no usable verification key"):
        _jwks_keys({"keys": doc["keys"][1:-1]}, "jwt_jwks_url", s, remote=True)
    with pytest.raises(ConfigError, match="not a JWKS"):
        _jwks_keys({"keys": []}, "jwt_jwks_url", s, remote=True)


def test_key_files_are_reread_only_when_they_change(tmp_path):
    """``check_files``: a changed file replaces its keys and drops cached tokens;
    an unchanged or broken one keeps them."""
    a, b = b"a" * 32, b"b" * 32
    path = write(tmp_path, "secret", a)
    auth = Authenticator(settings(jwt_secret_file=path, jwt_algorithms="HS256"))
    tok_a = sec.token(a, {"sub": "a", "exp": int(time.time()) + 60}, "HS256")
    assert auth.authenticate(sec.bearer(tok_a)).subject == "a"
    assert auth.keyset.check_files() is False  # nothing changed
    os.utime(path, ns=(1, 1))
    assert auth.keyset.check_files() is False  # touched, same bytes
    tmp = write(tmp_path, "secret.new", b)
    os.replace(tmp, path)
    assert auth.keyset.check_files() is True
    with pytest.raises(errors.Unauthenticated, match="signature"):
        auth.authenticate(sec.bearer(tok_a))  # cached before: verified again, refused
    os.replace(write(tmp_path, "secret.bad", b"short"), path)
    assert auth.keyset.check_files() is False
    tok_b = sec.token(b, {"sub": "b", "exp": int(time.time()) + 60}, "HS256")
    assert auth.authenticate(sec.bearer(tok_b)).subject == "b"
    path.unlink()
    assert auth.keyset.check_files() is False
    assert auth.authenticate(sec.bearer(tok_b)).subject == "b"
