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
- Keys come only from the configured files and the configured JWKS URL;
  ``jku``/``x5u``/``jwk``/``x5c`` headers are ignored, a token never decides
  where keys are fetched from.
- Keys rotate without a restart (``KeySet`` below): the files are checked
  every ``jwt_key_file_check_s`` and re-read when they changed (a mounted
  Secret changes by a symlink swap); the JWKS URL is fetched every
  ``jwt_jwks_refresh_s`` and at once for an unknown ``kid`` (at most one
  fetch per ``jwt_jwks_min_refresh_s``). A file or fetch that fails keeps the
  keys in use, with an ERROR log line and a metric. All reading and fetching
  runs off the event loop; a request only reads the current keys, except one
  with an unknown ``kid``, which waits at most ``jwt_jwks_timeout_s`` for the
  fetch it triggers.
- ``exp`` is required; ``nbf``/``iat`` are checked with ``jwt_leeway_s``;
  ``iss`` and ``aud`` when configured.
- Scopes are the union of ``scope`` (space-separated string), ``scp`` and
  ``permissions`` (lists, or space-separated strings). Scopes do not imply
  one another: an admin that also lists models needs ``ml:predict`` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import logging
import math
import os
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from grpc import aio

from highpeaks_ml import __version__, errors
from highpeaks_ml import metrics as metrics_mod
from highpeaks_ml.api.context import subject_var
from highpeaks_ml.api.handlers import LayerInterceptor, rewrap_handler
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
    _REGISTRY_SVC + "GetVersionReport": PREDICT,
    _REGISTRY_SVC + "GetDriftReport": PREDICT,
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


class UnknownKeyId(errors.Unauthenticated):
    """The token names a ``kid`` no key in use has (a JWKS fetch may know it)."""


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


def _bind(
    key: Any, kid: str | None, source: str, settings: Settings, only: str | None = None
) -> _Key:
    """``key`` with the listed algorithms its type may verify; ConfigError if none."""
    algs = _algorithms_for(key) & frozenset(settings.jwt_algorithm_list)
    if only is not None:
        algs &= {only}
    if not algs:
        kind = type(key).__name__ if not isinstance(key, bytes) else "HMAC secret"
        raise ConfigError(
            f"{source}: a {kind} key fits none of jwt_algorithms={settings.jwt_algorithms}"
        )
    return _Key(key, algs, kid, source)


def _public_key_file_keys(data: bytes, settings: Settings) -> list[_Key]:
    try:
        key = _load_public_key(data)
    except ValueError:
        raise ConfigError("jwt_public_key_file: not a PEM public key or certificate") from None
    return [_bind(key, None, "jwt_public_key_file", settings)]


def _secret_file_keys(data: bytes, settings: Settings) -> list[_Key]:
    secret = data.rstrip(b"\r\n")
    if len(secret) < _MIN_SECRET_BYTES:
        raise ConfigError(f"jwt_secret_file: the secret must be at least {_MIN_SECRET_BYTES} bytes")
    return [_bind(secret, None, "jwt_secret_file", settings)]


def _jwks_keys(
    document: Any, source: str, settings: Settings, *, remote: bool
) -> tuple[list[_Key], list[str]]:
    """The verification keys of a JWKS document, and what was skipped (remote only).

    A file is the operator's own: any unusable entry is a ConfigError. A
    fetched document is the identity service's: entries this server cannot
    use (other algorithms, encryption keys, no ``kid``) are skipped and
    reported, and symmetric keys are never taken from it (a published secret
    would let anyone mint tokens). Either way at least one key must remain.
    """
    try:
        entries = document["keys"]
        if not isinstance(entries, list) or not entries:
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{source}: not a JWKS document with a 'keys' list") from None
    keys: list[_Key] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{source} key #{i}"
        try:
            if not isinstance(entry, dict):
                raise ConfigError(f"{where}: not an object")
            if entry.get("use", "sig") != "sig":
                continue  # an encryption key: not for verifying signatures
            kid = entry.get("kid")
            if not isinstance(kid, str) or not kid:
                raise ConfigError(f"{where}: every JWKS key needs a 'kid'")
            where = f"{where} ({kid[:64]!r})"
            if kid in seen:
                raise ConfigError(f"{where}: duplicate kid")
            if remote and entry.get("kty") == "oct":
                raise ConfigError(f"{where}: a symmetric key is never taken from a URL")
            try:
                jwk = jwt.PyJWK.from_dict(entry)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
                raise ConfigError(f"{where}: unusable key: {exc}") from None
            key = jwk.key
            if isinstance(key, str):
                key = key.encode()
            alg = entry.get("alg")
            # Symmetric JWKS keys would let anyone who can read the file mint tokens;
            # they are accepted only with an HS algorithm explicitly listed.
            keys.append(
                _bind(key, kid, where, settings, only=alg if isinstance(alg, str) else None)
            )
            seen.add(kid)
        except ConfigError as exc:
            if not remote:
                raise
            skipped.append(str(exc))
    if not keys:
        why = f" (skipped: {'; '.join(skipped)[:500]})" if skipped else ""
        raise ConfigError(f"{source}: no usable verification key{why}")
    return keys, skipped


