"""Import of externally built ONNX models as new registry versions.

An import is spooled to a scratch file (``Upload``: size-limited while the
bytes arrive, never held in memory as a whole), then checked and published
(``import_file``):

- the size is at most ``max_bytes`` (ResourceExhausted otherwise);
- the bytes parse as an ONNX ModelProto and pass ``onnx.checker.check_model``;
- no tensor refers to external data (the registry stores one self-contained file);
- every graph input and output is a tensor of a type the platform can carry
  (float32, float64, int64, int32, bool, string); they are recorded as
  TensorSpecs with -1 for dynamic dimensions;
- the optional sha256 matches.

Anything else is InvalidArgument with a message naming the problem. The
version is published with source "imported", no features, and the task and
class labels given by the caller.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from highpeaks_ml.errors import InvalidArgument, ResourceExhausted, quote
from highpeaks_ml.registry.base import (
    ModelStore,
    TensorSpec,
    VersionMeta,
    validate_alias,
    validate_name,
)
from highpeaks_ml.tensors import ELEMENT_TYPES

if TYPE_CHECKING:
    import onnx

MAX_DESCRIPTION = 4096
MAX_CLASS_LABELS = 100_000
MAX_LABEL_LENGTH = 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TASKS = ("classification", "regression", "")

# onnx.TensorProto.DataType -> the platform's dtype names (registry.base.TensorSpec).
_ONNX_DTYPES = {e.onnx: e.name for e in ELEMENT_TYPES}


@dataclass(frozen=True)
class ImportInfo:
    """What the caller says about an import (the ImportModelInfo message)."""

    model_name: str
    task: str = ""  # "classification" | "regression" | ""
    class_labels: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    description: str = ""
    sha256: str = ""  # optional, hex
    created_by: str = ""

    def validated(self) -> ImportInfo:
        """Check every field (before any byte is stored); return a normalised copy."""
        validate_name(self.model_name)
        for alias in self.aliases:
            validate_alias(alias)
        if len(set(self.aliases)) != len(self.aliases):
            raise InvalidArgument("aliases: the same alias is given twice")
        if self.task not in _TASKS:
            raise InvalidArgument(f"invalid task {quote(self.task)}")
        task = self.task
        if self.class_labels:
            if task == "regression":
                raise InvalidArgument("class_labels are only valid for classification models")
            task = "classification"
            if len(self.class_labels) > MAX_CLASS_LABELS:
                raise InvalidArgument(f"class_labels: more than {MAX_CLASS_LABELS} labels")
            if any(not lbl or len(lbl) > MAX_LABEL_LENGTH for lbl in self.class_labels):
                raise InvalidArgument(
                    f"class_labels: each label must have 1-{MAX_LABEL_LENGTH} characters"
                )
            if len(set(self.class_labels)) != len(self.class_labels):
                raise InvalidArgument("class_labels: labels must be unique")
        if len(self.description) > MAX_DESCRIPTION:
            raise InvalidArgument(f"description: at most {MAX_DESCRIPTION} characters")
        sha = self.sha256.strip().lower()
        if sha and not _SHA256.fullmatch(sha):
            raise InvalidArgument("sha256: expected 64 hexadecimal characters")
        return ImportInfo(
            model_name=self.model_name,
            task=task,
            class_labels=tuple(self.class_labels),
            aliases=tuple(self.aliases),
            description=self.description,
            sha256=sha,
            created_by=self.created_by,
        )


class Upload:
    """Spools an import's bytes to a scratch file of the store, enforcing ``max_bytes``.

    ``write`` raises ResourceExhausted as soon as the total passes the limit,
    so an oversized upload is refused without being stored in full.
    ``discard()`` removes whatever is left (always call it, also after a
    successful ``import_file``, which moves the file away).
    """

    def __init__(self, store: ModelStore, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._lease = store.scratch()
        self._file = open(self._lease.path, "wb")  # noqa: SIM115 - closed in finish/discard

    @property
    def path(self) -> Path:
        """Where the bytes are spooled."""
        return self._lease.path

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; ResourceExhausted past the limit."""
        if self.size + len(chunk) > self.max_bytes:
            raise ResourceExhausted(
                f"the model file exceeds the limit of {self.max_bytes} bytes (max_model_bytes)"
            )
        self._file.write(chunk)
        self.size += len(chunk)

    def finish(self) -> Path:
        """Close the spool file and return its path."""
        self._file.close()
        return self._lease.path

    def discard(self) -> None:
        """Close and remove the spool file (idempotent)."""
        self._file.close()
        self._lease.release()


def import_bytes(store: ModelStore, info: ImportInfo, data: bytes, max_bytes: int) -> VersionMeta:
    """Import an ONNX model given as bytes (see ``import_file``)."""
    info = info.validated()
    upload = Upload(store, max_bytes)
    try:
        upload.write(data)
        return import_file(store, info, upload.finish(), max_bytes)
    finally:
        upload.discard()


