"""Validation and conversion of prediction inputs, and assembly of outputs (numpy only).

Inputs arrive as a dense tensor (``TensorInput``: typed values or raw
little-endian bytes), as one tensor per model input (``TensorsInput``, what
the Open Inference Protocol sends) or as named rows (``RowsInput``).
``InputPlan`` is built
once per loaded version from its ``VersionMeta`` and the session's real
inputs/outputs; ``InputPlan.feeds`` checks a request against it and returns
the onnxruntime feeds, ``InputPlan.assemble`` turns onnxruntime's outputs
into a ``Prediction``.

Every refusal is ``InvalidArgument`` naming the input (``tensor``,
``tensor.shape[1]``, ``rows[3].petal_width``, ...), raised before anything
is allocated from the request's claimed sizes: a shape is checked against
the row limit, the model's width and the bytes actually sent before any
array is built, so ``[2**31, 2**31]`` costs nothing.

Missing values and infinity: infinity is always refused (INVALID_ARGUMENT
naming the row and column; a float64 value beyond float32's range sent to a
float32 model becomes infinity and is refused the same way). NaN is a missing
value: accepted for a feature whose ``FeatureSpec.allows_missing`` is set
(recorded at training time once the exported graph was verified to answer
what scikit-learn answers for it) and refused like infinity everywhere else:
features recorded without the flag, and imported models, which have no
features (a graph with no missing-value handling would give an arbitrary
answer instead of an error). In named rows a null is the same missing value
(NaN for a numeric feature, "" for a categorical one: what training made of
an empty cell); in a STRING tensor the empty string is that value already.

Layouts the plan understands (docs/conventions): a trained model with only
numeric features has one ``input`` [-1, n_features] in feature order; with a
categorical feature it has one [-1, 1] input per feature (strings for the
categorical ones); an imported model has whatever its graph says, and takes
a tensor when it has a single input or rows keyed by its input names. Every
layout takes ``TensorsInput`` keyed by the graph's input names; each tensor
is validated exactly like a lone ``TensorInput`` for that input.

Messages name the offending part in the caller's own wire vocabulary: a
``TensorInput`` carries a ``Naming`` (``tensor.shape[1]``/``FLOAT32`` for
the native API, ``inputs['input'].shape[1]``/``FP32`` for the OIP).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from highpeaks_ml.errors import InvalidArgument, quote
from highpeaks_ml.registry.base import FeatureSpec, TensorSpec, VersionMeta
from highpeaks_ml.tensors import ELEMENT_TYPES

#: numpy dtype of each element type name (strings are numpy object arrays).
NUMPY_DTYPES: dict[str, Any] = {e.name: e.numpy for e in ELEMENT_TYPES}
#: Element type names as callers see them in messages (the proto enum's suffix).
SHOWN = {e.name: e.shown for e in ELEMENT_TYPES}
#: onnxruntime type strings -> element type names.
ORT_TYPES = {e.ort: e.name for e in ELEMENT_TYPES}
_FLOATS = ("float32", "float64")
_NUMBERS = ("float32", "float64", "int32", "int64")
# Element types a numeric input accepts (cast to the model's type); integers
# are only accepted by integer inputs, so no fraction is silently dropped.
_ACCEPTS = {
    "float32": _NUMBERS,
    "float64": _NUMBERS,
    "int64": ("int64", "int32"),
    "int32": ("int32", "int64"),
    "bool": ("bool",),
    "string": ("string",),
}
_MAX_ELEMENTS = 2**63 - 1


@dataclass(frozen=True)
class Naming:
    """How refusals name a tensor and its parts, in the wire's own words."""

    #: The tensor itself (``tensor.shape[1]: ...``).
    tensor: str = "tensor"
    #: Its element-type field.
    dtype: str = "tensor.data_type"
    #: Its raw-bytes field.
    raw: str = "tensor.raw_data"
    #: Its typed-values field.
    values: str = "tensor"
    #: Appended to "not given" for a missing element type.
    unset: str = " (DATA_TYPE_UNSPECIFIED)"
    #: Element type name -> the name callers use for it.
    types: Mapping[str, str] = field(default_factory=lambda: SHOWN)


NATIVE = Naming()


