"""Domain types of the model registry and the storage interface behind it.

The registry never imports grpc or generated code: the API layer converts
these dataclasses to and from protobuf. ``ModelStore`` is the small interface
a storage backend implements (the embedded default is a local directory;
a shared backend can be added for scaled-out serving).
"""

from __future__ import annotations

import abc
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from highpeaks_ml.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    quote,
)

log = logging.getLogger("highpeaks_ml.registry")

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
RESERVED_ALIASES = frozenset({"latest"})


def validate_name(value: str, what: str = "model name") -> str:
    """Check a model name, alias or dataset name against the naming rule.

    Lowercase letters, digits, '.', '_', '-', not starting with '.', '-' or
    '_', at most 63 characters. Raises InvalidArgument naming ``what``.
    """
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise InvalidArgument(
            f"invalid {what} {quote(value)}: use 1-63 lowercase letters, digits, '.', '_' or '-',"
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
    #: Whether the model answers for a missing value of this feature (NaN or
    #: null for a numeric one, null for a categorical one) as scikit-learn does.
    #: Recorded at training time; False for versions recorded before the flag
    #: existed and for anything not known to handle it, so those keep refusing NaN.
    allows_missing: bool = False


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and shape of an ONNX input or output (-1 = dynamic)."""

    name: str
    dtype: str  # "float32" | "float64" | "int64" | "int32" | "bool" | "string"
    shape: tuple[int, ...]


#: Names of a version's artifacts: lowercase letters, digits, '.', '_', '-', at most 100
#: characters, with an extension that gives the media type (``ARTIFACT_MEDIA_TYPES``).
ARTIFACT_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
ARTIFACT_MEDIA_TYPES = {
    ".png": "image/png",
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
}


def validate_artifact_name(value: str) -> str:
    """Check an artifact name (``report.html``, ``fig-roc.png``, ``profile.json``...)."""
    if (
        not isinstance(value, str)
        or not ARTIFACT_NAME_PATTERN.fullmatch(value)
        or not value.endswith(tuple(ARTIFACT_MEDIA_TYPES))
    ):
        raise InvalidArgument(
            f"invalid artifact name {quote(value)}: use 1-100 lowercase letters, digits, '.', '_'"
            f" or '-' ending in one of {', '.join(sorted(ARTIFACT_MEDIA_TYPES))}"
        )
    return value


def artifact_media_type(name: str) -> str:
    """The media type of an artifact, from its name's extension."""
    for ext, media in ARTIFACT_MEDIA_TYPES.items():
        if name.endswith(ext):
            return media
    return "application/octet-stream"


@dataclass(frozen=True)
class ArtifactInfo:
    """One immutable file stored with a version (report page, figure, numbers, profile).

    Listed in the version's metadata, so it is published with the version in
    the same atomic step and its sha256 is checked on every read.
    """

    name: str
    sha256: str
    size_bytes: int
    media_type: str


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
    # Where the estimator was fitted: "cuda" (XGBoost on a GPU) or "cpu";
    # "" for imported versions and those recorded before it was kept.
    training_device: str = ""
    #: Files stored with the version (evaluation report, training profile), by name.
    artifacts: tuple[ArtifactInfo, ...] = ()
    #: A hyperparameter search's record (training/search.py ``search_record``):
    #: the space, every trial and the winner; {} when the job searched nothing.
    search: dict[str, Any] = field(default_factory=dict)
    #: The promote-if-better decision (alias, metric, both scores, promoted,
    #: reason); {} when the job asked for none.
    promotion: dict[str, Any] = field(default_factory=dict)

    def artifact(self, name: str) -> ArtifactInfo:
        """The listed artifact ``name``; NotFound when this version has none by that name."""
        for a in self.artifacts:
            if a.name == name:
                return a
        raise NotFound(f"model {self.model_name!r} version {self.version} has no artifact {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VersionMeta:
        """Inverse of ``to_dict`` (unknown keys are ignored, for forward compatibility)."""
        known = {f for f in cls.__dataclass_fields__}
        d = {k: v for k, v in data.items() if k in known}
        d["features"] = tuple(
            FeatureSpec(
                f["name"],
                f["type"],
                tuple(f.get("categories", ())),
                bool(f.get("allows_missing", False)),
            )
            for f in d.get("features", ())
        )
        for key in ("inputs", "outputs"):
            d[key] = tuple(
                TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in d.get(key, ())
            )
        d["class_labels"] = tuple(d.get("class_labels", ()))
        d["artifacts"] = tuple(
            ArtifactInfo(a["name"], a["sha256"], int(a["size_bytes"]), a["media_type"])
            for a in d.get("artifacts", ())
        )
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


# --- helpers the store backends share ------------------------------------------------

_SOURCES = frozenset({"trained", "imported"})
_TASKS = frozenset({"classification", "regression", ""})


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` for metadata: numpy scalars/arrays and other simple
    wrappers that training may hand over."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return str(obj)


def valid_name(name: str) -> bool:
    """Whether ``name`` passes ``validate_name`` (for skipping foreign entries in listings)."""
    try:
        validate_name(name)
    except InvalidArgument:
        return False
    return True


def check_publish_args(
    name: str,
    meta: VersionMeta,
    aliases: tuple[str, ...],
    artifacts: Mapping[str, bytes] | None = None,
) -> None:
    """Validate a publish's name, aliases, artifacts (when given: names, and bytes
    for values), source and task."""
    validate_name(name)
    for alias in aliases:
        validate_alias(alias)
    for artifact, data in (artifacts or {}).items():
        validate_artifact_name(artifact)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidArgument(f"artifact {artifact!r} is not bytes")
    if meta.source not in _SOURCES:
        raise InvalidArgument(f"invalid source {meta.source!r}: use 'trained' or 'imported'")
    if meta.task not in _TASKS:
        raise InvalidArgument(f"invalid task {meta.task!r}: use 'classification' or 'regression'")


def check_model_digest(name: str, meta: VersionMeta, digest: str, size: int) -> None:
    """Refuse an empty model file, or one whose sha256 is not the caller's ``meta.sha256``."""
    if size == 0:
        raise InvalidArgument("the model file is empty")
    if meta.sha256 and meta.sha256.lower() != digest:
        raise InvalidArgument(
            f"sha256 mismatch for model {name!r}: expected {meta.sha256}, got {digest}"
        )


def find_version(info: ModelInfo, version: int) -> VersionMeta:
    """The version numbered ``version`` of ``info``; NotFound when it has none."""
    for meta in info.versions:
        if meta.version == version:
            return meta
    raise NotFound(f"model {info.name!r} has no version {version}")


def corrupt_version(meta: VersionMeta) -> Unavailable:
    """Log and return the error for a version whose bytes fail their sha256 check."""
    log.error(
        "sha256 mismatch: refusing model version",
        extra={"model": meta.model_name, "version": meta.version},
    )
    return Unavailable(
        f"model {meta.model_name!r} version {meta.version} failed its integrity check"
        " (sha256 mismatch); it is refused until restored or deleted"
    )


def unreadable_version(meta: VersionMeta, *, missing: bool = False) -> Unavailable:
    """Log and return the error for a version whose file cannot be read (``missing``: the
    storage says it is not there)."""
    log.error(
        "model file missing" if missing else "model file unreadable",
        extra={"model": meta.model_name, "version": meta.version},
    )
    return Unavailable(
        f"model {meta.model_name!r} version {meta.version} cannot be read from storage"
    )


def aliases_pointing_at(
    name: str, version: int, aliases: Mapping[str, int], force: bool
) -> list[str]:
    """The aliases (sorted) that point at a version about to be deleted;
    FailedPrecondition when there are some and the deletion is not ``force``d."""
    pointing = sorted(a for a, v in aliases.items() if v == version)
    if pointing and not force:
        raise FailedPrecondition(
            f"model {name!r} version {version} is aliased by {', '.join(pointing)};"
            " move or delete those aliases first, or force the deletion"
        )
    return pointing


def notify_listeners(listeners: list[Callable[[str], None]], name: str) -> None:
    """Call every ``add_listener`` callback with ``name``; one failing is logged, not
    raised, so that the others still run and the change itself stands."""
    for cb in list(listeners):
        try:
            cb(name)
        except Exception:
            log.exception("registry listener failed for model %r", name)


#: ``check(model_file, meta)`` before a version is published; raises to refuse it.
PublishCheck = Callable[[Path, VersionMeta], None]


class ModelStore(abc.ABC):
    """Storage of model versions and aliases.

    Implementations must make every change atomic (a reader sees the old
    state or the new one, never half), allocate version numbers without
    races between threads and processes, verify each version's sha256
    when its bytes are read, and call ``check_publishable`` on every new
    version's staged file before it becomes visible.
    """

    _publish_check: PublishCheck | None = None

    def set_publish_check(self, check: PublishCheck | None) -> None:
        """Run ``check(model_file, meta)`` before every publish; what it raises refuses the
        version (nothing stored, no alias moved). The server installs the serving runtime's
        load check here (``serving.loadcheck.LoadCheck``), so imports and training alike
        pass it."""
        self._publish_check = check

    def check_publishable(self, model_file: Path, meta: VersionMeta) -> None:
        """Run the publish check, if any, on a staged file (for backends' ``publish*``)."""
        if self._publish_check is not None:
            self._publish_check(model_file, meta)

    @abc.abstractmethod
    def list_models(self) -> list[ModelInfo]:
        """Every model, by name."""

    @abc.abstractmethod
    def get_model(self, name: str) -> ModelInfo:
        """One model; NotFound when it has no versions."""

    def resolve(
        self, name: str, version: int | None = None, alias: str | None = None
    ) -> VersionMeta:
        """A version by number, by alias (``latest`` = newest), or the latest; NotFound
        when unknown. Backends answer it from ``get_model``."""
        validate_name(name)
        if version is not None and alias is not None:
            raise InvalidArgument("give a version or an alias, not both")
        if version is not None and (not isinstance(version, int) or version < 1):
            raise InvalidArgument(f"invalid version {version!r}: versions start at 1")
        if alias is not None and alias not in RESERVED_ALIASES:
            validate_alias(alias)
        info = self.get_model(name)
        if version is not None:
            return find_version(info, version)
        if alias is not None and alias not in RESERVED_ALIASES:
            if alias not in info.aliases:
                raise NotFound(f"model {name!r} has no alias {alias!r}")
            return find_version(info, info.aliases[alias])
        return info.latest

    @abc.abstractmethod
    def read_model(self, name: str, version: int) -> bytes:
        """The ONNX bytes of a version, sha256-checked (Unavailable on mismatch)."""

    @abc.abstractmethod
    def iter_model_chunks(self, name: str, version: int, chunk_size: int) -> Iterator[bytes]:
        """The ONNX bytes in chunks (sha256 checked before the first chunk)."""

    @abc.abstractmethod
    def publish(
        self,
        name: str,
        onnx_bytes: bytes,
        meta: VersionMeta,
        aliases: tuple[str, ...] = (),
        artifacts: Mapping[str, bytes] | None = None,
    ) -> VersionMeta:
        """Register ``onnx_bytes`` as the next version of ``name``.

        ``meta.version``, ``sha256``, ``size_bytes`` and ``created_at`` are
        filled in by the store; the returned meta is what was stored.
        ``artifacts`` (name -> bytes; names checked by ``validate_artifact_name``)
        are stored with the version in the same atomic publish and listed, with
        their sha256, in ``meta.artifacts`` (whatever the caller put there is
        replaced): the version is visible with all of them or not at all.
        """

    @abc.abstractmethod
    def publish_file(
        self,
        name: str,
        onnx_path: Path,
        meta: VersionMeta,
        aliases: tuple[str, ...] = (),
        artifacts: Mapping[str, bytes] | None = None,
    ) -> VersionMeta:
        """Like ``publish`` for a file already on disk (moved or copied in)."""

    def list_artifacts(self, name: str, version: int) -> tuple[ArtifactInfo, ...]:
        """The artifacts of a version, as listed in its metadata (NotFound for an unknown
        version)."""
        return self.resolve(name, version).artifacts

    @abc.abstractmethod
    def read_artifact(self, name: str, version: int, artifact: str) -> bytes:
        """The bytes of one artifact of a version, checked against the sha256 in its
        metadata (Unavailable on a mismatch or when unreadable; NotFound when the version
        does not list it)."""

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