def _jwks_file_keys(data: bytes, settings: Settings) -> list[_Key]:
    try:
        document = json.loads(data)
    except ValueError:
        raise ConfigError("jwt_jwks_file: not a JWKS document with a 'keys' list") from None
    return _jwks_keys(document, "jwt_jwks_file", settings, remote=False)[0]


#: A file's identity as ``stat`` sees it through the symlinks: device, inode,
#: size, mtime. Kubelet's swap of a Secret's ``..data`` link changes the inode.
_Stamp = tuple[int, int, int, int]


def _stamp(st: os.stat_result) -> _Stamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class _KeyFile:
    """One configured key file, re-read when what its path resolves to changes."""

    def __init__(
        self, setting: str, path: Path, parse: Callable[[bytes, Settings], list[_Key]]
    ) -> None:
        self.setting = setting
        #: The metric label (``jwks_file``, ...).
        self.source = setting.removeprefix("jwt_")
        self.path = path
        self._parse = parse
        self._stamp: _Stamp | tuple[str, int] | None = None
        self._digest = b""

    def _read(self) -> tuple[bytes, _Stamp]:
        # open() follows the symlinks; fstat describes the very file read.
        with open(self.path, "rb") as f:
            stamp = _stamp(os.fstat(f.fileno()))
            return f.read(), stamp

    def load(self, settings: Settings) -> list[_Key]:
        """The file's keys now (start-up; ConfigError when unreadable or unusable)."""
        try:
            data, stamp = self._read()
        except OSError as exc:
            raise ConfigError(f"{self.setting}: cannot read {self.path}: {exc.strerror}") from None
        keys = self._parse(data, settings)
        self._stamp, self._digest = stamp, hashlib.sha256(data).digest()
        return keys

    def poll(self, settings: Settings) -> list[_Key] | None:
        """New keys when the file changed, None when it did not.

        Raises ConfigError when it changed into something unusable (once per
        change: the broken version is remembered, so the log is not flooded).
        A cheap ``stat`` decides; the file is read only when it changed.
        """
        try:
            current: _Stamp | tuple[str, int] = _stamp(os.stat(self.path))
        except OSError as exc:
            current = ("missing", exc.errno or 0)
            if current == self._stamp:
                return None
            self._stamp = current
            raise ConfigError(f"{self.setting}: cannot read {self.path}: {exc.strerror}") from None
        if current == self._stamp:
            return None
        try:
            data, stamp = self._read()
        except OSError as exc:
            self._stamp = current
            raise ConfigError(f"{self.setting}: cannot read {self.path}: {exc.strerror}") from None
        self._stamp = stamp
        digest = hashlib.sha256(data).digest()
        if digest == self._digest:
            return None  # touched or re-linked, same bytes
        keys = self._parse(data, settings)  # ConfigError: this version is not retried
        self._digest = digest
        return keys


def _key_files(settings: Settings) -> list[_KeyFile]:
    files = []
    if settings.jwt_public_key_file:
        files.append(
            _KeyFile("jwt_public_key_file", settings.jwt_public_key_file, _public_key_file_keys)
        )
    if settings.jwt_jwks_file:
        files.append(_KeyFile("jwt_jwks_file", settings.jwt_jwks_file, _jwks_file_keys))
    if settings.jwt_secret_file:
        files.append(_KeyFile("jwt_secret_file", settings.jwt_secret_file, _secret_file_keys))
    return files


