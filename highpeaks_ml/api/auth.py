"""Authentication (bearer JWT) and authorisation (scopes per RPC).

``AuthInterceptor`` sits inside the error-mapping interceptor (see
``api/server.py``), so its refusals are raised as ``errors.Unauthenticated`` /
``errors.PermissionDenied`` and come out through the one mapping layer, logged
like any other RPC.

The rules:

- Every method path is looked up in ``METHOD_SCOPES`` by its FULL path. Only
  the entries in ``PUBLIC_METHODS`` (health and reflection) need no token.
  Anything else, a look-alike path or an unknown method included, needs a
  valid token first; a valid token then gets PERMISSION_DENIED for a
  registered method that has no table entry and UNIMPLEMENTED for a path no
  service serves.
- Tokens come from exactly one ``authorization: Bearer <JWT>`` metadata entry.
- The algorithm must be in ``jwt_algorithms`` and match the family of the key
  that verifies it: an RSA or EC public key is never used as an HMAC secret,
  which defeats algorithm confusion; ``none`` is never accepted.
- Keys come only from the configured files; ``jku``/``x5u``/``jwk``/``x5c``
  headers are ignored, nothing is ever fetched.
- ``exp`` is required; ``nbf``/``iat`` are checked with ``jwt_leeway_s``;
  ``iss`` and ``aud`` when configured.
- Scopes are the union of ``scope`` (space-separated string), ``scp`` and
  ``permissions`` (lists, or space-separated strings). Scopes do not imply
  one another: an admin that also lists models needs ``ml:predict`` too.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from grpc import aio

from highpeaks_ml import errors
from highpeaks_ml.api.context import subject_var
from highpeaks_ml.api.handlers import HandlerCache, before, rewrap_handler
from highpeaks_ml.config import AuthMode, ConfigError, Settings, read_setting_file

log = logging.getLogger("highpeaks_ml.auth")

PREDICT = "ml:predict"
TRAIN = "ml:train"
ADMIN = "ml:admin"

_TRAIN_SVC = "/highpeaks_ml.v1.TrainService/"
_PREDICT_SVC = "/highpeaks_ml.v1.PredictService/"
_REGISTRY_SVC = "/highpeaks_ml.v1.ModelRegistryService/"
_OIP_SVC = "/inference.GRPCInferenceService/"

#: Methods that need no token: probes and grpcurl's discovery.
PUBLIC_METHODS: frozenset[str] = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.health.v1.Health/List",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
)

#: The scope each method needs, keyed by full method path. A method missing
#: here is refused to every token (see the module docstring).
METHOD_SCOPES: dict[str, str] = {
    # Predictions and read-only model metadata.
    _PREDICT_SVC + "Predict": PREDICT,
    _PREDICT_SVC + "PredictStream": PREDICT,
    _REGISTRY_SVC + "ListModels": PREDICT,
    _REGISTRY_SVC + "GetModel": PREDICT,
    _REGISTRY_SVC + "GetModelVersion": PREDICT,
    _REGISTRY_SVC + "DownloadModelVersion": PREDICT,
    # Training and datasets. ListAlgorithms is catalogue metadata that only
    # matters to someone about to train, so it goes with training.
    _TRAIN_SVC + "UploadDataset": TRAIN,
    _TRAIN_SVC + "GetDataset": TRAIN,
    _TRAIN_SVC + "ListDatasets": TRAIN,
    _TRAIN_SVC + "ListAlgorithms": TRAIN,
    _TRAIN_SVC + "StartTraining": TRAIN,
    _TRAIN_SVC + "GetTrainingJob": TRAIN,
    _TRAIN_SVC + "ListTrainingJobs": TRAIN,
    _TRAIN_SVC + "CancelTrainingJob": TRAIN,
    _TRAIN_SVC + "WatchTrainingJob": TRAIN,
    # Registry changes.
    _REGISTRY_SVC + "SetAlias": ADMIN,
    _REGISTRY_SVC + "DeleteAlias": ADMIN,
    _REGISTRY_SVC + "DeleteModelVersion": ADMIN,
    _REGISTRY_SVC + "ImportModel": ADMIN,
    # Open Inference Protocol (KServe v2 / Triton), the methods served (docs/oip.md):
    # reads and inference...
    _OIP_SVC + "ServerLive": PREDICT,
    _OIP_SVC + "ServerReady": PREDICT,
    _OIP_SVC + "ModelReady": PREDICT,
    _OIP_SVC + "ServerMetadata": PREDICT,
    _OIP_SVC + "ModelMetadata": PREDICT,
    _OIP_SVC + "ModelInfer": PREDICT,
    _OIP_SVC + "ModelStreamInfer": PREDICT,
    _OIP_SVC + "ModelStatistics": PREDICT,
    _OIP_SVC + "RepositoryIndex": PREDICT,
    # ... and the repository changes.
    _OIP_SVC + "RepositoryModelLoad": ADMIN,
    _OIP_SVC + "RepositoryModelUnload": ADMIN,
}

#: Every method path the platform knows (bounds the metrics' method label).
KNOWN_METHODS: frozenset[str] = PUBLIC_METHODS | frozenset(METHOD_SCOPES)

AUTHORIZATION = "authorization"
MAX_TOKEN_CHARS = 8192
_TOKEN_CACHE_SIZE = 4096

# Which algorithms each kind of key may verify. Binding the algorithm to the
# key type is what defeats algorithm confusion (an HS256 token "signed" with
# the RSA public key's PEM): an asymmetric key is never handed to HMAC.
_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_OKP_ALGS = frozenset({"EdDSA"})
_HMAC_ALGS = frozenset({"HS256", "HS384", "HS512"})
_MIN_SECRET_BYTES = 32


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: subject and scopes."""

    subject: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class _Key:
    key: Any  # a cryptography public key object, or bytes for HMAC
    algorithms: frozenset[str]
    kid: str | None  # set for JWKS keys; the token's kid must match
    source: str


