"""Development JWT keys and tokens, for trying the server with authentication on.

    python scripts/dev_jwt.py keys dev-jwt/
        writes dev-jwt/private-key.pem (mode 0600), dev-jwt/public-key.pem and
        dev-jwt/jwks.json (an ES256 key with its `kid`): give the server the
        JWKS (HIGHPEAKS_ML_JWT_JWKS_FILE, or the Secret highpeaks-ml-jwt in
        Kubernetes) or the public key (HIGHPEAKS_ML_JWT_PUBLIC_KEY_FILE).

    python scripts/dev_jwt.py token dev-jwt/ --scope "ml:predict ml:train" \\
        --issuer https://identity.example.com/ --audience highpeaks-ml
        prints a bearer token signed with that key, for
        `grpcurl -H "authorization: Bearer $TOKEN" ...`.

For development and tests only: in a real cluster the identity service holds
the private key and publishes the JWKS.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

PRIVATE_KEY = "private-key.pem"
PUBLIC_KEY = "public-key.pem"
JWKS = "jwks.json"


def _kid(public_jwk: dict[str, str]) -> str:
    """RFC 7638 thumbprint of an EC public key (stable, derived from the key)."""
    canonical = json.dumps(
        {k: public_jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def make_keys(directory: Path) -> str:
    """Write a new ES256 key pair and its JWKS into ``directory``; return the ``kid``."""
    directory.mkdir(parents=True, exist_ok=True)
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(directory / PRIVATE_KEY, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public = private.public_key()
    (directory / PUBLIC_KEY).write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    kid = _kid(jwk)
    jwk.update({"kid": kid, "alg": "ES256", "use": "sig"})
    (directory / JWKS).write_text(json.dumps({"keys": [jwk]}, indent=2) + "\n")
    return kid


def make_token(
    directory: Path,
    *,
    scope: str,
    subject: str = "dev",
    issuer: str | None = None,
    audience: str | None = None,
    ttl_s: int = 3600,
) -> str:
    """A token signed with the key in ``directory`` (see ``make_keys``)."""
    jwks = json.loads((directory / JWKS).read_text())
    kid = jwks["keys"][0]["kid"]
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": subject,
        "scope": scope,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_s,
    }
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    key = (directory / PRIVATE_KEY).read_bytes()
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})


def main(argv: list[str] | None = None) -> int:
    """Command line: ``keys DIR`` or ``token DIR [--scope ...]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    keys = sub.add_parser("keys", help="write a new ES256 key pair and jwks.json")
    keys.add_argument("directory", type=Path)
    token = sub.add_parser("token", help="print a signed bearer token")
    token.add_argument("directory", type=Path)
    token.add_argument("--scope", default="ml:predict", help="space-separated scopes")
    token.add_argument("--subject", default="dev")
    token.add_argument("--issuer")
    token.add_argument("--audience")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    args = parser.parse_args(argv)
    if args.command == "keys":
        kid = make_keys(args.directory)
        print(f"wrote {args.directory / JWKS} (kid {kid}), {PUBLIC_KEY}, {PRIVATE_KEY}")
    else:
        print(
            make_token(
                args.directory,
                scope=args.scope,
                subject=args.subject,
                issuer=args.issuer,
                audience=args.audience,
                ttl_s=args.ttl,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