# Made per request: plain slotted dataclasses. A frozen dataclass's __init__ sets
# each field through object.__setattr__ (~2 µs for a Prediction; docs/serving.md).
@dataclass(slots=True)
class TensorInput:
    """A dense row-major tensor as a caller sent it.

    ``dtype`` is an element type name ("" when not given), ``values`` the
    typed elements (any sequence, strings as ``str`` or UTF-8 ``bytes``;
    converted only after the size checks) or ``raw`` the little-endian bytes.
    At most one of them is set. ``naming`` says how refusals name its parts.
    """

    dtype: str
    shape: tuple[int, ...]
    values: Sequence[Any] | None = None
    raw: bytes | None = None
    naming: Naming = NATIVE


@dataclass(slots=True)
class TensorsInput:
    """One tensor per model input, keyed by the graph's input name."""

    tensors: Mapping[str, TensorInput]


@dataclass(slots=True)
class RowsInput:
    """Named rows: one dict per row, feature (or input) name -> number or string."""

    rows: Sequence[dict[str, Any]]


@dataclass(slots=True)
class Prediction:
    """Outputs of one request (``None`` for outputs not produced or not wanted)."""

    model_name: str
    version: int
    provider: str
    labels: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    class_labels: tuple[str, ...] = ()
    values: np.ndarray | None = None
    rows: int = 0
    #: The produced ONNX outputs as onnxruntime returned them (shape and element
    #: type unchanged), keyed by the name the caller asked for them by (the ONNX
    #: name, or an alias in ``OUTPUT_ALIASES``), in the order asked.
    outputs: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Slot:
    """One ONNX input: name, element type, shape (-1 = dynamic) and its feature, if any."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    feature: FeatureSpec | None = None

    @property
    def row_shape(self) -> tuple[int, ...]:
        """The dimensions after the batch dimension."""
        return self.shape[1:]

    @property
    def width(self) -> int:
        """Elements per row (-1 when a non-batch dimension is dynamic)."""
        if any(d < 0 for d in self.row_shape):
            return -1
        return math.prod(self.row_shape)


OUTPUT_KINDS = ("labels", "probabilities", "values")
#: Output names accepted besides the ONNX ones (MLServer's scikit-learn runtime
#: names): "predict" is the labels of a classifier or the values of a regressor.
OUTPUT_ALIASES = {"predict": ("labels", "values"), "predict_proba": ("probabilities",)}


@dataclass(frozen=True)
class OutputPlan:
    """Which ONNX outputs carry labels, probabilities and values."""

    label: str | None = None
    label_dtype: str = ""
    probabilities: str | None = None
    values: str | None = None
    class_labels: tuple[str, ...] = ()
    n_classes: int = 0

    def names(self, wanted: frozenset[str], model: str) -> list[str]:
        """ONNX output names to compute for ``wanted`` (empty = everything the model has)."""
        if not wanted:
            return list(self.served)  # the same order as the mapping below
        have = {
            k: n
            for k, n in (
                ("labels", self.label),
                ("probabilities", self.probabilities),
                ("values", self.values),
            )
            if n is not None
        }
        missing = sorted(wanted - have.keys())
        if missing:
            kinds = ", ".join(sorted(have)) or "none"
            raise InvalidArgument(f"outputs: {model} has no {missing[0]} output (it has: {kinds})")
        return [have[k] for k in OUTPUT_KINDS if k in wanted]

    @functools.cached_property
    def served(self) -> tuple[str, ...]:
        """The ONNX names of the outputs served (labels, probabilities, values; made once)."""
        return tuple(n for n in (self.label, self.probabilities, self.values) if n is not None)

    def resolve(self, requested: Sequence[str], model: str) -> list[str]:
        """ONNX output names for ``requested`` names (ONNX names or ``OUTPUT_ALIASES``)."""
        by_kind = {"labels": self.label, "probabilities": self.probabilities, "values": self.values}
        aliases = {
            alias: next((by_kind[k] for k in kinds if by_kind[k] is not None), None)
            for alias, kinds in OUTPUT_ALIASES.items()
        }
        out: list[str] = []
        for i, name in enumerate(requested):
            if name in requested[:i]:
                raise InvalidArgument(f"outputs[{i}]: {quote(name)} is requested twice")
            onnx_name = name if name in self.served else aliases.get(name)
            if onnx_name is None:
                have = ", ".join(self.served) or "none"
                usable = ", ".join(a for a, n in aliases.items() if n is not None)
                raise InvalidArgument(
                    f"outputs[{i}]: {model} has no output {quote(name)} (it has: {have}"
                    + (f"; aliases: {usable}" if usable else "")
                    + ")"
                )
            out.append(onnx_name)
        return out


@dataclass(frozen=True)
class _Accepted:
    """What checking a raw tensor of an accepted signature still needs."""

    row_bytes: int
    row_elements: int
    sent: np.dtype[Any]
    target: np.dtype[Any] | None
    finite: bool
    features: tuple[FeatureSpec, ...]


@dataclass(frozen=True)
class InputPlan:
    """How requests map to the feeds of one model version, and outputs back."""

    model_name: str
    version: int
    kind: str  # "matrix" | "columns" | "graph"
    slots: tuple[Slot, ...]
    outputs: OutputPlan
    features: tuple[FeatureSpec, ...] = ()
    _row_keys: frozenset[str] = field(default=frozenset(), repr=False)
    #: Raw numeric tensors already accepted, by (input, element type, row shape):
    #: what checking the next one with that signature still needs (``_Accepted``).
    _accepted: dict[tuple[str, str, tuple[int, ...]], _Accepted] = field(
        default_factory=dict, repr=False, compare=False
    )

    @functools.cached_property
    def _slot_names(self) -> frozenset[str]:
        return frozenset(s.name for s in self.slots)

    @functools.cached_property
    def label(self) -> str:
        """``model 'x' version N`` for messages (made once: every request names it)."""
        return f"model {self.model_name!r} version {self.version}"

    @property
    def batchable(self) -> bool:
        """Whether requests can be concatenated along rows (every input has a batch dim)."""
        return all(s.shape and s.shape[0] < 0 for s in self.slots)

    # --- building -----------------------------------------------------------

    @classmethod
    def build(
        cls,
        meta: VersionMeta,
        inputs: Sequence[tuple[str, str, Sequence[Any]]],
        outputs: Sequence[tuple[str, str, Sequence[Any]]],
    ) -> InputPlan:
        """The plan for ``meta`` given the session's (name, ort type, shape) inputs/outputs.

        Raises ``ValueError`` (a load failure) when the graph does not fit
        the recorded metadata or has no usable output.
        """
        slots = tuple(_slot(name, typ, shape) for name, typ, shape in inputs)
        features = tuple(meta.features)
        if features:
            if (
                len(slots) == 1
                and slots[0].width == len(features)
                and len(slots[0].shape) == 2
                and all(f.type == "numeric" for f in features)
                and slots[0].dtype in _NUMBERS
            ):
                kind = "matrix"
            elif len(slots) == len(features) and all(s.width == 1 for s in slots):
                kind = "columns"
                slots = tuple(
                    Slot(s.name, s.dtype, s.shape, f) for s, f in zip(slots, features, strict=True)
                )
                for s in slots:
                    assert s.feature is not None
                    want_string = s.feature.type == "categorical"
                    if want_string != (s.dtype == "string"):
                        raise ValueError(
                            f"graph input {s.name!r} is {SHOWN[s.dtype]} but feature "
                            f"{s.feature.name!r} is {s.feature.type}"
                        )
            else:
                raise ValueError(
                    f"the graph's {len(slots)} input(s) do not match the {len(features)}"
                    " recorded features"
                )
            keys = frozenset(f.name for f in features)
        else:
            kind = "graph"
            keys = frozenset(s.name for s in slots)
        return cls(
            model_name=meta.model_name,
            version=meta.version,
            kind=kind,
            slots=slots,
            outputs=_output_plan(meta, outputs),
            features=features,
            _row_keys=keys,
        )

    # --- requests -> feeds --------------------------------------------------

    def feeds(
        self, data: TensorInput | TensorsInput | RowsInput, max_rows: int
    ) -> tuple[dict[str, np.ndarray], int]:
        """Validate ``data`` and return (onnxruntime feeds, row count)."""
        if isinstance(data, TensorInput):
            return self._tensor_feeds(data, max_rows)
        if isinstance(data, TensorsInput):
            return self._named_feeds(data, max_rows)
        return self._rows_feeds(data, max_rows)

    def _named_feeds(self, data: TensorsInput, max_rows: int) -> tuple[dict[str, np.ndarray], int]:
        given = data.tensors
        order = [s.name for s in self.slots]
        # Exactly the inputs (the common case) needs no problem report.
        problems = "" if given.keys() == self._slot_names else _key_problems(given, order, "input")
        if problems:
            raise InvalidArgument(
                f"inputs: {problems} ({self.label} takes {len(order)}: {', '.join(order)})"
            )
        feeds: dict[str, np.ndarray] = {}
        rows = -1
        first = ""
        for slot in self.slots:
            t = given[slot.name]
            arr, n = self._slot_feed(slot, t, max_rows)
            if rows < 0:
                rows, first = n, slot.name
            elif n != rows:
                raise InvalidArgument(
                    f"{t.naming.tensor}.shape[0]: {n} rows but input {first!r} has {rows};"
                    " every input needs the same number of rows"
                )
            feeds[slot.name] = arr
        return feeds, max(rows, 0)

    def _tensor_feeds(self, t: TensorInput, max_rows: int) -> tuple[dict[str, np.ndarray], int]:
        if self.kind == "columns":
            names = ", ".join(f.name for f in self.features)
            raise InvalidArgument(
                f"tensor: {self.label} has categorical features; send named rows"
                f" with the features {names}"
            )
        if len(self.slots) != 1:
            names = ", ".join(s.name for s in self.slots)
            raise InvalidArgument(
                f"tensor: {self.label} has {len(self.slots)} inputs ({names}); send named rows"
                " keyed by input name"
            )
        slot = self.slots[0]
        arr, rows = self._slot_feed(slot, t, max_rows)
        return {slot.name: arr}, rows

    def _slot_feed(self, slot: Slot, t: TensorInput, max_rows: int) -> tuple[np.ndarray, int]:
        """Validate ``t`` for input ``slot``; (the feed, its row count)."""
        n = t.naming
        shape = t.shape
        raw = t.raw
        if raw and shape:
            # A signature accepted before: the checks that depend only on it
            # (element type, dimensions, row shape) passed then and would again;
            # what depends on this request (rows, size, values) is checked here.
            # Anything unusual takes the full path below, which says what is wrong.
            seen = self._accepted.get((slot.name, t.dtype, shape[1:]))
            if seen is not None:
                rows = shape[0]
                if 0 <= rows <= max_rows and len(raw) == rows * seen.row_bytes:
                    arr = np.frombuffer(raw, dtype=seen.sent).reshape(shape)
                    if seen.target is not None:
                        with np.errstate(over="ignore"):
                            arr = arr.astype(seen.target)
                    if seen.finite:
                        _check_finite(arr, n.tensor, seen.features)
                    return arr, rows
        if not t.dtype:
            raise InvalidArgument(f"{n.dtype}: not given{n.unset}")
        if t.dtype not in _ACCEPTS[slot.dtype]:
            raise InvalidArgument(
                f"{n.dtype}: {n.types.get(t.dtype, t.dtype)} is not accepted by input"
                f" {slot.name!r} of {self.label}, which takes {n.types[slot.dtype]}"
                + (" (numbers)" if slot.dtype in _NUMBERS else "")
            )
        shape = t.shape
        _check_dims(shape, f"{n.tensor}.shape")
        if not shape:
            raise InvalidArgument(f"{n.tensor}.shape: empty; give [rows, features]")
        rows = shape[0]
        if rows > max_rows:
            raise InvalidArgument(
                f"{n.tensor}.shape[0]: {rows} rows is over the limit of {max_rows} rows per request"
            )
        if len(shape) != len(slot.shape):
            raise InvalidArgument(
                f"{n.tensor}.shape: {list(shape)} has {len(shape)} dimensions but input"
                f" {slot.name!r} of {self.label} has {len(slot.shape)} {_shown_shape(slot.shape)}"
            )
        for i, (got, want) in enumerate(zip(shape[1:], slot.row_shape, strict=True), start=1):
            if want >= 0 and got != want:
                if self.kind == "matrix" and i == 1:
                    names = ", ".join(f.name for f in self.features)
                    raise InvalidArgument(
                        f"{n.tensor}.shape[1]: {got} features given but {self.label} expects"
                        f" {want} ({names})"
                    )
                raise InvalidArgument(
                    f"{n.tensor}.shape[{i}]: {got} but input {slot.name!r} of {self.label} needs"
                    f" {want} {_shown_shape(slot.shape)}"
                )
        count = math.prod(shape)
        if count > _MAX_ELEMENTS:
            raise InvalidArgument(f"{n.tensor}.shape: {list(shape)} overflows (over 2^63 elements)")
        arr = _tensor_array(t, count)
        arr = arr.reshape(shape)
        if t.dtype != slot.dtype:
            # Out-of-range float64 -> float32 becomes inf, refused just below.
            with np.errstate(over="ignore"):
                arr = arr.astype(NUMPY_DTYPES[slot.dtype])
        features: tuple[FeatureSpec, ...] = ()
        if slot.dtype in _FLOATS:
            # Columns of the feature matrix, or the one feature of a per-feature input.
            features = self.features if self.kind == "matrix" else ()
            if slot.feature is not None:
                features = (slot.feature,)
            _check_finite(arr, n.tensor, features)
        if (
            t.raw
            and t.dtype not in ("string", "bool")
            and all(d >= 0 for d in slot.row_shape)  # one row shape: a bounded cache
        ):
            sent = NUMPY_DTYPES[t.dtype]
            self._accepted[(slot.name, t.dtype, shape[1:])] = _Accepted(
                row_bytes=math.prod(shape[1:]) * sent.itemsize,
                row_elements=math.prod(shape[1:]),
                sent=sent,
                target=NUMPY_DTYPES[slot.dtype] if t.dtype != slot.dtype else None,
                finite=slot.dtype in _FLOATS,
                features=features,
            )
        return arr, rows

    def _rows_feeds(self, data: RowsInput, max_rows: int) -> tuple[dict[str, np.ndarray], int]:
        rows = data.rows
        n = len(rows)
        if n > max_rows:
            raise InvalidArgument(
                f"rows: {n} rows is over the limit of {max_rows} rows per request"
            )
        keys = self._row_keys
        for i, row in enumerate(rows):
            if row.keys() != keys:
                self._bad_keys(i, row)
        if self.kind == "matrix":
            slot = self.slots[0]
            cols = [
                _numeric_column(rows, f.name, slot.dtype, "rows", f.allows_missing)
                for f in self.features
            ]
            arr = (
                np.stack(cols, axis=1)
                if n
                else np.empty((0, len(cols)), dtype=NUMPY_DTYPES[slot.dtype])
            )
            return {slot.name: arr}, n
        feeds: dict[str, np.ndarray] = {}
        for slot in self.slots:
            key = slot.feature.name if slot.feature is not None else slot.name
            if slot.dtype == "string":
                col = _string_column(rows, key, _allows_missing(slot))
            elif slot.dtype == "bool":
                col = _bool_column(rows, key)
            elif slot.width == 1:
                col = _numeric_column(rows, key, slot.dtype, "rows", _allows_missing(slot))
            else:
                col = _list_column(rows, key, slot)
            feeds[slot.name] = col.reshape((n, *_concrete(slot.row_shape, col, n)))
        return feeds, n

    def _bad_keys(self, i: int, row: dict[str, Any]) -> None:
        want = self._row_keys
        what = "feature" if self.features else "input"
        order = [f.name for f in self.features] if self.features else [s.name for s in self.slots]
        problems = _key_problems(sorted(row), order, what, allowed=want)
        raise InvalidArgument(
            f"rows[{i}]: {problems} ({self.label} expects {len(order)}: {', '.join(order)})"
        )

    # --- outputs -> prediction ---------------------------------------------

    def empty_outputs(self, names: Sequence[str]) -> list[np.ndarray]:
        """Zero-row arrays standing in for onnxruntime's outputs (zero-row requests)."""
        out = []
        o = self.outputs
        for name in names:
            if name == o.label:
                out.append(np.empty(0, dtype=NUMPY_DTYPES[o.label_dtype or "int64"]))
            elif name == o.probabilities:
                out.append(np.empty((0, o.n_classes), dtype=np.float32))
            else:
                out.append(np.empty(0, dtype=np.float32))
        return out

    def assemble(
        self,
        names: Sequence[str],
        arrays: Sequence[np.ndarray],
        provider: str,
        rows: int,
        as_names: Sequence[str] | None = None,
    ) -> Prediction:
        """A ``Prediction`` from onnxruntime's outputs ``arrays`` (in the order of ``names``).

        ``as_names`` are the names the caller asked for them by (default: ``names``).
        """
        o = self.outputs
        labels = probabilities = values = None
        for name, arr in zip(names, arrays, strict=True):
            if name == o.label:
                labels = served_output("labels", arr)
            elif name == o.probabilities:
                probabilities = served_output("probabilities", arr)
            elif name == o.values:
                values = served_output("values", arr)
        return Prediction(
            model_name=self.model_name,
            version=self.version,
            provider=provider,
            labels=labels,
            probabilities=probabilities,
            class_labels=o.class_labels if probabilities is not None else (),
            values=values,
            rows=rows,
            outputs=dict(zip(as_names or names, arrays, strict=True)),
        )

    def warmup_feeds(self) -> dict[str, np.ndarray]:
        """One plausible row for a warm-up inference (zeros, first categories)."""
        feeds = {}
        for s in self.slots:
            shape = (1, *(d if d >= 0 else 1 for d in s.row_shape))
            if s.dtype == "string":
                cat = s.feature.categories[0] if s.feature and s.feature.categories else ""
                feeds[s.name] = np.full(shape, cat, dtype=object)
            else:
                feeds[s.name] = np.zeros(shape, dtype=NUMPY_DTYPES[s.dtype])
        return feeds