class _JwksEndpoint:
    """The identity service's JWKS URL, fetched with PyJWT's ``PyJWKClient``.

    ``PyJWKClient.fetch_data`` does the HTTP: the configured timeout, no
    redirects, TLS verified against the system's roots or ``jwt_jwks_ca_file``,
    and the check that the answer is a JSON object. Its own caches are off:
    the keys in use are the last document that parsed (``KeySet``), so a
    failed fetch never clears them.
    """

    source = "jwks_url"

    def __init__(self, settings: Settings) -> None:
        url = settings.jwt_jwks_url
        assert url is not None
        self.url = url
        context = None
        if settings.jwt_jwks_ca_file:
            data = read_setting_file(settings.jwt_jwks_ca_file, "jwt_jwks_ca_file")
            try:
                context = ssl.create_default_context(cadata=data.decode("ascii"))
            except (ssl.SSLError, ValueError):
                raise ConfigError("jwt_jwks_ca_file: not PEM certificates") from None
        self.client = jwt.PyJWKClient(
            url,
            cache_jwk_set=False,
            timeout=settings.jwt_jwks_timeout_s,
            ssl_context=context,
            headers={"User-Agent": f"highpeaks-ml/{__version__}", "Accept": "application/json"},
        )
        self._digest = b""

    def fetch(self, settings: Settings) -> tuple[list[_Key], list[str]] | None:
        """The document's keys and what was skipped, or None when it did not change.

        Blocking (run it off the event loop); ConfigError when the fetch fails
        or the document has no usable key.
        """
        try:
            document = self.client.fetch_data()
        except jwt.PyJWKClientError as exc:
            raise ConfigError(f"jwt_jwks_url: {str(exc)[:300]}") from None
        except ValueError:  # the body is not JSON (json.load inside fetch_data)
            raise ConfigError("jwt_jwks_url: the answer is not JSON") from None
        except OSError as exc:  # the connection broke while the body was read
            raise ConfigError(f"jwt_jwks_url: {str(exc)[:300]}") from None
        digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).digest()
        if digest == self._digest:
            return None
        found = _jwks_keys(document, "jwt_jwks_url", settings, remote=True)
        self._digest = digest
        return found


def load_keys(settings: Settings) -> list[_Key]:
    """Read and check the configured key files' keys (raises ConfigError).

    The JWKS URL is not fetched here (``KeySet.start`` does that).
    """
    keys = [k for f in _key_files(settings) for k in f.load(settings)]
    if not keys:
        raise ConfigError("auth_mode=jwt: no usable verification key")
    return keys


