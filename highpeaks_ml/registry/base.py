"""Domain types of the model registry and the storage interface behind it.

The registry never imports grpc or generated code: the API layer converts
these dataclasses to and from protobuf. ``ModelStore`` is the small interface
a storage backend implements (the embedded default is a local directory;
a shared backend can be added for scaled-out serving).
"""

from __future__ import annotations

import abc
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from highpeaks_ml.errors import InvalidArgument

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
RESERVED_ALIASES = frozenset({"latest"})


def validate_name(value: str, what: str = "model name") -> str:
    """Check a model name, alias or dataset name against the naming rule.

    Lowercase letters, digits, '.', '_', '-', not starting with '.', '-' or
    '_', at most 63 characters. Raises InvalidArgument naming ``what``.
    """
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        shown = value if isinstance(value, str) and len(value) <= 80 else f"{str(value)[:40]}..."
        raise InvalidArgument(
            f"invalid {what} {shown!r}: use 1-63 lowercase letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    return value


def validate_alias(value: str) -> str:
    """An alias follows the naming rule, is not all digits and is not reserved."""
    validate_name(value, "alias")
    if value.isdigit() or value in RESERVED_ALIASES:
        raise InvalidArgument(f"invalid alias {value!r}: it must not be a number or 'latest'")
    return value


@dataclass(frozen=True)
class FeatureSpec:
    """One input feature (a training-data column), in model order."""

    name: str
    type: str  # "numeric" | "categorical"
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and shape of an ONNX input or output (-1 = dynamic)."""

    name: str
    dtype: str  # "float32" | "float64" | "int64" | "int32" | "bool" | "string"
    shape: tuple[int, ...]


@dataclass(frozen=True)
class VersionMeta:
    """Metadata of one immutable model version (stored next to model.onnx)."""

    model_name: str
    version: int
    created_at: float  # seconds since the epoch, UTC
    source: str  # "trained" | "imported"
    task: str  # "classification" | "regression" | ""
    algorithm: str = ""
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    features: tuple[FeatureSpec, ...] = ()
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    class_labels: tuple[str, ...] = ()
    # "int64" or "string": the ONNX label output's element type (classifiers).
    label_dtype: str = ""
    dataset: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    size_bytes: int = 0
    library_versions: dict[str, str] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    job_id: str = ""
    created_by: str = ""
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VersionMeta:
        """Inverse of ``to_dict`` (unknown keys are ignored, for forward compatibility)."""
        known = {f for f in cls.__dataclass_fields__}
        d = {k: v for k, v in data.items() if k in known}
        d["features"] = tuple(
            FeatureSpec(f["name"], f["type"], tuple(f.get("categories", ())))
            for f in d.get("features", ())
        )
        for key in ("inputs", "outputs"):
            d[key] = tuple(
                TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in d.get(key, ())
            )
        d["class_labels"] = tuple(d.get("class_labels", ()))
        return cls(**d)


@dataclass(frozen=True)
class ModelInfo:
    """A model name with its versions (ascending) and aliases."""

    name: str
    versions: tuple[VersionMeta, ...]
    aliases: dict[str, int]

    @property
    def latest(self) -> VersionMeta:
        """The highest-numbered version."""
        return self.versions[-1]

    def aliases_of(self, version: int) -> list[str]:
        """Aliases pointing at ``version``, sorted."""
        return sorted(a for a, v in self.aliases.items() if v == version)


class ScratchLease:
    """A private temporary path (not yet created) for staging data before a publish.

    The holder may create a file or a directory at ``path``; ``release()``
    removes whatever is there. Use it as a context manager. Stores hand out
    leases on the same filesystem as their versions, so that ``publish_file``
    can rename instead of copy.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._released = False

    def release(self) -> None:
        """Remove whatever was created at ``path`` (idempotent)."""
        if self._released:
            return
        self._released = True
        _remove_path(self.path)

    def __enter__(self) -> ScratchLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class _TempDirLease(ScratchLease):
    """Default lease: a path inside a fresh system temporary directory."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="highpeaks-ml-"))
        super().__init__(self._dir / "scratch")

    def release(self) -> None:
        super().release()
        shutil.rmtree(self._dir, ignore_errors=True)


class ModelStore(abc.ABC):
    """Storage of model versions and aliases.

    Implementations must make every change atomic (a reader sees the old
    state or the new one, never half), allocate version numbers without
    races between threads and processes, and verify each version's sha256
    when its bytes are read.
    """

    @abc.abstractmethod
    def list_models(self) -> list[ModelInfo]:
        """Every model, by name."""

    @abc.abstractmethod
    def get_model(self, name: str) -> ModelInfo:
        """One model; NotFound when it has no versions."""

    @abc.abstractmethod
    def resolve(
        self, name: str, version: int | None = None, alias: str | None = None
    ) -> VersionMeta:
        """A version by number, by alias, or the latest; NotFound when unknown."""

    @abc.abstractmethod
    def read_model(self, name: str, version: int) -> bytes:
        """The ONNX bytes of a version, sha256-checked (Unavailable on mismatch)."""

    @abc.abstractmethod
    def iter_model_chunks(self, name: str, version: int, chunk_size: int) -> Iterator[bytes]:
        """The ONNX bytes in chunks (sha256 checked before the first chunk)."""

    @abc.abstractmethod
    def publish(
        self, name: str, onnx_bytes: bytes, meta: VersionMeta, aliases: tuple[str, ...] = ()
    ) -> VersionMeta:
        """Register ``onnx_bytes`` as the next version of ``name``.

        ``meta.version``, ``sha256``, ``size_bytes`` and ``created_at`` are
        filled in by the store; the returned meta is what was stored.
        """

    @abc.abstractmethod
    def publish_file(
        self, name: str, onnx_path: Path, meta: VersionMeta, aliases: tuple[str, ...] = ()
    ) -> VersionMeta:
        """Like ``publish`` for a file already on disk (moved or copied in)."""

    @abc.abstractmethod
    def set_alias(self, name: str, alias: str, version: int) -> ModelInfo:
        """Create or move an alias atomically."""

    @abc.abstractmethod
    def delete_alias(self, name: str, alias: str) -> ModelInfo:
        """Remove an alias; NotFound when absent."""

    @abc.abstractmethod
    def delete_version(
        self, name: str, version: int, force: bool = False
    ) -> tuple[ModelInfo | None, list[str]]:
        """Delete a version; FailedPrecondition when aliased unless ``force``."""

    @abc.abstractmethod
    def add_listener(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(model_name)`` after every change made through this store."""

    @abc.abstractmethod
    def recover(self) -> None:
        """Start-up housekeeping: remove temporary leftovers of interrupted writes."""

    def scratch(self) -> ScratchLease:
        """A private temporary path for staging a file that will be passed to ``publish_file``.

        Backends override this to hand out a path on their own filesystem
        (so that the publish is a rename) that start-up recovery cleans up
        after a crash; this default uses the system temporary directory.
        """
        return _TempDirLease()