# --- helpers ---------------------------------------------------------------


def served_output(kind: str, arr: np.ndarray) -> np.ndarray:
    """onnxruntime's output ``arr`` as a ``Prediction`` serves it as ``kind`` ("labels",
    "probabilities" or "values"): one label or value per row, float32 scores."""
    if kind != "probabilities" and arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.reshape(-1)
    if kind == "labels" or arr.dtype == np.float32:
        return arr
    return arr.astype(np.float32)


def _dim(d: Any) -> int:
    return d if isinstance(d, int) and d >= 0 else -1


def _slot(name: str, typ: str, shape: Sequence[Any]) -> Slot:
    dtype = ORT_TYPES.get(typ)
    if dtype is None:
        raise ValueError(f"graph input {name!r} has unsupported type {typ}")
    dims = tuple(_dim(d) for d in shape)
    return Slot(name, dtype, dims)


def _shown_shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join("N" if d < 0 else str(d) for d in shape) + "]"


def _output_plan(
    meta: VersionMeta, outputs: Sequence[tuple[str, str, Sequence[Any]]]
) -> OutputPlan:
    specs = [(n, ORT_TYPES.get(t), tuple(_dim(d) for d in s)) for n, t, s in outputs]
    by_name = {n: (t, s) for n, t, s in specs}

    def rank1ish(shape: tuple[int, ...]) -> bool:
        return len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)

    label = probabilities = values = None
    if meta.source != "imported" and meta.features:
        # Trained here: the names are fixed by the conventions.
        if meta.task == "classification":
            label, probabilities = "label", "probabilities"
        else:
            values = "variable"
        for n in (label, probabilities, values):
            if n is not None and n not in by_name:
                raise ValueError(f"the graph has no {n!r} output")
    else:
        label_c = [n for n, t, s in specs if t in ("int64", "string") and rank1ish(s)]
        prob_c = [n for n, t, s in specs if t in _FLOATS and len(s) == 2]
        value_c = [n for n, t, s in specs if t in _FLOATS]
        if meta.task == "regression" or (meta.task != "classification" and not label_c):
            values = value_c[0] if value_c else None
        else:
            label = label_c[0] if label_c else None
            probabilities = prob_c[0] if prob_c else None
        if label is None and probabilities is None and values is None:
            raise ValueError("the graph has no output usable as labels, probabilities or values")
    label_dtype = ""
    if label is not None:
        label_dtype = by_name[label][0] or ""
        if label_dtype not in ("int64", "string"):
            raise ValueError(f"the label output {label!r} is neither INT64 nor STRING")
    n_classes = 0
    if probabilities is not None:
        width = by_name[probabilities][1][-1]
        n_classes = width if width >= 0 else len(meta.class_labels)
    return OutputPlan(
        label=label,
        label_dtype=label_dtype,
        probabilities=probabilities,
        values=values,
        class_labels=tuple(meta.class_labels),
        n_classes=n_classes or len(meta.class_labels),
    )


