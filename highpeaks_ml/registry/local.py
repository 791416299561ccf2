"""The embedded model store: one directory on a local (or volume-mounted) filesystem.

Layout under ``home``::

    models/<name>/versions/<N>/model.onnx   the ONNX file of version N (immutable)
    models/<name>/versions/<N>/meta.json    its VersionMeta (with the sha256 of model.onnx)
    models/<name>/versions/<N>/artifacts/<a> its artifacts (report, figures, profile), each
                                            listed with its sha256 in meta.json
    models/<name>/aliases.json              {"aliases": {"production": 3, ...}}
    models/<name>/high_water                highest version number ever allocated
    models/<name>/.lock                     flock(2) lock serialising changes to <name>
    tmp/registry-<id>[.lock]                staging areas (scratch leases) and their locks

How the guarantees are achieved:

- A version is assembled in a staging directory under ``tmp/`` (same
  filesystem), every file and the directory are fsynced, and the whole
  directory is renamed to ``versions/<N>`` in one ``rename(2)``; readers see
  no version or a complete one. The parent directory is fsynced afterwards.
- Version numbers are allocated under an exclusive ``flock`` on the model's
  ``.lock`` file, which serialises threads (each call opens its own file
  description) and processes alike; ``N = max(high_water, largest existing
  version) + 1``, and ``high_water`` is rewritten atomically, so a deleted
  latest version's number is never handed out again.
- ``aliases.json`` and ``high_water`` are replaced by temp file + fsync +
  rename under the same lock.
- Every staging area has a companion lock file that its owner holds; a
  crashed owner releases it, so ``recover()`` removes exactly the leftovers
  whose owner is gone (and leaves a concurrent process's staging alone).
- ``model.onnx`` is hashed on every read and compared with ``meta.json``;
  a mismatch refuses that version only. Artifacts are written into the same
  staging directory before the rename (so a version appears with all of them
  or not at all) and hashed on every read too.
- The publish check (``ModelStore.set_publish_check``; the server's proves
  that onnxruntime loads the version) runs on the staged file before a
  version number is taken: a refused version leaves no trace.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from highpeaks_ml.errors import InvalidArgument, NotFound, Unavailable
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
from highpeaks_ml.storage import TMP_SUFFIX, fsync_dir, write_atomic

log = logging.getLogger("highpeaks_ml.registry")

MODEL_FILE = "model.onnx"
META_FILE = "meta.json"
ARTIFACTS_DIR = "artifacts"
ALIASES_FILE = "aliases.json"
HIGH_WATER_FILE = "high_water"
LOCK_FILE = ".lock"
SCRATCH_PREFIX = "registry-"
_TRASH_PREFIX = ".trash-"
_TMP_SUFFIX = TMP_SUFFIX
_READ_CHUNK = 1024 * 1024


# --- small filesystem helpers ------------------------------------------------


def _mkdirs(path: Path) -> None:
    """mkdir -p that fsyncs each parent whose entries changed (so the new dirs survive a crash)."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
        fsync_dir(d.parent)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def _flocked(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive flock on ``path`` (created if missing) for the block.

    flock locks belong to the open file description, so two threads of one
    process that each open the file exclude each other just like processes do.
    With ``wait=False`` the block runs at once and gets False when the lock
    is held elsewhere.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if wait:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield True
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
            else:
                yield True
    finally:
        os.close(fd)  # closing releases the lock


class _LocalScratch(ScratchLease):
    """A staging path under ``<home>/tmp`` guarded by a held lock file.

    The owner holds ``registry-<id>.lock`` from before the path is created
    until after it is removed, so ``recover()`` (in any process) can tell a
    live staging area from the leftover of a crashed one.
    """

    def __init__(self, tmp_dir: Path) -> None:
        while True:
            ident = f"{SCRATCH_PREFIX}{uuid.uuid4().hex}"
            lock_path = tmp_dir / f"{ident}.lock"
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            # recover() may have grabbed and unlinked the file between open and
            # flock; then our lock guards nothing and we start over.
            try:
                same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd: int | None = fd
        self._lock_path = lock_path
        super().__init__(tmp_dir / ident)

    def release(self) -> None:
        if self._fd is None:
            return
        super().release()
        self._lock_path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


@dataclass
class _Cached:
    """A model's state as last read from disk, with the stat signature it was read under."""

    signature: tuple[Any, ...]
    checked_at: float
    info: ModelInfo | None
    high_water: int


class LocalModelStore(ModelStore):
    """``ModelStore`` on a local directory (the embedded default).

    Safe to share between threads and between processes (server replicas,
    workers) on the same filesystem. Reads are served from an in-memory
    cache that is revalidated against directory/file stat signatures at most
    every ``refresh_s`` seconds, so changes made by other processes become
    visible within that time and changes made through this instance at once.
    """

    def __init__(self, home: Path, *, refresh_s: float = 0.5) -> None:
        self.home = Path(home)
        self.models_dir = self.home / "models"
        self.tmp_dir = self.home / "tmp"
        self.refresh_s = refresh_s
        self._listeners: list[Callable[[str], None]] = []
        self._lock = threading.Lock()
        self._cache: dict[str, _Cached] = {}
        # (name, version) -> (inode of the version dir, meta): versions are immutable.
        self._metas: dict[tuple[str, int], tuple[int, VersionMeta]] = {}
        self._names: tuple[Any, float, list[str]] | None = None

    # --- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Create the directories and run ``recover()`` (called by App.start)."""
        _mkdirs(self.models_dir)
        _mkdirs(self.tmp_dir)
        self.recover()

    def recover(self) -> None:
        """Remove leftovers of interrupted writes (ours or another crashed process's).

        Staging areas under ``tmp/`` whose owner's lock is free, and temp or
        trash entries inside model directories (inspected under the model
        lock, so no live writer can own them). Other files in ``tmp/`` (for
        example training's) are left alone.
        """
        removed = 0
        if self.tmp_dir.is_dir():
            names = set(os.listdir(self.tmp_dir))
            for entry in sorted(names):
                if not entry.startswith(SCRATCH_PREFIX):
                    continue
                path = self.tmp_dir / entry
                if entry.endswith(".lock"):
                    if self._reclaim_scratch(path):
                        removed += 1
                elif f"{entry}.lock" not in names and not (self.tmp_dir / f"{entry}.lock").exists():
                    # The owner creates the lock before the entry and removes
                    # it after; an entry without a lock has no owner.
                    _remove(path)
                    removed += 1
        if self.models_dir.is_dir():
            for name in sorted(os.listdir(self.models_dir)):
                model_dir = self.models_dir / name
                if not model_dir.is_dir() or not valid_name(name):
                    continue
                with _flocked(model_dir / LOCK_FILE, wait=False) as locked:
                    if not locked:
                        continue  # a live writer holds it; its temp files are its own
                    for dirpath in (model_dir, model_dir / "versions"):
                        if not dirpath.is_dir():
                            continue
                        for entry in os.listdir(dirpath):
                            if entry.startswith(_TRASH_PREFIX) or entry.endswith(_TMP_SUFFIX):
                                _remove(dirpath / entry)
                                removed += 1
        if removed:
            log.warning("registry recovery removed %d leftover(s) of interrupted writes", removed)
        with self._lock:
            self._cache.clear()
            self._names = None

    def _reclaim_scratch(self, lock_path: Path) -> bool:
        try:
            fd = os.open(lock_path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a live owner
            _remove(lock_path.with_suffix(""))
            lock_path.unlink(missing_ok=True)
            return True
        finally:
            os.close(fd)

    def close(self) -> None:
        """Nothing to release: every operation closes what it opens."""

    def scratch(self) -> ScratchLease:
        """A staging path under ``<home>/tmp`` that ``recover()`` cleans after a crash."""
        _mkdirs(self.tmp_dir)
        return _LocalScratch(self.tmp_dir)

    def add_listener(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(model_name)`` after every change made through this store."""
        self._listeners.append(callback)

    def _changed(self, name: str) -> None:
        with self._lock:
            self._cache.pop(name, None)
            self._names = None
        notify_listeners(self._listeners, name)

    # --- reads -------------------------------------------------------------

    def _model_dir(self, name: str) -> Path:
        return self.models_dir / validate_name(name)

    def list_models(self) -> list[ModelInfo]:
        """Every model that has at least one version, by name."""
        out = []
        for name in self._model_names():
            cached = self._state(name)
            if cached.info is not None:
                out.append(cached.info)
        return out

    def _model_names(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            names = self._names
        if names is not None and now - names[1] < self.refresh_s:
            return names[2]
        sig = _stat_sig(self.models_dir)
        if names is not None and names[0] == sig:
            with self._lock:
                self._names = (sig, now, names[2])
            return names[2]
        try:
            found = sorted(n for n in os.listdir(self.models_dir) if valid_name(n))
        except FileNotFoundError:
            found = []
        with self._lock:
            self._names = (sig, now, found)
        return found

    def get_model(self, name: str) -> ModelInfo:
        """One model with its versions and aliases; NotFound when it has no versions."""
        validate_name(name)
        info = self._state(name).info
        if info is None:
            raise NotFound(f"model {name!r} not found")
        return info

    def read_model(self, name: str, version: int) -> bytes:
        """The bytes of model.onnx, checked against the stored sha256."""
        meta = self.resolve(name, version)
        path = self._version_dir(name, version) / MODEL_FILE
        try:
            data = path.read_bytes()
        except OSError:
            raise unreadable_version(meta) from None
        if len(data) != meta.size_bytes or hashlib.sha256(data).hexdigest() != meta.sha256:
            raise corrupt_version(meta)
        return data

    def iter_model_chunks(self, name: str, version: int, chunk_size: int) -> Iterator[bytes]:
        """The bytes in chunks; the whole file is hashed before the first chunk is yielded."""
        if chunk_size < 1:
            raise InvalidArgument("chunk_size must be positive")
        meta = self.resolve(name, version)
        path = self._version_dir(name, version) / MODEL_FILE
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed in the generator below
        except OSError:
            raise unreadable_version(meta) from None
        try:
            if not _file_matches(f, meta):
                raise corrupt_version(meta)
        except BaseException:
            f.close()
            raise
        return _Chunks(f, chunk_size)

    def read_artifact(self, name: str, version: int, artifact: str) -> bytes:
        """One artifact's bytes, checked against the sha256 listed in ``meta.json``."""
        validate_artifact_name(artifact)
        meta = self.resolve(name, version)
        info = meta.artifact(artifact)
        path = self._version_dir(name, version) / ARTIFACTS_DIR / artifact
        try:
            data = path.read_bytes()
        except OSError:
            log.error(
                "artifact unreadable",
                extra={"model": name, "version": version, "artifact": artifact},
            )
            raise Unavailable(
                f"artifact {artifact!r} of model {name!r} version {version} cannot be read"
                " from storage"
            ) from None
        if len(data) != info.size_bytes or hashlib.sha256(data).hexdigest() != info.sha256:
            log.error(
                "sha256 mismatch: refusing artifact",
                extra={"model": name, "version": version, "artifact": artifact},
            )
            raise Unavailable(
                f"artifact {artifact!r} of model {name!r} version {version} failed its"
                " integrity check (sha256 mismatch)"
            )
        return data

    def _version_dir(self, name: str, version: int) -> Path:
        return self._model_dir(name) / "versions" / str(version)

    def _state(self, name: str) -> _Cached:
        """The cached state of ``name``, revalidated when older than ``refresh_s``."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(name)
        if cached is not None and now - cached.checked_at < self.refresh_s:
            return cached
        model_dir = self.models_dir / name
        sig = (
            _stat_sig(model_dir / "versions"),
            _stat_sig(model_dir / ALIASES_FILE),
            _stat_sig(model_dir / HIGH_WATER_FILE),
        )
        if cached is not None and cached.signature == sig:
            cached.checked_at = now
            return cached
        fresh = self._read_state(name, sig, now)
        with self._lock:
            self._cache[name] = fresh
        return fresh

    def _read_state(self, name: str, sig: tuple[Any, ...], now: float) -> _Cached:
        model_dir = self.models_dir / name
        versions_dir = model_dir / "versions"
        metas: list[VersionMeta] = []
        highest = 0
        try:
            entries = list(os.scandir(versions_dir))
        except (FileNotFoundError, NotADirectoryError):
            entries = []
        for entry in entries:
            if not entry.name.isdigit() or not entry.is_dir(follow_symlinks=False):
                continue
            number = int(entry.name)
            highest = max(highest, number)
            meta = self._load_meta(name, number, entry)
            if meta is not None:
                metas.append(meta)
        metas.sort(key=lambda m: m.version)
        high_water = max(highest, _read_int(model_dir / HIGH_WATER_FILE))
        if not metas:
            return _Cached(sig, now, None, high_water)
        present = {m.version for m in metas}
        aliases = {a: v for a, v in _read_aliases(model_dir).items() if v in present}
        return _Cached(sig, now, ModelInfo(name, tuple(metas), aliases), high_water)

    def _load_meta(self, name: str, number: int, entry: os.DirEntry[str]) -> VersionMeta | None:
        key = (name, number)
        inode = entry.inode()
        with self._lock:
            hit = self._metas.get(key)
        if hit is not None and hit[0] == inode:
            return hit[1]
        try:
            raw = json.loads((Path(entry.path) / META_FILE).read_text("utf-8"))
            meta = VersionMeta.from_dict(raw)
        except (OSError, ValueError, TypeError, KeyError):
            # Cannot come from this store (meta.json is written before the
            # rename); someone edited the directory. Hide that version only.
            log.warning("model %r version %d has unreadable metadata; skipped", name, number)
            return None
        if meta.model_name != name or meta.version != number:
            log.warning(
                "model %r version %d has metadata of another version; skipped", name, number
            )
            return None
        with self._lock:
            self._metas[key] = (inode, meta)
        return meta

    # --- writes ------------------------------------------------------------

    def publish(
        self,
        name: str,
        onnx_bytes: bytes,
        meta: VersionMeta,
        aliases: tuple[str, ...] = (),
        artifacts: Mapping[str, bytes] | None = None,
    ) -> VersionMeta:
        """Register ``onnx_bytes`` (and ``artifacts``) as the next version of ``name``
        (see the module doc)."""
        check_publish_args(name, meta, aliases, artifacts)
        if not onnx_bytes:
            raise InvalidArgument("the model file is empty")
        with self.scratch() as lease:
            lease.path.mkdir()
            model_path = lease.path / MODEL_FILE
            with open(model_path, "wb") as f:
                f.write(onnx_bytes)
                f.flush()
                os.fsync(f.fileno())
            digest = hashlib.sha256(onnx_bytes).hexdigest()
            size = len(onnx_bytes)
            meta = replace(meta, artifacts=_stage_artifacts(lease.path, artifacts))
            self.check_publishable(
                model_path, replace(meta, model_name=name, sha256=digest, size_bytes=size)
            )
            return self._commit(name, lease.path, digest, size, meta, aliases)

    def publish_file(
        self,
        name: str,
        onnx_path: Path,
        meta: VersionMeta,
        aliases: tuple[str, ...] = (),
        artifacts: Mapping[str, bytes] | None = None,
    ) -> VersionMeta:
        """Register the file at ``onnx_path`` as the next version of ``name``.

        The file is moved in (a rename when it lives on the same filesystem,
        for example under ``<home>/tmp``; otherwise copied and the original
        removed): after a successful call ``onnx_path`` no longer exists. If
        ``meta.sha256`` is set it must match the file (InvalidArgument otherwise).
        """
        check_publish_args(name, meta, aliases, artifacts)
        src = Path(onnx_path)
        if not src.is_file():
            raise InvalidArgument("the model file to publish does not exist")
        with self.scratch() as lease:
            lease.path.mkdir()
            model_path = lease.path / MODEL_FILE
            try:
                os.rename(src, model_path)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.copyfile(src, model_path)
                src.unlink()
            try:
                with open(model_path, "rb+") as f:
                    h = hashlib.sha256()
                    size = 0
                    while block := f.read(_READ_CHUNK):
                        h.update(block)
                        size += len(block)
                    os.fsync(f.fileno())
                digest = h.hexdigest()
                check_model_digest(name, meta, digest, size)
                meta = replace(meta, artifacts=_stage_artifacts(lease.path, artifacts))
                # Outside the model's lock: the check may take seconds.
                self.check_publishable(
                    model_path, replace(meta, model_name=name, sha256=digest, size_bytes=size)
                )
                return self._commit(name, lease.path, digest, size, meta, aliases)
            except BaseException:
                # Not published: give the caller its file back.
                if model_path.exists() and not src.exists():
                    with contextlib.suppress(OSError):
                        shutil.move(model_path, src)
                raise

    def _checkpoint(self, point: str) -> None:
        """A seam for crash tests: called at "model-written" and "staged" (before the rename)."""

    def _commit(
        self,
        name: str,
        staging: Path,
        digest: str,
        size: int,
        meta: VersionMeta,
        aliases: tuple[str, ...],
    ) -> VersionMeta:
        self._checkpoint("model-written")
        model_dir = self.models_dir / name
        versions_dir = model_dir / "versions"
        _mkdirs(versions_dir)
        with _flocked(model_dir / LOCK_FILE):
            number = self._next_version(model_dir)
            while True:
                stored = replace(
                    meta,
                    model_name=name,
                    version=number,
                    created_at=time.time(),
                    sha256=digest,
                    size_bytes=size,
                )
                body = json.dumps(stored.to_dict(), indent=2, default=json_default)
                with open(staging / META_FILE, "w", encoding="utf-8") as f:
                    f.write(body)
                    f.flush()
                    os.fsync(f.fileno())
                fsync_dir(staging)
                self._checkpoint("staged")
                try:
                    os.rename(staging, versions_dir / str(number))
                    break
                except OSError as exc:
                    # The target exists (a high-water file lost by hand, say):
                    # never overwrite, take the next number.
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    number += 1
            fsync_dir(versions_dir)
            write_atomic(model_dir / HIGH_WATER_FILE, f"{number}\n".encode())
            if aliases:
                current = _read_aliases(model_dir)
                current.update(dict.fromkeys(aliases, number))
                _write_aliases(model_dir, current)
            # The staging path is gone (renamed); the lease's release() only
            # drops its lock file.
        with self._lock:
            self._metas[(name, number)] = (os.stat(versions_dir / str(number)).st_ino, stored)
        log.info(
            "published model version",
            extra={"model": name, "version": number, "sha256": digest, "bytes": size},
        )
        self._changed(name)
        return stored

    def _next_version(self, model_dir: Path) -> int:
        highest = _read_int(model_dir / HIGH_WATER_FILE)
        with contextlib.suppress(FileNotFoundError):
            for entry in os.listdir(model_dir / "versions"):
                if entry.isdigit():
                    highest = max(highest, int(entry))
        return highest + 1

    def _existing_model_dir(self, name: str) -> Path:
        model_dir = self._model_dir(name)
        if not (model_dir / "versions").is_dir():
            raise NotFound(f"model {name!r} not found")
        return model_dir

    def set_alias(self, name: str, alias: str, version: int) -> ModelInfo:
        """Point ``alias`` at ``version`` (creating or moving it) atomically."""
        validate_name(name)
        validate_alias(alias)
        if not isinstance(version, int) or version < 1:
            raise InvalidArgument(f"invalid version {version!r}: versions start at 1")
        model_dir = self._existing_model_dir(name)
        with _flocked(model_dir / LOCK_FILE):
            if not (model_dir / "versions" / str(version) / META_FILE).is_file():
                self._raise_missing(name, version)
            current = _read_aliases(model_dir)
            if current.get(alias) != version:
                current[alias] = version
                _write_aliases(model_dir, current)
        self._changed(name)
        return self.get_model(name)

    def delete_alias(self, name: str, alias: str) -> ModelInfo:
        """Remove ``alias``; NotFound when the model or the alias does not exist."""
        validate_name(name)
        validate_alias(alias)
        model_dir = self._existing_model_dir(name)
        with _flocked(model_dir / LOCK_FILE):
            current = _read_aliases(model_dir)
            if alias not in current:
                self.get_model(name)  # NotFound for a model without versions
                raise NotFound(f"model {name!r} has no alias {alias!r}")
            del current[alias]
            _write_aliases(model_dir, current)
        self._changed(name)
        return self.get_model(name)

    def delete_version(
        self, name: str, version: int, force: bool = False
    ) -> tuple[ModelInfo | None, list[str]]:
        """Delete a version; FailedPrecondition while aliases point at it unless ``force``.

        Returns the model afterwards (None when no version is left) and the
        aliases removed with it. The number is never reused.
        """
        validate_name(name)
        if not isinstance(version, int) or version < 1:
            raise InvalidArgument(f"invalid version {version!r}: versions start at 1")
        model_dir = self._existing_model_dir(name)
        versions_dir = model_dir / "versions"
        target = versions_dir / str(version)
        with _flocked(model_dir / LOCK_FILE):
            if not target.is_dir():
                self._raise_missing(name, version)
            current = _read_aliases(model_dir)
            pointing = aliases_pointing_at(name, version, current, force)
            # Record the high-water mark before the version disappears, so
            # its number is never allocated again.
            high = self._next_version(model_dir) - 1
            if _read_int(model_dir / HIGH_WATER_FILE) < high:
                write_atomic(model_dir / HIGH_WATER_FILE, f"{high}\n".encode())
            if pointing:
                for a in pointing:
                    del current[a]
                _write_aliases(model_dir, current)
            # One rename makes the version vanish; the slow removal follows.
            trash = model_dir / f"{_TRASH_PREFIX}{version}-{uuid.uuid4().hex}"
            os.rename(target, trash)
            fsync_dir(versions_dir)
            shutil.rmtree(trash, ignore_errors=True)
        with self._lock:
            self._metas.pop((name, version), None)
        log.info("deleted model version", extra={"model": name, "version": version})
        self._changed(name)
        try:
            return self.get_model(name), pointing
        except NotFound:
            return None, pointing

    def _raise_missing(self, name: str, version: int) -> None:
        self.get_model(name)  # NotFound for a model without versions
        raise NotFound(f"model {name!r} has no version {version}")


# --- module helpers ------------------------------------------------------------


def _stage_artifacts(
    staging: Path, artifacts: Mapping[str, bytes] | None
) -> tuple[ArtifactInfo, ...]:
    """Write ``artifacts`` under ``staging/artifacts`` (each fsynced, then the directory)
    and return their listing for ``meta.json``; () when there are none."""
    if not artifacts:
        return ()
    folder = staging / ARTIFACTS_DIR
    folder.mkdir()
    listed = []
    for artifact in sorted(artifacts):
        data = bytes(artifacts[artifact])
        with open(folder / artifact, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        listed.append(
            ArtifactInfo(
                name=artifact,
                sha256=hashlib.sha256(data).hexdigest(),
                size_bytes=len(data),
                media_type=artifact_media_type(artifact),
            )
        )
    fsync_dir(folder)
    return tuple(listed)


def _stat_sig(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _read_aliases(model_dir: Path) -> dict[str, int]:
    try:
        raw = json.loads((model_dir / ALIASES_FILE).read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError:
        log.warning("aliases of model %r are unreadable; ignored", model_dir.name)
        return {}
    aliases = raw.get("aliases", {}) if isinstance(raw, dict) else {}
    return {
        str(a): int(v)
        for a, v in aliases.items()
        if isinstance(v, int) and not isinstance(v, bool) and valid_name(str(a))
    }


def _write_aliases(model_dir: Path, aliases: dict[str, int]) -> None:
    body = json.dumps({"aliases": dict(sorted(aliases.items()))}, indent=2) + "\n"
    write_atomic(model_dir / ALIASES_FILE, body.encode())


def _file_matches(f: IO[bytes], meta: VersionMeta) -> bool:
    h = hashlib.sha256()
    size = 0
    while block := f.read(_READ_CHUNK):
        h.update(block)
        size += len(block)
    f.seek(0)
    return size == meta.size_bytes and h.hexdigest() == meta.sha256


class _Chunks(Iterator[bytes]):
    """Reads an open file in chunks; closes it at the end or on ``close()``."""

    def __init__(self, f: IO[bytes], chunk_size: int) -> None:
        self._f = f
        self._size = chunk_size

    def __next__(self) -> bytes:
        block = self._f.read(self._size) if not self._f.closed else b""
        if not block:
            self._f.close()
            raise StopIteration
        return block

    def close(self) -> None:
        """Close the file (also when iteration stopped early)."""
        self._f.close()


__all__ = ["LocalModelStore"]
