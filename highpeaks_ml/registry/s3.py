"""The shared model store on S3-compatible object storage (``--store s3://bucket/prefix``).

Layout under ``s3://bucket/prefix/``::

    models/<name>/versions/<N>.json     version N's manifest: {"format", "upload", "meta"}
                                        (or a tombstone {"format", "deleted"} once deleted)
    models/<name>/aliases.json          {"aliases": {"production": 3, ...}}
    uploads/<name>/<id>/model.onnx      the ONNX bytes of one publish (immutable)
    uploads/<name>/<id>/artifacts/<a>   its artifacts (report, figures, profile)
    datasets/..., jobs/...              see registry/datasets.py and registry/jobrecords.py

How the local store's guarantees carry over (no locks exist on S3):

- **Commit point: the manifest.** A publish uploads the model and its
  artifacts under a fresh upload id first, then creates
  ``versions/<N>.json`` with ``If-None-Match: *``. Readers only look at
  manifests, so a crash before that leaves nothing visible (the orphan upload
  is removed by ``recover()`` a day later); after it, the version is complete.
- **Numbers without gaps or reuse.** ``N`` is one more than the highest
  manifest listed (tombstones included: a deleted version's key stays, so its
  number is never handed out again). Two writers that pick the same ``N``:
  one create wins, the other gets ``412 Precondition Failed`` and retries
  with ``N + 1``.
- **Aliases without lost updates.** ``aliases.json`` is replaced with
  ``If-Match: <etag it was read with>`` (``If-None-Match: *`` when it did
  not exist); a concurrent change makes the write fail with 412, and the
  change is re-applied to what is there now.
- **sha256 on every read.** Bytes fetched from the store, or from the local
  cache, are hashed and compared with the manifest before use.

Serving replicas follow the store by polling: the state (every manifest and
alias document) is cached in memory and revalidated at most every
``poll_s`` seconds with one ``LIST`` of ``models/`` (one request per 1,000
keys; blobs live under ``uploads/`` so they do not count), plus one ``GET``
per manifest or alias document whose ETag changed. Downloaded models are kept
in a bounded local cache directory, so a replica restarts its sessions
without the network and keeps loading what it has while the store is
unreachable; reads of the state then answer from the last successful poll.

The client is obstore (Rust ``object_store`` underneath): no Python
dependencies of its own (boto3's botocore pins ``python-dateutil<3`` and
``urllib3<3``, which conflict with ours), conditional puts
(``mode="create"`` / ``{"e_tag": ...}``), and built-in retries with
exponential backoff. Endpoint, region and credentials come from the standard
``AWS_*`` environment variables (and the shared credentials file), never
from flags.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import obstore
from obstore.exceptions import AlreadyExistsError, NotFoundError, PreconditionError
from obstore.store import S3Store

from highpeaks_ml.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from highpeaks_ml.registry.base import (
    ArtifactInfo,
    ModelInfo,
    ModelStore,
    ScratchLease,
    VersionMeta,
    aliases_pointing_at,
    artifact_media_type,
    check_model_digest,
    check_publish_args,
    corrupt_version,
    json_default,
    notify_listeners,
    unreadable_version,
    valid_name,
    validate_alias,
    validate_artifact_name,
    validate_name,
)

log = logging.getLogger("highpeaks_ml.registry")

FORMAT = 1
MODELS = "models/"
UPLOADS = "uploads/"
MODEL_FILE = "model.onnx"
ALIASES_FILE = "aliases.json"
#: Orphan uploads (a publish that crashed before its manifest) older than this are removed.
ORPHAN_AGE_S = 24 * 3600.0
#: Conditional-write retries before giving up (each one means another writer won a race).
_MAX_CONFLICTS = 50


# --- the connection ----------------------------------------------------------------


@dataclass(frozen=True)
class S3Location:
    """``s3://bucket/prefix`` split into its parts (prefix without slashes at the ends)."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """Parse ``s3://bucket[/prefix]``; ValueError when it is not one."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"{url!r} is not an s3://bucket/prefix URL")
        if parts.query or parts.fragment:
            raise ValueError(f"{url!r}: no query or fragment allowed")
        return cls(parts.netloc, parts.path.strip("/"))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def _shared_credentials() -> dict[str, str]:
    """Credentials and region of ``AWS_PROFILE`` (default ``default``) from the shared AWS
    files, for whatever the environment does not set (obstore reads only the environment)."""
    profile = os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE") or "default"
    home = Path.home()
    out: dict[str, str] = {}
    creds_file = Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE", home / ".aws" / "credentials"))
    config_file = Path(os.environ.get("AWS_CONFIG_FILE", home / ".aws" / "config"))
    for path, section in ((creds_file, profile), (config_file, _config_section(profile))):
        parser = configparser.ConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (OSError, configparser.Error):
            continue
        if not parser.has_section(section):
            continue
        sec = parser[section]
        for key, ours in (
            ("aws_access_key_id", "access_key_id"),
            ("aws_secret_access_key", "secret_access_key"),
            ("aws_session_token", "token"),
            ("region", "region"),
            ("endpoint_url", "endpoint"),
        ):
            if sec.get(key) and ours not in out:
                out[ours] = sec[key].strip()
    return out