def served_outputs(meta: VersionMeta) -> tuple[TensorSpec, ...]:
    """The recorded outputs a request can get (labels, probabilities, values), in order.

    Read from the metadata alone (no session needed); when the recorded
    outputs do not form a usable plan, all of them.
    """
    ort = {v: k for k, v in ORT_TYPES.items()}
    specs = [(o.name, ort.get(o.dtype, ""), o.shape) for o in meta.outputs]
    try:
        served = _output_plan(meta, specs).served
    except ValueError:
        return tuple(meta.outputs)
    return tuple(o for o in meta.outputs if o.name in served)


def _check_dims(shape: Sequence[int], where: str) -> None:
    for i, d in enumerate(shape):
        if d < 0:
            raise InvalidArgument(f"{where}[{i}]: {d} is negative; dimensions must be >= 0")


def _tensor_array(t: TensorInput, count: int) -> np.ndarray:
    """The 1-D array of ``count`` elements carried by ``t`` (sizes checked first)."""
    sent = NUMPY_DTYPES[t.dtype]
    n = t.naming
    shown = n.types[t.dtype]
    if t.raw is not None and len(t.raw) > 0:
        raw = t.raw
        if t.dtype == "string":
            return _decode_strings(raw, count, n.raw, shown)
        need = count * sent.itemsize
        if len(raw) != need:
            raise InvalidArgument(
                f"{n.raw}: {len(raw)} bytes but shape {list(t.shape)} of {shown} needs {need} bytes"
            )
        arr = np.frombuffer(raw, dtype=sent)
        if t.dtype == "bool":
            as_bytes = np.frombuffer(raw, dtype=np.uint8)
            if (as_bytes > 1).any():
                raise InvalidArgument(f"{n.raw}: BOOL elements must be bytes 0 or 1")
        return arr
    values = t.values if t.values is not None else ()
    if len(values) != count:
        raise InvalidArgument(
            f"{n.values}: {len(values)} values given but shape {list(t.shape)} has {count} elements"
        )
    if t.dtype == "string":
        items = list(values)
        if items and not isinstance(items[0], str):  # UTF-8 bytes (OIP bytes_contents)
            items = _utf8(items, n.values)
        arr = np.empty(count, dtype=object)
        arr[:] = items
        return arr
    # fromiter: the fastest way from a sequence of Python numbers (protobuf's
    # repeated fields included) to a contiguous array.
    return np.fromiter(values, dtype=sent, count=count)


