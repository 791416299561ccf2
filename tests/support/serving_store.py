"""An in-memory ``ModelStore`` for serving unit tests (a fake, not a mock).

It honours the interface's contract where serving depends on it: numbered
versions, aliases, listeners called after every change, NotFound for
unknown names, and sha256-checked reads (``tamper`` changes the stored
bytes so that the next read fails the check with Unavailable).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path

from highpeaks_ml.errors import FailedPrecondition, NotFound, Unavailable
from highpeaks_ml.registry.base import (
    ArtifactInfo,
    ModelInfo,
    ModelStore,
    VersionMeta,
    artifact_media_type,
)


class MemoryStore(ModelStore):
    """Model versions and aliases in a dict, safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[str, dict[int, tuple[bytes, VersionMeta]]] = {}
        self._aliases: dict[str, dict[str, int]] = {}
        self._listeners: list[Callable[[str], None]] = []
        self._artifacts: dict[tuple[str, int], dict[str, bytes]] = {}
        self.reads = 0

    def _changed(self, name: str) -> None:
        for cb in list(self._listeners):
            cb(name)

    def list_models(self) -> list[ModelInfo]:
        with self._lock:
            names = sorted(n for n, v in self._versions.items() if v)
        return [self.get_model(n) for n in names]

    def get_model(self, name: str) -> ModelInfo:
        with self._lock:
            versions = self._versions.get(name)
            if not versions:
                raise NotFound(f"model {name!r} not found")
            metas = tuple(m for _, (_, m) in sorted(versions.items()))
            return ModelInfo(name, metas, dict(self._aliases.get(name, {})))

    def resolve(
        self, name: str, version: int | None = None, alias: str | None = None
    ) -> VersionMeta:
        info = self.get_model(name)
        if alias is not None:
            if alias not in info.aliases:
                raise NotFound(f"model {name!r} has no alias {alias!r}")
            version = info.aliases[alias]
        if version is None:
            return info.latest
        for m in info.versions:
            if m.version == version:
                return m
        raise NotFound(f"model {name!r} has no version {version}")

    def read_model(self, name: str, version: int) -> bytes:
        meta = self.resolve(name, version)
        with self._lock:
            data = self._versions[name][version][0]
            self.reads += 1
        if hashlib.sha256(data).hexdigest() != meta.sha256:
            raise Unavailable(
                f"model {name!r} version {version} failed its integrity check (sha256 mismatch)"
            )
        return data

    def iter_model_chunks(self, name: str, version: int, chunk_size: int) -> Iterator[bytes]:
        data = self.read_model(name, version)
        for i in range(0, len(data), chunk_size):
            yield data[i : i + chunk_size]

    def publish(
        self,
        name: str,
        onnx_bytes: bytes,
        meta: VersionMeta,
        aliases: tuple[str, ...] = (),
        artifacts: Mapping[str, bytes] | None = None,
    ) -> VersionMeta:
        listed = tuple(
            ArtifactInfo(a, hashlib.sha256(d).hexdigest(), len(d), artifact_media_type(a))
            for a, d in sorted((artifacts or {}).items())
        )
        with self._lock:
            versions = self._versions.setdefault(name, {})
            number = max(versions, default=0) + 1
            stored = replace(
                meta,
                model_name=name,
                version=number,
                sha256=hashlib.sha256(onnx_bytes).hexdigest(),
                size_bytes=len(onnx_bytes),
                created_at=time.time(),
                artifacts=listed,
            )
            versions[number] = (onnx_bytes, stored)
            self._artifacts[(name, number)] = dict(artifacts or {})
            for a in aliases:
                self._aliases.setdefault(name, {})[a] = number
        self._changed(name)
        return stored

    def publish_file(
        self,
        name: str,
        onnx_path: Path,
        meta: VersionMeta,
        aliases: tuple[str, ...] = (),
        artifacts: Mapping[str, bytes] | None = None,
    ) -> VersionMeta:
        return self.publish(name, Path(onnx_path).read_bytes(), meta, aliases, artifacts)

    def read_artifact(self, name: str, version: int, artifact: str) -> bytes:
        self.resolve(name, version).artifact(artifact)
        with self._lock:
            return self._artifacts[(name, version)][artifact]

    def set_alias(self, name: str, alias: str, version: int) -> ModelInfo:
        self.resolve(name, version)
        with self._lock:
            self._aliases.setdefault(name, {})[alias] = version
        self._changed(name)
        return self.get_model(name)

    def delete_alias(self, name: str, alias: str) -> ModelInfo:
        with self._lock:
            if alias not in self._aliases.get(name, {}):
                raise NotFound(f"model {name!r} has no alias {alias!r}")
            del self._aliases[name][alias]
        self._changed(name)
        return self.get_model(name)

    def delete_version(
        self, name: str, version: int, force: bool = False
    ) -> tuple[ModelInfo | None, list[str]]:
        self.resolve(name, version)
        with self._lock:
            pointing = sorted(a for a, v in self._aliases.get(name, {}).items() if v == version)
            if pointing and not force:
                raise FailedPrecondition(f"version {version} has aliases {pointing}")
            for a in pointing:
                del self._aliases[name][a]
            del self._versions[name][version]
        self._changed(name)
        try:
            return self.get_model(name), pointing
        except NotFound:
            return None, pointing

    def add_listener(self, callback: Callable[[str], None]) -> None:
        self._listeners.append(callback)

    def recover(self) -> None:
        pass

    # --- test helpers -------------------------------------------------------

    def tamper(self, name: str, version: int, data: bytes = b"not an onnx model") -> None:
        """Replace a version's bytes behind the store's back (no listener call)."""
        with self._lock:
            _, meta = self._versions[name][version]
            self._versions[name][version] = (data, meta)

    def put_unchecked(self, name: str, data: bytes, meta: VersionMeta) -> VersionMeta:
        """Publish bytes whose sha256 is recorded correctly (for invalid-ONNX tests)."""
        return self.publish(name, data, meta)


class GatedStore(MemoryStore):
    """Resolving model "gated" waits for ``gate`` (then: NotFound): a prediction that
    stays in flight for as long as a test wants."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def resolve(
        self, name: str, version: int | None = None, alias: str | None = None
    ) -> VersionMeta:
        if name == "gated":
            self.gate.wait(20)
            raise NotFound("model 'gated' not found")
        return super().resolve(name, version, alias)