def _algorithms_for(key: Any) -> frozenset[str]:
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA_ALGS
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_ALGS.get(key.curve.name)
        return frozenset({alg}) if alg else frozenset()
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return _OKP_ALGS
    if isinstance(key, bytes):
        return _HMAC_ALGS
    return frozenset()


def _load_public_key(data: bytes) -> Any:
    if b"-----BEGIN CERTIFICATE-----" in data:
        return x509.load_pem_x509_certificate(data).public_key()
    return serialization.load_pem_public_key(data)


def load_keys(settings: Settings) -> list[_Key]:
    """Read and check the configured verification keys (raises ConfigError)."""
    allowed = frozenset(settings.jwt_algorithm_list)
    keys: list[_Key] = []

    def add(key: Any, kid: str | None, source: str, only: str | None = None) -> None:
        algs = _algorithms_for(key) & allowed
        if only is not None:
            algs &= {only}
        if not algs:
            kind = type(key).__name__ if not isinstance(key, bytes) else "HMAC secret"
            raise ConfigError(
                f"{source}: a {kind} key fits none of jwt_algorithms={settings.jwt_algorithms}"
            )
        keys.append(_Key(key, algs, kid, source))

    if settings.jwt_public_key_file:
        data = read_setting_file(settings.jwt_public_key_file, "jwt_public_key_file")
        try:
            key = _load_public_key(data)
        except ValueError:
            raise ConfigError("jwt_public_key_file: not a PEM public key or certificate") from None
        add(key, None, "jwt_public_key_file")
    if settings.jwt_jwks_file:
        data = read_setting_file(settings.jwt_jwks_file, "jwt_jwks_file")
        try:
            jwks = json.loads(data)
            entries = jwks["keys"]
            if not isinstance(entries, list) or not entries:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise ConfigError("jwt_jwks_file: not a JWKS document with a 'keys' list") from None
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            where = f"jwt_jwks_file key #{i}"
            if not isinstance(entry, dict):
                raise ConfigError(f"{where}: not an object")
            if entry.get("use", "sig") != "sig":
                continue  # an encryption key: not for verifying signatures
            kid = entry.get("kid")
            if not isinstance(kid, str) or not kid:
                raise ConfigError(f"{where}: every JWKS key needs a 'kid'")
            if kid in seen:
                raise ConfigError(f"{where}: duplicate kid {kid!r}")
            seen.add(kid)
            try:
                jwk = jwt.PyJWK.from_dict(entry)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
                raise ConfigError(f"{where} ({kid!r}): unusable key: {exc}") from None
            key = jwk.key
            if isinstance(key, str):
                key = key.encode()
            # Symmetric JWKS keys would let anyone who can read the file mint tokens;
            # they are accepted only with an HS algorithm explicitly listed.
            add(key, kid, f"{where} ({kid!r})", only=entry.get("alg"))
    if settings.jwt_secret_file:
        secret = read_setting_file(settings.jwt_secret_file, "jwt_secret_file").rstrip(b"\r\n")
        if len(secret) < _MIN_SECRET_BYTES:
            raise ConfigError(
                f"jwt_secret_file: the secret must be at least {_MIN_SECRET_BYTES} bytes"
            )
        add(secret, None, "jwt_secret_file")
    if not keys:
        raise ConfigError("auth_mode=jwt: no usable verification key")
    return keys