def _utf8(items: list[Any], where: str) -> list[str]:
    try:
        return [bytes(b).decode("utf-8") for b in items]
    except UnicodeDecodeError:
        for i, b in enumerate(items):
            try:
                bytes(b).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidArgument(f"{where}: string element {i} is not UTF-8") from None
        raise  # not reached


def _decode_strings(
    raw: bytes, count: int, where: str = "tensor.raw_data", shown: str = "STRING"
) -> np.ndarray:
    """Decode the length-prefixed layout (4-byte little-endian length, then UTF-8 bytes)."""
    out = np.empty(count, dtype=object)
    pos = 0
    size = len(raw)
    view = memoryview(raw)
    for i in range(count):
        if pos + 4 > size:
            raise InvalidArgument(f"{where}: ends after {i} of {count} {shown} elements")
        n = int.from_bytes(view[pos : pos + 4], "little")
        pos += 4
        if pos + n > size:
            raise InvalidArgument(f"{where}: {shown} element {i} runs past the end")
        try:
            out[i] = bytes(view[pos : pos + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(f"{where}: {shown} element {i} is not UTF-8") from None
        pos += n
    if pos != size:
        raise InvalidArgument(
            f"{where}: {size - pos} bytes left over after {count} {shown} elements"
        )
    return out


def _allows_missing(slot: Slot) -> bool:
    return slot.feature is not None and slot.feature.allows_missing


def _check_finite(arr: np.ndarray, where: str, features: Sequence[FeatureSpec]) -> None:
    """Refuse infinity, and NaN except in the columns of features that allow missing values.

    ``features`` are the features of ``arr``'s columns (the matrix input), the
    one feature of a per-feature input, or none (imported models: NaN refused).
    """
    if not arr.size:
        return
    finite = np.isfinite(arr)
    if finite.all():
        return
    bad = ~finite
    if arr.ndim == 2 and len(features) == arr.shape[1]:
        ok = np.fromiter((f.allows_missing for f in features), dtype=bool, count=len(features))
        if ok.any():
            bad &= ~(np.isnan(arr) & ok)  # ok broadcasts over the rows
            if not bad.any():
                return
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    where_at = f"{where}[{', '.join(map(str, idx))}]"
    feature = features[idx[1]] if len(idx) == 2 and idx[1] < len(features) else None
    if feature is not None:
        where_at += f" (row {idx[0]}, feature {feature.name!r})"
    raise InvalidArgument(f"{where_at}: {_non_finite(float(arr[idx]))}")


def _non_finite(value: float) -> str:
    """Why a NaN or infinite ``value`` is refused."""
    if math.isnan(value):
        return "nan is not a finite number; missing values are refused for this model here"
    return f"{value} is not a finite number; infinity is refused"


def _numeric_column(
    rows: Sequence[dict[str, Any]], key: str, dtype: str, where: str, missing: bool = False
) -> np.ndarray:
    """One numeric feature of named rows; ``missing``: null and NaN are a missing value (NaN)."""
    col = [row[key] for row in rows]
    # bool is an int subclass; JSON true/false is not a number here.
    if not all(type(v) is float or type(v) is int for v in col):
        if missing and dtype in _FLOATS:
            col = [math.nan if v is None else v for v in col]
        for i, v in enumerate(col):
            if type(v) is not float and type(v) is not int:
                hint = " (this model does not accept missing values for it)" if v is None else ""
                raise InvalidArgument(
                    f"{where}[{i}].{key}: expects a number, got {_describe(v)}{hint}"
                )
    try:
        with np.errstate(over="ignore"):  # beyond float32 -> inf, refused below
            arr = np.asarray(col, dtype=NUMPY_DTYPES[dtype])
    except OverflowError:
        raise InvalidArgument(
            f"{where}.{key}: a value is out of range for {SHOWN[dtype]}"
        ) from None
    if dtype in _FLOATS and arr.size and not np.isfinite(arr).all():
        bad = ~np.isfinite(arr)
        if missing:
            bad &= ~np.isnan(arr)
        if bad.any():
            i = int(np.argwhere(bad)[0][0])
            raise InvalidArgument(f"{where}[{i}].{key}: {_non_finite(float(arr[i]))}")
    if dtype in ("int64", "int32") and any(type(v) is float and not v.is_integer() for v in col):
        raise InvalidArgument(f"{where}.{key}: {SHOWN[dtype]} input takes whole numbers")
    return arr


def _string_column(rows: Sequence[dict[str, Any]], key: str, missing: bool = False) -> np.ndarray:
    """One categorical feature of named rows; ``missing``: null is a missing value ("")."""
    col = [row[key] for row in rows]
    if not all(type(v) is str for v in col):
        if missing:
            col = ["" if v is None else v for v in col]
        for i, v in enumerate(col):
            if type(v) is not str:
                hint = " (this model does not accept missing values for it)" if v is None else ""
                raise InvalidArgument(
                    f"rows[{i}].{key}: categorical feature expects a string, got {_describe(v)}"
                    + hint
                )
    arr = np.empty(len(col), dtype=object)
    arr[:] = col
    return arr


def _bool_column(rows: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    col = [row[key] for row in rows]
    for i, v in enumerate(col):
        if type(v) is not bool:
            raise InvalidArgument(f"rows[{i}].{key}: expects true or false, got {_describe(v)}")
    return np.asarray(col, dtype=np.bool_)


def _list_column(rows: Sequence[dict[str, Any]], key: str, slot: Slot) -> np.ndarray:
    width = slot.width
    flat: list[Any] = []
    for i, row in enumerate(rows):
        v = row[key]
        if not isinstance(v, list):
            raise InvalidArgument(
                f"rows[{i}].{key}: input {slot.name!r} takes a list of numbers per row,"
                f" got {_describe(v)}"
            )
        if width >= 0 and len(v) != width:
            raise InvalidArgument(
                f"rows[{i}].{key}: {len(v)} numbers given but input {slot.name!r} takes {width}"
            )
        if width < 0 and i > 0 and len(v) != len(rows[0][key]):
            raise InvalidArgument(f"rows[{i}].{key}: rows differ in length")
        flat.extend(v)
    fake = [{key: v} for v in flat]
    return _numeric_column(fake, key, slot.dtype, "rows")


def _concrete(row_shape: tuple[int, ...], col: np.ndarray, n: int) -> tuple[int, ...]:
    if all(d >= 0 for d in row_shape):
        return row_shape
    # One dynamic non-batch dimension (list rows): infer it from the data.
    known = math.prod(d for d in row_shape if d >= 0) or 1
    per_row = col.size // n if n else 0
    return tuple(d if d >= 0 else per_row // known for d in row_shape)


def _describe(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f"string {quote(v, 40)}"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return repr(v)


def _key_problems(
    given: Iterable[str], order: Sequence[str], what: str, allowed: Container[str] | None = None
) -> str:
    """``unknown WHAT 'x' and missing WHAT 'y'`` (the first of each), or "" when none.

    ``given`` is iterated in the order its first unknown key should be named;
    ``allowed`` (default: ``order``) says which keys are known.
    """
    known = order if allowed is None else allowed
    given = list(given)
    unknown = [k for k in given if k not in known]
    missing = [k for k in order if k not in given]
    problems = []
    if unknown:
        problems.append(f"unknown {what} {quote(unknown[0])}")
    if missing:
        problems.append(f"missing {what} {missing[0]!r}")
    return " and ".join(problems)