def import_file(store: ModelStore, info: ImportInfo, path: Path, max_bytes: int) -> VersionMeta:
    """Check the ONNX file at ``path`` and publish it as the next version of ``info.model_name``.

    The file is moved into the store on success (``ModelStore.publish_file``).
    """
    info = info.validated()
    size = os.path.getsize(path)
    if size == 0:
        raise InvalidArgument("the model file is empty")
    if size > max_bytes:
        raise ResourceExhausted(
            f"the model file exceeds the limit of {max_bytes} bytes (max_model_bytes)"
        )
    model = _load_checked(path)
    inputs, outputs = _graph_specs(model)
    if not inputs or not outputs:
        raise InvalidArgument("the ONNX graph must have at least one input and one output")
    _check_labels(info, outputs)
    label = next((o for o in outputs if o.name == "label"), None)
    import onnx

    producer = f"{model.producer_name} {model.producer_version}".strip()
    library_versions = {"onnx": onnx.__version__}
    if producer:
        library_versions["producer"] = producer
    opsets = {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import}
    library_versions["opset"] = ", ".join(f"{d}={v}" for d, v in sorted(opsets.items()))
    meta = VersionMeta(
        model_name=info.model_name,
        version=0,
        created_at=0.0,
        source="imported",
        task=info.task,
        class_labels=info.class_labels,
        inputs=inputs,
        outputs=outputs,
        label_dtype=label.dtype if label and label.dtype in ("int64", "string") else "",
        sha256=info.sha256,
        library_versions=library_versions,
        created_by=info.created_by,
        description=info.description,
    )
    return store.publish_file(info.model_name, path, meta, info.aliases)


def _load_checked(path: Path) -> onnx.ModelProto:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, TypeError):
        raise InvalidArgument("the file is not an ONNX model (it does not parse)") from None
    external = _external_tensor(model.graph)
    if external is not None:
        raise InvalidArgument(
            f"tensor {quote(external)} refers to external data; import a single self-contained"
            " .onnx file (onnx.save_model(..., save_as_external_data=False))"
        )
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidArgument(f"the ONNX model is invalid: {first[:300]}") from None
    return model


def _external_tensor(graph: Any) -> str | None:
    """The name of the first tensor (in ``graph`` or a subgraph) stored as external data."""
    import onnx

    ext = onnx.TensorProto.EXTERNAL
    for t in graph.initializer:
        if t.data_location == ext:
            return str(t.name)
    for st in graph.sparse_initializer:
        for t in (st.values, st.indices):
            if t.data_location == ext:
                return str(t.name)
    for node in graph.node:
        for attr in node.attribute:
            tensors = [attr.t, *attr.tensors] if attr.HasField("t") else list(attr.tensors)
            for t in tensors:
                if t.data_location == ext:
                    return str(t.name or node.name)
            subgraphs = [attr.g, *attr.graphs] if attr.HasField("g") else list(attr.graphs)
            for g in subgraphs:
                found = _external_tensor(g)
                if found is not None:
                    return found
    return None


def _graph_specs(model: Any) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    initializers = {t.name for t in model.graph.initializer}
    inputs = tuple(_spec(v, "input") for v in model.graph.input if v.name not in initializers)
    outputs = tuple(_spec(v, "output") for v in model.graph.output)
    return inputs, outputs


def _spec(value: Any, kind: str) -> TensorSpec:
    if value.type.WhichOneof("value") != "tensor_type":
        hint = " (export classifiers with ZipMap disabled)" if kind == "output" else ""
        raise InvalidArgument(
            f"{kind} {quote(value.name)} is not a tensor; the platform serves tensor inputs and"
            f" outputs only{hint}"
        )
    tensor = value.type.tensor_type
    dtype = _ONNX_DTYPES.get(tensor.elem_type)
    if dtype is None:
        import onnx

        type_name = onnx.TensorProto.DataType.Name(tensor.elem_type)
        raise InvalidArgument(
            f"{kind} {quote(value.name)} has element type {type_name}; supported: "
            + ", ".join(sorted(set(_ONNX_DTYPES.values())))
        )
    shape: tuple[int, ...] = ()
    if tensor.HasField("shape"):
        shape = tuple(int(d.dim_value) if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
    return TensorSpec(str(value.name), dtype, shape)


def _check_labels(info: ImportInfo, outputs: tuple[TensorSpec, ...]) -> None:
    if not info.class_labels:
        return
    probs = next((o for o in outputs if o.name == "probabilities"), None)
    if (
        probs is not None
        and len(probs.shape) == 2
        and probs.shape[1] > 0
        and probs.shape[1] != len(info.class_labels)
    ):
        raise InvalidArgument(
            f"class_labels: {len(info.class_labels)} labels given but output"
            f" 'probabilities' has {probs.shape[1]} columns"
        )


__all__ = ["ImportInfo", "Upload", "import_bytes", "import_file"]