def _config_section(profile: str) -> str:
    return "default" if profile == "default" else f"profile {profile}"


def connect(location: S3Location, *, subprefix: str = "") -> S3Store:
    """An obstore ``S3Store`` for ``location`` (plus ``subprefix``), configured from the
    standard AWS environment variables, then the shared AWS files.

    ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) selects an S3-compatible server
    (plain ``http://`` is allowed only when the endpoint says so); ``AWS_REGION``
    (default ``us-east-1``), ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
    ``AWS_SESSION_TOKEN``, ``AWS_WEB_IDENTITY_TOKEN_FILE`` + ``AWS_ROLE_ARN`` (EKS) and
    instance metadata are read by obstore itself.
    """
    env = os.environ
    config: dict[str, Any] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or ""
    if not (env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_WEB_IDENTITY_TOKEN_FILE")):
        shared = _shared_credentials()
        endpoint = endpoint or shared.pop("endpoint", "")
        if "region" in shared and not (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")):
            config["region"] = shared.pop("region")
        config.update({k: v for k, v in shared.items() if k not in ("region", "endpoint")})
    if endpoint:
        config["endpoint"] = endpoint
        # Path-style requests (bucket in the path): what S3-compatible servers expect.
        config["virtual_hosted_style_request"] = False
    if not (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")) and "region" not in config:
        config["region"] = "us-east-1"
    prefix = "/".join(p for p in (location.prefix, subprefix.strip("/")) if p)
    return S3Store(
        location.bucket,
        prefix=prefix or None,
        config=cast("Any", config),  # keys checked by obstore (S3Config)
        client_options={
            "allow_http": endpoint.startswith("http://"),
            "connect_timeout": timedelta(seconds=5),
            "timeout": timedelta(seconds=120),
        },
        # A brief outage is retried (connect errors, 5xx, throttling) for up to ~10 s;
        # beyond that the caller gets Unavailable and tries again later.
        retry_config={
            "max_retries": 4,
            "retry_timeout": timedelta(seconds=10),
            "backoff": {
                "init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(seconds=3),
                "base": 2.0,
            },
        },
    )


def first_line(exc: BaseException) -> str:
    """obstore's messages carry a multi-line debug dump: keep the useful first line."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def explain(exc: BaseException) -> str:
    """What went wrong talking to the store, in operator terms (never credentials)."""
    text = str(exc)
    if "169.254.169.254" in text or "api/token" in text:
        return (
            "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a web"
            " identity / instance role)"
        )
    if "SignatureDoesNotMatch" in text or "InvalidAccessKeyId" in text:
        return (
            "the store refused the credentials (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        )
    if "NoSuchBucket" in text:
        return "the bucket does not exist"
    if "AccessDenied" in text or "403 Forbidden" in text:
        return "access denied (check the credentials and the bucket policy)"
    if "Connect" in text or "error sending request" in text or "timed out" in text.lower():
        return "cannot connect to the object store endpoint"
    return first_line(exc)


def check_access(store: S3Store, location: S3Location) -> None:
    """One cheap LIST, so wrong credentials, a missing bucket or an unreachable endpoint
    fail at start-up (``ConfigError``) instead of at the first request."""
    from highpeaks_ml.config import ConfigError

    try:
        obstore.list_with_delimiter(store, MODELS)
    except Exception as exc:
        log.error("object store check failed: %s", first_line(exc))
        raise ConfigError(f"store {location}: {explain(exc)}") from None


def unavailable(exc: BaseException, what: str) -> Unavailable:
    """``Unavailable`` for a failed store request (details to the log only)."""
    log.warning("object store request failed (%s): %s", what, first_line(exc))
    return Unavailable(f"the model store is unreachable ({what}): {explain(exc)}; try again later")


def get_json(store: S3Store, key: str) -> tuple[Any, str] | None:
    """(document, etag) of a JSON object, or None when it does not exist."""
    try:
        result = obstore.get(store, key)
        data = bytes(result.bytes())
    except (FileNotFoundError, NotFoundError):
        return None
    return json.loads(data), str(result.meta.get("e_tag") or "")


def put_json(store: S3Store, key: str, doc: Any, mode: Any = None) -> str:
    """Write a JSON document (``mode``: "create", {"e_tag": ...} or None); its new etag."""
    body = json.dumps(doc, indent=1, sort_keys=True, default=json_default).encode()
    result = obstore.put(store, key, body, mode=mode)
    return str(result.get("e_tag") or "")


# --- the model store ---------------------------------------------------------------


@dataclass
class _Model:
    """One model's state as last read: live versions, their uploads, aliases, etags."""

    metas: dict[int, VersionMeta] = field(default_factory=dict)
    uploads: dict[int, str] = field(default_factory=dict)
    etags: dict[int, str] = field(default_factory=dict)
    deleted: set[int] = field(default_factory=set)
    aliases: dict[str, int] = field(default_factory=dict)
    aliases_etag: str = ""

    @property
    def high(self) -> int:
        return max([*self.metas, *self.deleted, 0])

    def info(self, name: str) -> ModelInfo | None:
        if not self.metas:
            return None
        metas = tuple(self.metas[v] for v in sorted(self.metas))
        aliases = {a: v for a, v in self.aliases.items() if v in self.metas}
        return ModelInfo(name, metas, aliases)


class _Scratch(ScratchLease):
    """A staging path in the store's local scratch directory."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        super().__init__(folder / f"scratch-{uuid.uuid4().hex}")


class S3ModelStore(ModelStore):
    """``ModelStore`` on an S3-compatible bucket (see the module docstring).

    ``local_dir`` holds the bounded cache of downloaded models
    (``cache_bytes``) and scratch files; it need not survive restarts.
    """

    def __init__(
        self,
        location: S3Location,
        local_dir: Path,
        *,
        poll_s: float = 5.0,
        cache_bytes: int = 2 * 1024**3,
        store: S3Store | None = None,
    ) -> None:
        self.location = location
        self.store = store if store is not None else connect(location)
        self.local_dir = Path(local_dir)
        self.cache_dir = self.local_dir / "cache"
        self.tmp_dir = self.local_dir / "tmp"
        self.poll_s = poll_s
        self.cache_bytes = cache_bytes
        self._listeners: list[Callable[[str], None]] = []
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._models: dict[str, _Model] = {}
        self._polled_at: float | None = None
        self._outage: str = ""
        #: Unknown model names looked up in the store -> when (monotonic).
        self._misses: dict[str, float] = {}
        self._fetch = ThreadPoolExecutor(max_workers=8, thread_name_prefix="s3-registry")
        #: Requests sent to the store, by kind (for the benchmark and the docs' cost figures).
        self.requests: dict[str, int] = {}

    # --- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Check access (``ConfigError`` at start-up), read the state, clean up leftovers."""
        check_access(self.store, self.location)
        self._count("list")
        self.recover()
        self._poll(force=True)

    def recover(self) -> None:
        """Remove local scratch leftovers and uploads no manifest refers to (a publish that
        crashed before its commit), once they are older than ``ORPHAN_AGE_S``."""
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._collect_orphans(time.time() - ORPHAN_AGE_S)
        except Exception as exc:  # housekeeping: never fatal
            log.warning("could not look for orphan uploads: %s", first_line(exc))

    def _collect_orphans(self, before: float) -> int:
        self._poll(force=True)
        with self._lock:
            used = {(n, u) for n, m in self._models.items() for u in m.uploads.values()}
        newest: dict[tuple[str, str], float] = {}
        keys: dict[tuple[str, str], list[str]] = {}
        for batch in obstore.list(self.store, UPLOADS, chunk_size=1000):
            for obj in batch:
                parts = obj["path"].split("/")
                if len(parts) < 4:
                    continue
                key = (parts[1], parts[2])
                newest[key] = max(newest.get(key, 0.0), obj["last_modified"].timestamp())
                keys.setdefault(key, []).append(obj["path"])
        doomed = [k for k, t in newest.items() if k not in used and t < before]
        for k in doomed:
            obstore.delete(self.store, keys[k])
        if doomed:
            log.warning("registry recovery removed %d orphan upload(s)", len(doomed))
        return len(doomed)

    def close(self) -> None:
        """Stop the fetch threads."""
        self._fetch.shutdown(wait=False, cancel_futures=True)

    def scratch(self) -> ScratchLease:
        """A staging path in the local scratch directory (cleaned at start-up)."""
        return _Scratch(self.tmp_dir)

    def add_listener(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(model_name)`` after every change made through this store."""
        self._listeners.append(callback)

    def _changed(self, name: str) -> None:
        notify_listeners(self._listeners, name)

    def _count(self, kind: str, n: int = 1) -> None:
        self.requests[kind] = self.requests.get(kind, 0) + n

    @property
    def outage(self) -> str:
        """Why the last poll failed ("" when it succeeded)."""
        return self._outage

    # --- polling -----------------------------------------------------------

    def _poll(self, force: bool = False, name: str | None = None) -> None:
        """Re-read the state when older than ``poll_s`` (or ``force``); ``name``: one model.

        A failed poll keeps the last state (logged once per outage) when there is one;
        without any state it raises Unavailable.
        """
        with self._poll_lock:
            now = time.monotonic()
            if (
                not force
                and name is None
                and self._polled_at is not None
                and now - self._polled_at < self.poll_s
            ):
                return
            try:
                self._read_state(name)
            except Exception as exc:
                if name is None:
                    self._polled_at = now  # the next attempt after poll_s, not at once
                if not self._outage:
                    log.warning("the model store is unreachable: %s", first_line(exc))
                self._outage = explain(exc)
                if self._polled_at is None or force or name is not None:
                    raise unavailable(exc, "reading the registry") from None
                return
            if self._outage:
                log.info("the model store is reachable again")
            self._outage = ""
            if name is None:
                self._polled_at = now

    def _read_state(self, only: str | None) -> None:
        prefix = f"{MODELS}{only}/" if only else MODELS
        listed: dict[str, dict[str, str]] = {}
        pages = 0
        for batch in obstore.list(self.store, prefix, chunk_size=1000):
            pages += 1
            for obj in batch:
                parts = obj["path"].split("/")
                if len(parts) < 3 or not valid_name(parts[1]):
                    continue
                listed.setdefault(parts[1], {})["/".join(parts[2:])] = str(obj["e_tag"] or "")
        self._count("list", max(pages, 1))
        with self._lock:
            old = dict(self._models)
        fresh: dict[str, _Model] = {}
        jobs: list[tuple[str, int, str, Any]] = []
        for name, keys in listed.items():
            before = old.get(name, _Model())
            model = _Model()
            for key, etag in keys.items():
                if key == ALIASES_FILE:
                    if etag and etag == before.aliases_etag:
                        model.aliases, model.aliases_etag = before.aliases, etag
                    else:
                        jobs.append((name, 0, etag, self._fetch.submit(self._get_aliases, name)))
                    continue
                number = _version_number(key)
                if number is None:
                    continue
                if etag and before.etags.get(number) == etag:
                    model.etags[number] = etag
                    if number in before.deleted:
                        model.deleted.add(number)
                    elif number in before.metas:
                        model.metas[number] = before.metas[number]
                        model.uploads[number] = before.uploads[number]
                    continue
                future = self._fetch.submit(get_json, self.store, _manifest_key(name, number))
                jobs.append((name, number, etag, future))
            fresh[name] = model
        for name, number, _etag, future in jobs:
            result = future.result()
            model = fresh[name]
            if number == 0:
                model.aliases, model.aliases_etag = result
                continue
            self._count("get")
            if result is None:
                continue  # deleted between LIST and GET: the next poll sees it
            doc, etag = result
            model.etags[number] = etag
            parsed = _parse_manifest(name, number, doc)
            if parsed is None:
                model.deleted.add(number)
            else:
                model.metas[number], model.uploads[number] = parsed
        with self._lock:
            if only is None:
                self._models = fresh
            elif only in fresh:
                self._models[only] = fresh[only]
            else:
                self._models.pop(only, None)

    def _get_aliases(self, name: str) -> tuple[dict[str, int], str]:
        self._count("get")
        result = get_json(self.store, _aliases_key(name))
        if result is None:
            return {}, ""
        doc, etag = result
        return _parse_aliases(doc), etag

    def _model(self, name: str) -> _Model:
        self._poll()
        with self._lock:
            return self._models.get(name) or _Model()

    # --- reads -------------------------------------------------------------

    def list_models(self) -> list[ModelInfo]:
        """Every model with at least one version (state at most ``poll_s`` old)."""
        self._poll()
        with self._lock:
            models = sorted(self._models.items())
        return [info for name, m in models if (info := m.info(name)) is not None]

    def get_model(self, name: str) -> ModelInfo:
        """One model; NotFound when it has no versions."""
        validate_name(name)
        info = self._model(name).info(name)
        now = time.monotonic()
        if info is None and now - self._misses.get(name, -self.poll_s) >= self.poll_s:
            # Maybe created since the last poll (by another process): look, at most once
            # per poll interval and name, so requests for unknown names cost no requests.
            with self._lock:
                if len(self._misses) > 10_000:
                    self._misses.clear()
                self._misses[name] = now
            with contextlib.suppress(Unavailable):
                self._poll(name=name)
            with self._lock:
                model = self._models.get(name)
            info = model.info(name) if model is not None else None
        if info is None:
            raise NotFound(f"model {name!r} not found")
        return info

    def _upload_of(self, name: str, version: int) -> str:
        with self._lock:
            model = self._models.get(name)
            upload = model.uploads.get(version) if model else None
        if upload is None:
            raise NotFound(f"model {name!r} has no version {version}")
        return upload

    def read_model(self, name: str, version: int) -> bytes:
        """The ONNX bytes, from the local cache or the store, checked against the sha256."""
        meta = self.resolve(name, version)
        cached = self._cache_path(meta)
        try:
            data = cached.read_bytes()
        except OSError:
            data = b""
        if data and _matches(data, meta.size_bytes, meta.sha256):
            with contextlib.suppress(OSError):
                os.utime(cached)  # most recently used
            return data
        upload = self._upload_of(name, version)
        try:
            self._count("get")
            data = bytes(obstore.get(self.store, _blob_key(name, upload, MODEL_FILE)).bytes())
        except (FileNotFoundError, NotFoundError):
            raise unreadable_version(meta, missing=True) from None
        except Exception as exc:
            raise unavailable(exc, f"loading model {name!r} version {version}") from None
        if not _matches(data, meta.size_bytes, meta.sha256):
            raise corrupt_version(meta)
        self._cache_put(cached, data)
        return data

    def iter_model_chunks(self, name: str, version: int, chunk_size: int) -> Iterator[bytes]:
        """The ONNX bytes in chunks (checked as a whole before the first chunk)."""
        if chunk_size < 1:
            raise InvalidArgument("chunk_size must be positive")
        data = self.read_model(name, version)
        return (data[i : i + chunk_size] for i in range(0, len(data), chunk_size))

    def read_artifact(self, name: str, version: int, artifact: str) -> bytes:
        """One artifact's bytes, checked against the sha256 its version lists."""
        validate_artifact_name(artifact)
        meta = self.resolve(name, version)
        listed = meta.artifact(artifact)
        upload = self._upload_of(name, version)
        key = _blob_key(name, upload, f"artifacts/{artifact}")
        try:
            self._count("get")
            data = bytes(obstore.get(self.store, key).bytes())
        except (FileNotFoundError, NotFoundError):
            raise Unavailable(
                f"artifact {artifact!r} of model {name!r} version {version}"
                " cannot be read from storage"
            ) from None
        except Exception as exc:
            raise unavailable(exc, f"reading an artifact of model {name!r}") from None
        if not _matches(data, listed.size_bytes, listed.sha256):
            log.error("artifact sha256 mismatch", extra={"model": name, "version": version})
            raise Unavailable(
                f"artifact {artifact!r} of model {name!r} version {version} failed its"
                " integrity check (sha256 mismatch)"
            )
        return data

    # --- the local cache of downloaded models --------------------------------

    def _cache_path(self, meta: VersionMeta) -> Path:
        return self.cache_dir / meta.model_name / f"{meta.version}-{meta.sha256}.onnx"

    def _cache_put(self, path: Path, data: bytes) -> None:
        if self.cache_bytes <= 0 or len(data) > self.cache_bytes:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            self._cache_evict()
        except OSError as exc:  # a cache: never fatal
            log.warning("could not cache a downloaded model: %s", exc.strerror)

    def _cache_evict(self) -> None:
        files = []
        for p in self.cache_dir.glob("*/*.onnx"):
            with contextlib.suppress(OSError):
                st = p.stat()
                files.append((st.st_mtime, st.st_size, p))
        total = sum(size for _t, size, _p in files)
        for _mtime, size, p in sorted(files):
            if total <= self.cache_bytes:
                break
            p.unlink(missing_ok=True)
            total -= size

    # --- writes ------------------------------------------------------------

    def publish(
        self,
        name: str,
        onnx_bytes: bytes,
        meta: VersionMeta,
        aliases: tuple[str, ...] = (),
        artifacts: Mapping[str, bytes] | None = None,
    ) -> VersionMeta:
        """Register ``onnx_bytes`` (and ``artifacts``) as the next version of ``name``."""
        check_publish_args(name, meta, aliases, artifacts)
        if not onnx_bytes:
            raise InvalidArgument("the model file is empty")
        digest = hashlib.sha256(onnx_bytes).hexdigest()
        size = len(onnx_bytes)
        if self._publish_check is not None:
            # The check reads a file: a local scratch copy, removed right after.
            with self.scratch() as lease:
                lease.path.write_bytes(onnx_bytes)
                self.check_publishable(
                    lease.path, replace(meta, model_name=name, sha256=digest, size_bytes=size)
                )
        return self._commit(name, onnx_bytes, digest, size, meta, aliases, artifacts)

    def publish_file(
        self,
        name: str,
        onnx_path: Path,
        meta: VersionMeta,
        aliases: tuple[str, ...] = (),
        artifacts: Mapping[str, bytes] | None = None,
    ) -> VersionMeta:
        """Register the file at ``onnx_path``; it is removed after a successful publish."""
        check_publish_args(name, meta, aliases, artifacts)
        src = Path(onnx_path)
        if not src.is_file():
            raise InvalidArgument("the model file to publish does not exist")
        h = hashlib.sha256()
        size = 0
        with open(src, "rb") as f:
            while block := f.read(1024 * 1024):
                h.update(block)
                size += len(block)
        digest = h.hexdigest()
        check_model_digest(name, meta, digest, size)
        self.check_publishable(src, replace(meta, model_name=name, sha256=digest, size_bytes=size))
        stored = self._commit(name, src, digest, size, meta, aliases, artifacts)
        src.unlink(missing_ok=True)
        return stored

    def _checkpoint(self, point: str) -> None:
        """A seam for crash tests: called at "model-written" (uploads done, before the
        manifest) and "committed" (manifest created, before the aliases)."""

    def _commit(
        self,
        name: str,
        body: bytes | Path,
        digest: str,
        size: int,
        meta: VersionMeta,
        aliases: tuple[str, ...],
        artifacts: Mapping[str, bytes] | None,
    ) -> VersionMeta:
        upload = uuid.uuid4().hex
        try:
            listing = []
            for artifact in sorted(artifacts or {}):
                data = bytes((artifacts or {})[artifact])
                obstore.put(self.store, _blob_key(name, upload, f"artifacts/{artifact}"), data)
                self._count("put")
                listing.append(
                    ArtifactInfo(
                        artifact,
                        hashlib.sha256(data).hexdigest(),
                        len(data),
                        artifact_media_type(artifact),
                    )
                )
            obstore.put(self.store, _blob_key(name, upload, MODEL_FILE), body)
            self._count("put")
            self._checkpoint("model-written")
            stored = self._create_manifest(name, upload, digest, size, meta, tuple(listing))
        except (InvalidArgument, NotFound, FailedPrecondition):
            raise
        except Unavailable:
            raise
        except Exception as exc:
            raise unavailable(exc, f"publishing model {name!r}") from None
        self._checkpoint("committed")
        if aliases:
            self._update_aliases(
                name, lambda current: current.update(dict.fromkeys(aliases, stored.version))
            )
        log.info(
            "published model version",
            extra={"model": name, "version": stored.version, "sha256": digest, "bytes": size},
        )
        self._poll(name=name)
        self._changed(name)
        return stored

    def _create_manifest(
        self,
        name: str,
        upload: str,
        digest: str,
        size: int,
        meta: VersionMeta,
        listing: tuple[ArtifactInfo, ...],
    ) -> VersionMeta:
        self._poll(name=name)
        with self._lock:
            model = self._models.get(name) or _Model()
            number = model.high + 1
        for _ in range(_MAX_CONFLICTS):
            stored = replace(
                meta,
                model_name=name,
                version=number,
                created_at=time.time(),
                sha256=digest,
                size_bytes=size,
                artifacts=listing,
            )
            doc = {"format": FORMAT, "upload": upload, "meta": stored.to_dict()}
            try:
                put_json(self.store, _manifest_key(name, number), doc, mode="create")
                self._count("put")
                return stored
            except (AlreadyExistsError, PreconditionError):
                # Another writer took this number: the next one (never a gap, never reuse).
                self._count("put")
                number += 1
        raise Unavailable(f"too many concurrent publishes of model {name!r}; try again")

    def _update_aliases(self, name: str, change: Callable[[dict[str, int]], Any]) -> Any:
        """Apply ``change`` to the alias document with If-Match, re-reading on a conflict.

        Returns what ``change`` returned for the version that was written.
        """
        for _ in range(_MAX_CONFLICTS):
            try:
                self._count("get")
                found = get_json(self.store, _aliases_key(name))
                current, etag = (_parse_aliases(found[0]), found[1]) if found else ({}, "")
                before = dict(current)
                outcome = change(current)
                if current == before:
                    return outcome
                mode: Any = {"e_tag": etag} if etag else "create"
                put_json(
                    self.store, _aliases_key(name), {"aliases": dict(sorted(current.items()))}, mode
                )
                self._count("put")
                return outcome
            except (AlreadyExistsError, PreconditionError):
                self._count("put")
                continue  # someone else changed the aliases meanwhile: re-apply to theirs
            except (InvalidArgument, NotFound, FailedPrecondition):
                raise
            except Exception as exc:
                raise unavailable(exc, f"updating the aliases of model {name!r}") from None
        raise Unavailable(f"too many concurrent alias changes on model {name!r}; try again")

    def _live_versions(self, name: str) -> _Model:
        self._poll(name=name)
        with self._lock:
            model = self._models.get(name)
        if model is None or not model.metas:
            raise NotFound(f"model {name!r} not found")
        return model

    def set_alias(self, name: str, alias: str, version: int) -> ModelInfo:
        """Point ``alias`` at ``version`` (If-Match on the alias document)."""
        validate_name(name)
        validate_alias(alias)
        if not isinstance(version, int) or version < 1:
            raise InvalidArgument(f"invalid version {version!r}: versions start at 1")
        model = self._live_versions(name)
        if version not in model.metas:
            raise NotFound(f"model {name!r} has no version {version}")
        self._update_aliases(name, lambda current: current.__setitem__(alias, version))
        self._poll(name=name)
        self._changed(name)
        return self.get_model(name)

    def delete_alias(self, name: str, alias: str) -> ModelInfo:
        """Remove ``alias``; NotFound when the model or the alias does not exist."""
        validate_name(name)
        validate_alias(alias)
        self._live_versions(name)

        def drop(current: dict[str, int]) -> None:
            if alias not in current:
                raise NotFound(f"model {name!r} has no alias {alias!r}")
            del current[alias]

        self._update_aliases(name, drop)
        self._poll(name=name)
        self._changed(name)
        return self.get_model(name)

    def delete_version(
        self, name: str, version: int, force: bool = False
    ) -> tuple[ModelInfo | None, list[str]]:
        """Delete a version: aliases first, then a tombstone replaces its manifest (so the
        number is never reused), then its uploads."""
        validate_name(name)
        if not isinstance(version, int) or version < 1:
            raise InvalidArgument(f"invalid version {version!r}: versions start at 1")
        model = self._live_versions(name)
        if version not in model.metas:
            raise NotFound(f"model {name!r} has no version {version}")
        upload = model.uploads[version]

        def unpoint(current: dict[str, int]) -> list[str]:
            pointing = aliases_pointing_at(name, version, current, force)
            for a in pointing:
                del current[a]
            return pointing

        pointing: list[str] = self._update_aliases(name, unpoint)
        try:
            tombstone = {"format": FORMAT, "deleted": True, "deleted_at": time.time()}
            put_json(self.store, _manifest_key(name, version), tombstone)
            self._count("put")
            blobs = [
                o["path"]
                for batch in obstore.list(self.store, f"{UPLOADS}{name}/{upload}/", chunk_size=1000)
                for o in batch
            ]
            if blobs:
                obstore.delete(self.store, blobs)
        except Exception as exc:
            raise unavailable(exc, f"deleting model {name!r} version {version}") from None
        log.info("deleted model version", extra={"model": name, "version": version})
        self._poll(name=name)
        self._changed(name)
        try:
            return self.get_model(name), pointing
        except NotFound:
            return None, pointing


# --- module helpers ------------------------------------------------------------------


def _manifest_key(name: str, number: int) -> str:
    return f"{MODELS}{name}/versions/{number}.json"


def _aliases_key(name: str) -> str:
    return f"{MODELS}{name}/{ALIASES_FILE}"


def _blob_key(name: str, upload: str, rest: str) -> str:
    return f"{UPLOADS}{name}/{upload}/{rest}"


def _version_number(key: str) -> int | None:
    if not key.startswith("versions/") or not key.endswith(".json"):
        return None
    number = key[len("versions/") : -len(".json")]
    return int(number) if number.isdigit() and int(number) > 0 else None


def _parse_manifest(name: str, number: int, doc: Any) -> tuple[VersionMeta, str] | None:
    """(meta, upload id) of a manifest; None for a tombstone or something unreadable."""
    if not isinstance(doc, dict) or doc.get("deleted"):
        return None
    try:
        meta = VersionMeta.from_dict(doc["meta"])
        upload = str(doc["upload"])
    except (KeyError, TypeError, ValueError):
        log.warning("model %r version %d has an unreadable manifest; skipped", name, number)
        return None
    if meta.model_name != name or meta.version != number:
        log.warning(
            "model %r version %d has the manifest of another version; skipped", name, number
        )
        return None
    return meta, upload


def _parse_aliases(doc: Any) -> dict[str, int]:
    aliases = doc.get("aliases", {}) if isinstance(doc, dict) else {}
    return {
        str(a): int(v)
        for a, v in aliases.items()
        if isinstance(v, int) and not isinstance(v, bool) and valid_name(str(a))
    }


def _matches(data: bytes, size: int, digest: str) -> bool:
    return len(data) == size and hashlib.sha256(data).hexdigest() == digest


__all__ = ["S3Location", "S3ModelStore", "check_access", "connect"]