def scopes_of(claims: dict[str, Any]) -> frozenset[str]:
    """The union of the ``scope``, ``scp`` and ``permissions`` claims."""
    found: set[str] = set()
    for name in ("scope", "scp", "permissions"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(v for v in value if isinstance(v, str))
    return frozenset(found)


def _subject_of(claims: dict[str, Any]) -> str:
    for name in ("sub", "client_id", "azp"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value[:256]
    return "unknown"


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The token of the one ``authorization: Bearer`` entry (raises Unauthenticated)."""
    values = [v for k, v in (metadata or ()) if k == AUTHORIZATION]
    if not values:
        raise errors.Unauthenticated(
            "missing credentials: send 'authorization: Bearer <JWT>' metadata"
        )
    if len(values) > 1:
        raise errors.Unauthenticated("more than one 'authorization' metadata entry")
    value = values[0]
    if not isinstance(value, str):
        raise errors.Unauthenticated("malformed 'authorization' metadata")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise errors.Unauthenticated("'authorization' metadata must be 'Bearer <JWT>'")
    if len(token) > MAX_TOKEN_CHARS:
        raise errors.Unauthenticated(f"token longer than {MAX_TOKEN_CHARS} characters")
    return token


# Client-facing messages for PyJWT's errors (no key material, no internals).
_MESSAGES: list[tuple[type[Exception], str]] = [
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidAudienceError, "token audience does not match"),
    (jwt.InvalidIssuerError, "token issuer does not match"),
    (jwt.MissingRequiredClaimError, "token lacks a required claim"),
    (jwt.InvalidSignatureError, "token signature does not verify"),
    (jwt.InvalidAlgorithmError, "token algorithm not allowed"),
    (jwt.DecodeError, "malformed token"),
]


def _message(exc: jwt.InvalidTokenError) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token lacks the required '{exc.claim}' claim"
    for kind, text in _MESSAGES:
        if isinstance(exc, kind):
            return text
    return "invalid token"


class Authenticator:
    """Verifies bearer JWTs against the configured keys and claims."""

    def __init__(self, settings: Settings, keys: list[_Key] | None = None) -> None:
        self.settings = settings
        self.algorithms = frozenset(settings.jwt_algorithm_list)
        self.keys = keys if keys is not None else load_keys(settings)
        self.has_jwks = any(k.kid is not None for k in self.keys)
        # Verified tokens, so a client reusing its token pays for the signature
        # check once; entries are re-checked against exp on every hit.
        self._cache: dict[str, tuple[Principal, float]] = {}

    def authenticate(self, metadata: Iterable[tuple[str, Any]] | None) -> Principal:
        """The caller of an RPC with ``metadata`` (raises errors.Unauthenticated)."""
        token = bearer_token(metadata)
        cached = self._cache.get(token)
        if cached is not None:
            principal, exp = cached
            if time.time() <= exp + self.settings.jwt_leeway_s:
                return principal
            del self._cache[token]
        principal, exp = self._verify(token)
        if len(self._cache) >= _TOKEN_CACHE_SIZE:
            self._cache.pop(next(iter(self._cache)))
        self._cache[token] = (principal, exp)
        return principal

    def _candidates(self, alg: str, kid: Any) -> list[_Key]:
        keys = [k for k in self.keys if alg in k.algorithms]
        if kid is None:
            keys = [k for k in keys if k.kid is None]
            if not keys and self.has_jwks:
                raise errors.Unauthenticated("token has no 'kid' header")
        else:
            if not isinstance(kid, str):
                raise errors.Unauthenticated("malformed token")
            by_kid = [k for k in keys if k.kid == kid]
            # A static key (PEM file, secret) verifies tokens whatever their kid.
            keys = by_kid or [k for k in keys if k.kid is None]
            if not keys and self.has_jwks:
                raise errors.Unauthenticated("unknown token key id")
        if not keys:
            raise errors.Unauthenticated(f"no key accepts algorithm {alg!r}")
        return keys

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise errors.Unauthenticated("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            shown = alg if isinstance(alg, str) and len(alg) <= 16 else "?"
            raise errors.Unauthenticated(f"token algorithm {shown!r} not allowed")
        # jku/x5u/jwk/x5c are deliberately never looked at: keys come from files only.
        s = self.settings
        options: dict[str, Any] = {
            "require": ["exp"],
            "verify_aud": s.jwt_audience is not None,
            "verify_iss": s.jwt_issuer is not None,
        }
        failure: jwt.InvalidTokenError | None = None
        for key in self._candidates(alg, header.get("kid")):
            try:
                claims = jwt.decode(
                    token,
                    key.key,
                    algorithms=[alg],
                    options=options,  # type: ignore[arg-type]
                    audience=s.jwt_audience,
                    issuer=s.jwt_issuer,
                    leeway=s.jwt_leeway_s,
                )
            except jwt.InvalidSignatureError as exc:
                failure = exc  # another configured key may verify it
                continue
            except jwt.InvalidTokenError as exc:
                raise errors.Unauthenticated(_message(exc)) from None
            exp = claims["exp"]
            if not isinstance(exp, int | float):
                raise errors.Unauthenticated("malformed token")
            return Principal(_subject_of(claims), scopes_of(claims)), float(exp)
        assert failure is not None
        raise errors.Unauthenticated(_message(failure))


# --- the interceptor ---------------------------------------------------------------


def _wrap(
    behavior: Callable[..., Any], check: Callable[[aio.ServicerContext], None]
) -> Callable[..., Any]:
    """``behavior`` run after ``check(context)``, of the same kind (coroutine or async gen)."""

    def checked(request: Any, context: aio.ServicerContext) -> Any:
        check(context)
        return request

    return before(behavior, checked)


def _refusal(check: Callable[[aio.ServicerContext], None]) -> grpc.RpcMethodHandler:
    """A handler for a path no entry allows: runs ``check`` (which raises), reads nothing.

    Stream-stream with raw bytes fits whatever kind of call the client made.
    """

    async def refuse(request_iterator: Any, context: aio.ServicerContext) -> None:
        check(context)
        raise errors.Unimplemented("unknown method")  # pragma: no cover - check() raises

    return grpc.stream_stream_rpc_method_handler(refuse)


class AuthInterceptor(aio.ServerInterceptor):
    """Checks the caller's token and scope before the handler; sets the subject.

    Installed only with ``auth_mode=jwt``; with auth off the error-mapping
    interceptor records every caller as ``anonymous``.
    """

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator
        self._handlers = HandlerCache()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        auth = self.authenticator
        if method in PUBLIC_METHODS and handler is not None:
            return handler
        required = METHOD_SCOPES.get(method)

        def check(context: aio.ServicerContext) -> None:
            # Runs inside the RPC (so the error mapping logs and maps it), in
            # the RPC's own context (so the subject stays with this call).
            principal = auth.authenticate(context.invocation_metadata())
            subject_var.set(principal.subject)
            if handler is None:
                raise errors.Unimplemented(f"unknown method {method[:200]!r}")
            if required is None:
                raise errors.PermissionDenied(f"method {method[:200]!r} is not open to callers")
            if required not in principal.scopes:
                raise errors.PermissionDenied(f"this call needs the {required!r} scope")

        if handler is None or required is None:
            return _refusal(check)  # not cached: any path a caller sends lands here
        return self._handlers.get(
            method,
            handler,
            lambda: rewrap_handler(handler, lambda behavior, _req, _resp: _wrap(behavior, check)),
        )


def build_auth_interceptor(settings: Settings) -> AuthInterceptor | None:
    """The interceptor for ``settings``: None when auth is off; ConfigError for bad keys."""
    if settings.auth_mode == AuthMode.OFF:
        return None
    authenticator = Authenticator(settings)
    if settings.jwt_audience is None:
        log.warning("jwt_audience is not set: tokens minted for any audience are accepted")
    return AuthInterceptor(authenticator)


__all__ = [
    "ADMIN",
    "KNOWN_METHODS",
    "METHOD_SCOPES",
    "PREDICT",
    "PUBLIC_METHODS",
    "TRAIN",
    "AuthInterceptor",
    "Authenticator",
    "Principal",
    "bearer_token",
    "build_auth_interceptor",
    "load_keys",
    "scopes_of",
]