class KeySet:
    """The verification keys in use, and how they stay current.

    Keys come from the configured files (read at start-up; a broken file
    there is a start-up error) and the JWKS URL (fetched by ``start``). After
    ``start``, background tasks re-read changed files every
    ``jwt_key_file_check_s`` and fetch the URL every ``jwt_jwks_refresh_s``.
    New keys replace a source's old ones whole, on the event loop, in one
    assignment: a request sees the old set or the new one. A source that
    fails keeps its previous keys (ERROR log, ``auth_key_reload_failures_total``).
    Blocking work (stat, read, HTTP) runs on a small thread pool of its own.
    """

    def __init__(self, settings: Settings, keys: list[_Key] | None = None) -> None:
        self.settings = settings
        self.files: list[_KeyFile] = []
        self.endpoint: _JwksEndpoint | None = None
        self._by_source: dict[str, tuple[_Key, ...]] = {}
        if keys is not None:
            self._by_source["given"] = tuple(keys)
        else:
            self.files = _key_files(settings)
            for f in self.files:
                self._by_source[f.source] = tuple(f.load(settings))
            if settings.jwt_jwks_url:
                self.endpoint = _JwksEndpoint(settings)
            elif not any(self._by_source.values()):
                raise ConfigError("auth_mode=jwt: no usable verification key")
        self.keys: tuple[_Key, ...] = ()
        #: Whether a token must name its key by ``kid`` (there are JWKS keys).
        self.has_jwks = False
        #: Bumped on every change; the token cache is dropped with it.
        self.generation = 0
        self._join()
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._fetching: asyncio.Future[bool] | None = None
        self._last_fetch = -math.inf

    def _join(self) -> None:
        self.keys = tuple(k for keys in self._by_source.values() for k in keys)
        self.has_jwks = self.endpoint is not None or any(k.kid is not None for k in self.keys)
        self.generation += 1

    def _install(self, source: str, keys: list[_Key]) -> None:
        self._by_source[source] = tuple(keys)
        self._join()
        kids = sorted({k.kid or "-" for k in keys})
        log.info(
            "JWT keys updated from %s: %d key(s), kid %s",
            source,
            len(keys),
            ", ".join(kids)[:300],
        )

    # --- key files ------------------------------------------------------------------

    def _poll_files(self) -> list[tuple[_KeyFile, list[_Key] | ConfigError | None]]:
        out: list[tuple[_KeyFile, list[_Key] | ConfigError | None]] = []
        for f in self.files:
            try:
                out.append((f, f.poll(self.settings)))
            except ConfigError as exc:
                out.append((f, exc))
        return out

    def _apply(self, polled: list[tuple[_KeyFile, list[_Key] | ConfigError | None]]) -> bool:
        changed = False
        for f, outcome in polled:
            if outcome is None:
                continue
            if isinstance(outcome, ConfigError):
                log.error("JWT key file not reloaded, the previous keys stay in use: %s", outcome)
                metrics_mod.record_auth_key_load(f.source, ok=False)
                continue
            self._install(f.source, outcome)
            metrics_mod.record_auth_key_load(f.source, ok=True, changed=True)
            changed = True
        return changed

    def check_files(self) -> bool:
        """Re-read the key files that changed, here and now; True when keys changed."""
        return self._apply(self._poll_files())

    async def _watch_files(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.jwt_key_file_check_s)
            try:
                self._apply(await loop.run_in_executor(self._pool(), self._poll_files))
            except Exception:  # never let one bad round end the watching
                log.exception("checking the JWT key files failed")

    # --- the JWKS URL -----------------------------------------------------------------

    def fetch(self) -> asyncio.Future[bool]:
        """The JWKS fetch in flight, or a new one (True when it succeeded).

        One at a time: callers arriving meanwhile share it.
        """
        if self._fetching is None or self._fetching.done():
            self._last_fetch = asyncio.get_running_loop().time()
            self._fetching = asyncio.ensure_future(self._fetch_once())
        return self._fetching

    async def _fetch_once(self) -> bool:
        endpoint = self.endpoint
        assert endpoint is not None
        loop = asyncio.get_running_loop()
        try:
            found = await loop.run_in_executor(self._pool(), endpoint.fetch, self.settings)
        except Exception as exc:
            if isinstance(exc, ConfigError):
                log.error("JWKS fetch failed, the keys fetched before stay in use: %s", exc)
            else:
                log.exception("JWKS fetch failed, the keys fetched before stay in use")
            metrics_mod.record_auth_key_load(endpoint.source, ok=False)
            return False
        metrics_mod.record_auth_key_load(endpoint.source, ok=True, changed=found is not None)
        if found is not None:
            keys, skipped = found
            for why in skipped:
                log.warning("JWKS key skipped: %s", why)
            self._install(endpoint.source, keys)
        return True

    async def refetch_for_unknown_kid(self) -> bool:
        """Fetch the JWKS for a token whose ``kid`` is unknown; True if it succeeded.

        Shares a fetch in flight; otherwise starts one only if none began in
        the last ``jwt_jwks_min_refresh_s``, so a flood of made-up kids costs
        the identity service at most one request per that interval. Waits at
        most ``jwt_jwks_timeout_s``.
        """
        if self.endpoint is None:
            return False
        fetching = self._fetching
        if fetching is None or fetching.done():
            since = asyncio.get_running_loop().time() - self._last_fetch
            if since < self.settings.jwt_jwks_min_refresh_s:
                return False
            fetching = self.fetch()
        try:
            return await asyncio.wait_for(
                asyncio.shield(fetching), self.settings.jwt_jwks_timeout_s
            )
        except TimeoutError:
            return False

    def _retry_s(self) -> float:
        return max(self.settings.jwt_jwks_min_refresh_s, 0.5)

    async def _refresh_jwks(self) -> None:
        ok = True
        while True:
            s = self.settings
            await asyncio.sleep(
                s.jwt_jwks_refresh_s if ok else min(s.jwt_jwks_refresh_s, self._retry_s())
            )
            ok = await self.fetch()

    # --- lifecycle ----------------------------------------------------------------------

    def _pool(self) -> ThreadPoolExecutor:
        # Its own threads: a slow identity service never holds up the default
        # executor (model loading, uploads), nor a file check a fetch.
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="jwt-keys")
        return self._executor

    async def start(self) -> None:
        """Fetch the JWKS URL (retrying until it answers) and start the watching.

        The server reports SERVING only after this returns, so a pod behind a
        Service gets traffic only once it can verify tokens.
        """
        for f in self.files:
            metrics_mod.record_auth_key_load(f.source, ok=True, changed=True)
        if self.endpoint is not None:
            while not await self.fetch():
                log.warning(
                    "no JWKS from %s yet: not SERVING until it answers (retry in %g s)",
                    self.endpoint.url[:200],
                    self._retry_s(),
                )
                await asyncio.sleep(self._retry_s())
            self._tasks.append(asyncio.create_task(self._refresh_jwks()))
        if self.files:
            self._tasks.append(asyncio.create_task(self._watch_files()))

    async def close(self) -> None:
        """Stop the watching and the thread pool (a fetch in flight is abandoned)."""
        tasks: list[asyncio.Future[Any]] = list(self._tasks)
        if self._fetching is not None:
            tasks.append(self._fetching)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._fetching = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


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
    """Verifies bearer JWTs against the keys in use (``KeySet``) and the claims."""

    def __init__(self, settings: Settings, keys: list[_Key] | None = None) -> None:
        self.settings = settings
        self.algorithms = frozenset(settings.jwt_algorithm_list)
        self.keyset = KeySet(settings, keys)
        # Verified tokens, so a client reusing its token pays for the signature
        # check once; entries are re-checked against exp on every hit, and all
        # are dropped when the keys change (a removed key's tokens must fail).
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._generation = self.keyset.generation

    @property
    def keys(self) -> tuple[_Key, ...]:
        """The keys in use now."""
        return self.keyset.keys

    @property
    def fetches_keys(self) -> bool:
        """Whether an unknown ``kid`` can be looked up at the JWKS URL."""
        return self.keyset.endpoint is not None

    async def start(self) -> None:
        """Server start-up: the first JWKS fetch, then the key watching (``KeySet.start``)."""
        await self.keyset.start()

    async def close(self) -> None:
        """Server shutdown: stop the key watching."""
        await self.keyset.close()

    def authenticate(self, metadata: Iterable[tuple[str, Any]] | None) -> Principal:
        """The caller of an RPC with ``metadata`` (raises errors.Unauthenticated;
        ``UnknownKeyId`` when the token's ``kid`` is not among the keys in use)."""
        token = bearer_token(metadata)
        if self._generation != self.keyset.generation:
            self._cache = {}
            self._generation = self.keyset.generation
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

    async def authenticate_after_refetch(
        self, metadata: Iterable[tuple[str, Any]] | None
    ) -> Principal:
        """``authenticate``, once more after a JWKS fetch for an unknown ``kid``
        (rate-limited, bounded wait: ``KeySet.refetch_for_unknown_kid``)."""
        try:
            return self.authenticate(metadata)
        except UnknownKeyId:
            if not await self.keyset.refetch_for_unknown_kid():
                raise
        return self.authenticate(metadata)

    def _candidates(self, alg: str, kid: Any) -> tuple[list[_Key], bool]:
        """The keys to try, and whether the token's kid is unknown."""
        keyset = self.keyset
        keys = [k for k in keyset.keys if alg in k.algorithms]
        unknown = False
        if kid is None:
            keys = [k for k in keys if k.kid is None]
            if not keys and keyset.has_jwks:
                raise errors.Unauthenticated("token has no 'kid' header")
        else:
            if not isinstance(kid, str):
                raise errors.Unauthenticated("malformed token")
            by_kid = [k for k in keys if k.kid == kid]
            unknown = not by_kid and not any(k.kid == kid for k in keyset.keys)
            # A static key (PEM file, secret) verifies tokens whatever their kid.
            keys = by_kid or [k for k in keys if k.kid is None]
            if not keys and keyset.has_jwks:
                if unknown:
                    raise UnknownKeyId("unknown token key id")
                raise errors.Unauthenticated(f"no key of that kid accepts algorithm {alg!r}")
        if not keys:
            raise errors.Unauthenticated(f"no key accepts algorithm {alg!r}")
        return keys, unknown

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise errors.Unauthenticated("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            shown = alg if isinstance(alg, str) and len(alg) <= 16 else "?"
            raise errors.Unauthenticated(f"token algorithm {shown!r} not allowed")
        # jku/x5u/jwk/x5c are deliberately never looked at: a token never decides
        # where keys come from.
        s = self.settings
        options: dict[str, Any] = {
            "require": ["exp"],
            "verify_aud": s.jwt_audience is not None,
            "verify_iss": s.jwt_issuer is not None,
        }
        failure: jwt.InvalidTokenError | None = None
        candidates, unknown_kid = self._candidates(alg, header.get("kid"))
        for key in candidates:
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
        if unknown_kid and self.fetches_keys:
            # The static keys tried do not verify it; the identity service may
            # have published its kid since the last fetch.
            raise UnknownKeyId("unknown token key id")
        raise errors.Unauthenticated(_message(failure))


# --- the interceptor ---------------------------------------------------------------

#: An auth check: None when the call may go on, or an awaitable that decides
#: (the token's kid is unknown and the JWKS is being fetched). Raises to refuse.
_Check = Callable[[aio.ServicerContext], Awaitable[None] | None]


def _wrap(behavior: Callable[..., Any], check: _Check) -> Callable[..., Any]:
    """``behavior`` run after ``check(context)``, of the same kind (coroutine or async gen).

    Like ``handlers.before``, but the check may have to wait (for a JWKS fetch).
    """
    if inspect.isasyncgenfunction(behavior):

        async def gen(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            pending = check(context)
            if pending is not None:
                await pending
            async for item in behavior(request, context):
                yield item

        return gen

    async def unary(request: Any, context: aio.ServicerContext) -> Any:
        pending = check(context)
        if pending is not None:
            await pending
        result = behavior(request, context)
        if inspect.isawaitable(result):
            result = await result
        return result

    return unary


def _refusal(check: _Check) -> grpc.RpcMethodHandler:
    """A handler for a path no entry allows: runs ``check`` (which raises), reads nothing.

    Stream-stream with raw bytes fits whatever kind of call the client made.
    """

    async def refuse(request_iterator: Any, context: aio.ServicerContext) -> None:
        pending = check(context)
        if pending is not None:
            await pending
        raise errors.Unimplemented("unknown method")  # pragma: no cover - check() raises

    return grpc.stream_stream_rpc_method_handler(refuse)


class AuthInterceptor(LayerInterceptor):
    """Checks the caller's token and scope before the handler; sets the subject.

    Installed only with ``auth_mode=jwt``; with auth off the error-mapping
    interceptor records every caller as ``anonymous``.
    """

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator
        super().__init__()

    def wrap_handler(
        self, method: str, handler: grpc.RpcMethodHandler | None
    ) -> grpc.RpcMethodHandler | None:
        """``handler`` behind the token and scope check (``api/dispatch.HandlerLayer``).

        A method nobody serves (``handler`` None) or that no scope opens gets a
        handler that refuses: an unauthenticated caller learns nothing of the
        paths the server has.
        """
        auth = self.authenticator
        if method in PUBLIC_METHODS and handler is not None:
            return handler
        required = METHOD_SCOPES.get(method)

        def admit(principal: Principal) -> None:
            subject_var.set(principal.subject)
            if handler is None:
                raise errors.Unimplemented(f"unknown method {method[:200]!r}")
            if required is None:
                raise errors.PermissionDenied(f"method {method[:200]!r} is not open to callers")
            if required not in principal.scopes:
                raise errors.PermissionDenied(f"this call needs the {required!r} scope")

        async def admit_after_refetch(metadata: Any) -> None:
            admit(await auth.authenticate_after_refetch(metadata))

        def check(context: aio.ServicerContext) -> Awaitable[None] | None:
            # Runs inside the RPC (so the error mapping logs and maps it), in
            # the RPC's own context (so the subject stays with this call).
            # Synchronous unless the token's kid is unknown and a JWKS URL is set.
            metadata = context.invocation_metadata()
            try:
                principal = auth.authenticate(metadata)
            except UnknownKeyId:
                if not auth.fetches_keys:
                    raise
                return admit_after_refetch(metadata)
            admit(principal)
            return None

        if handler is None or required is None:
            return _refusal(check)
        return rewrap_handler(handler, lambda behavior, _req, _resp: _wrap(behavior, check))

    def _keep(self, method: str, handler: grpc.RpcMethodHandler | None) -> bool:
        # A refusal of a path no scope opens is not kept: callers choose those paths.
        return handler is not None and METHOD_SCOPES.get(method) is not None


def build_auth_interceptor(settings: Settings) -> AuthInterceptor | None:
    """The interceptor for ``settings``: None when auth is off; ConfigError for bad keys.

    The server starts and closes its authenticator with the other components
    (the first JWKS fetch happens in ``Authenticator.start``).
    """
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
    "KeySet",
    "Principal",
    "UnknownKeyId",
    "bearer_token",
    "build_auth_interceptor",
    "load_keys",
    "scopes_of",
]
