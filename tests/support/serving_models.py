"""Real tiny scikit-learn models exported with skl2onnx, with their VersionMeta.

Each builder trains a small model, converts it the way training does
(docs: conventions; ZipMap off, outputs "label"/"probabilities" or
"variable") and returns ``Exported(estimator, onnx_bytes, meta, X)`` where
``X`` is data to predict on. Results are cached per process (models are
immutable), so tests can call the builders freely.
"""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from highpeaks_ml.registry.base import FeatureSpec, TensorSpec, VersionMeta


@dataclass(frozen=True)
class Exported:
    """A trained estimator, its ONNX bytes, the metadata to publish and data to predict on."""

    estimator: Any
    onnx: bytes
    meta: VersionMeta
    X: Any


def _meta(name: str, onnx: bytes, **kw: Any) -> VersionMeta:
    base: dict[str, Any] = {
        "model_name": name,
        "version": 0,
        "created_at": time.time(),
        "source": "trained",
        "task": "classification",
        "sha256": hashlib.sha256(onnx).hexdigest(),
        "size_bytes": len(onnx),
    }
    base.update(kw)
    return VersionMeta(**base)


def _convert(model: Any, initial_types: list[Any], **kw: Any) -> bytes:
    from skl2onnx import convert_sklearn

    onx = convert_sklearn(
        model,
        initial_types=initial_types,
        options={id(model): {"zipmap": False}} if hasattr(model, "predict_proba") else None,
        target_opset=17,
        **kw,
    )
    return bytes(onx.SerializeToString())


IRIS_FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")


@functools.cache
def iris_logreg(name: str = "iris", dtype: str = "float32", c: float = 1.0) -> Exported:
    """LogisticRegression on iris; int64 labels 0..2; one float "input" [-1, 4]."""
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500, C=c).fit(X, y)
    tensor_type = FloatTensorType if dtype == "float32" else DoubleTensorType
    onnx = _convert(model, [("input", tensor_type([None, 4]))])
    meta = _meta(
        name,
        onnx,
        algorithm="logistic_regression",
        features=tuple(FeatureSpec(f, "numeric") for f in IRIS_FEATURES),
        inputs=(TensorSpec("input", dtype, (-1, 4)),),
        outputs=(
            TensorSpec("label", "int64", (-1,)),
            TensorSpec("probabilities", "float32", (-1, 3)),
        ),
        class_labels=("0", "1", "2"),
        label_dtype="int64",
    )
    return Exported(model, onnx, meta, X.astype(np.float32 if dtype == "float32" else np.float64))


@functools.cache
def iris_forest_string_labels(name: str = "flowers", trees: int = 5) -> Exported:
    """RandomForestClassifier on iris with string labels (setosa, ...)."""
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    data = load_iris()
    y = np.array(data.target_names)[data.target]
    model = RandomForestClassifier(n_estimators=trees, max_depth=4, random_state=0)
    model.fit(data.data, y)
    onnx = _convert(model, [("input", FloatTensorType([None, 4]))])
    meta = _meta(
        name,
        onnx,
        algorithm="random_forest",
        features=tuple(FeatureSpec(f, "numeric") for f in IRIS_FEATURES),
        inputs=(TensorSpec("input", "float32", (-1, 4)),),
        outputs=(
            TensorSpec("label", "string", (-1,)),
            TensorSpec("probabilities", "float32", (-1, 3)),
        ),
        class_labels=tuple(str(c) for c in model.classes_),
        label_dtype="string",
    )
    return Exported(model, onnx, meta, data.data.astype(np.float32))


@functools.cache
def deep_forest(name: str = "slow") -> Exported:
    """A deliberately slow model: 100 unpruned trees grown on noisy labels (4 features).

    About 8 µs per row on one core, from 16 bytes of input per row: a small
    request that keeps onnxruntime busy (deadline tests).
    """
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    X, y = make_classification(
        n_samples=3000, n_features=4, n_informative=4, n_redundant=0, flip_y=0.4, random_state=0
    )
    model = RandomForestClassifier(n_estimators=100, random_state=0).fit(X, y)
    onnx = _convert(model, [("input", FloatTensorType([None, 4]))])
    meta = _meta(
        name,
        onnx,
        algorithm="random_forest",
        features=tuple(FeatureSpec(f"x{i}", "numeric") for i in range(4)),
        inputs=(TensorSpec("input", "float32", (-1, 4)),),
        outputs=(
            TensorSpec("label", "int64", (-1,)),
            TensorSpec("probabilities", "float32", (-1, 2)),
        ),
        class_labels=("0", "1"),
        label_dtype="int64",
    )
    return Exported(model, onnx, meta, X.astype(np.float32))


@functools.cache
def linear_regressor(name: str = "prices") -> Exported:
    """LinearRegression on synthetic data; output "variable" [-1, 1]."""
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3)).astype(np.float32)
    y = X @ np.array([1.5, -2.0, 0.5]) + 3.0
    model = LinearRegression().fit(X, y)
    onnx = _convert(
        model,
        [("input", FloatTensorType([None, 3]))],
        final_types=[("variable", FloatTensorType([None, 1]))],
    )
    feats = ("a", "b", "c")
    meta = _meta(
        name,
        onnx,
        task="regression",
        algorithm="linear_regression",
        features=tuple(FeatureSpec(f, "numeric") for f in feats),
        inputs=(TensorSpec("input", "float32", (-1, 3)),),
        outputs=(TensorSpec("variable", "float32", (-1, 1)),),
    )
    return Exported(model, onnx, meta, X)


MIXED_CATEGORIES = ("red", "green", "blue")


@functools.cache
def mixed_classifier(name: str = "mixed") -> Exported:
    """Numeric + categorical columns: one ONNX input per feature (conventions).

    Pipeline(ColumnTransformer(scale numbers, one-hot the colour), LogisticRegression);
    string labels "no"/"yes". ``X`` is a DataFrame.
    """
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(1)
    n = 120
    df = pd.DataFrame(
        {
            "size": rng.normal(10, 3, n).astype(np.float32),
            "colour": rng.choice(MIXED_CATEGORIES, n),
            "weight": rng.normal(5, 1, n).astype(np.float32),
        }
    )
    score = df["size"] / 3 + (df["colour"] == "red") * 2 - df["weight"] / 2
    y = np.where(score > score.median(), "yes", "no")
    pre = ColumnTransformer(
        [
            ("num", StandardScaler(), ["size", "weight"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["colour"]),
        ]
    )
    model = Pipeline([("pre", pre), ("clf", LogisticRegression(max_iter=500))]).fit(df, y)
    onnx = _convert(
        model,
        [
            ("size", FloatTensorType([None, 1])),
            ("colour", StringTensorType([None, 1])),
            ("weight", FloatTensorType([None, 1])),
        ],
    )
    meta = _meta(
        name,
        onnx,
        algorithm="logistic_regression",
        features=(
            FeatureSpec("size", "numeric"),
            FeatureSpec("colour", "categorical", MIXED_CATEGORIES),
            FeatureSpec("weight", "numeric"),
        ),
        inputs=(
            TensorSpec("size", "float32", (-1, 1)),
            TensorSpec("colour", "string", (-1, 1)),
            TensorSpec("weight", "float32", (-1, 1)),
        ),
        outputs=(
            TensorSpec("label", "string", (-1,)),
            TensorSpec("probabilities", "float32", (-1, 2)),
        ),
        class_labels=("no", "yes"),
        label_dtype="string",
    )
    return Exported(model, onnx, meta, df)


@functools.cache
def imported_logreg(name: str = "imported") -> Exported:
    """An 'imported' iris LogisticRegression: input "float_input", no recorded features."""
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=300, C=0.5).fit(X, y)
    onnx = _convert(model, [("float_input", FloatTensorType([None, 4]))])
    meta = _meta(
        name,
        onnx,
        source="imported",
        inputs=(TensorSpec("float_input", "float32", (-1, 4)),),
        outputs=(
            TensorSpec("label", "int64", (-1,)),
            TensorSpec("probabilities", "float32", (-1, 3)),
        ),
        class_labels=("0", "1", "2"),
    )
    return Exported(model, onnx, meta, X.astype(np.float32))


def rows_of(X: Any, names: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Named rows (Python floats/strings) from a DataFrame or a matrix + names."""
    if isinstance(X, pd.DataFrame):
        return [
            {k: (v if isinstance(v, str) else float(v)) for k, v in row.items()}
            for row in X.to_dict(orient="records")
        ]
    assert names is not None
    return [dict(zip(names, map(float, r), strict=True)) for r in np.asarray(X)]


def with_version(exp: Exported, version: int) -> VersionMeta:
    """``exp.meta`` numbered ``version``."""
    return replace(exp.meta, version=version)


def publish_broken(store: Any, home: Any, name: str = "broken") -> None:
    """Publish iris as ``name`` v1 in the LocalModelStore ``store`` at ``home``, then flip
    one byte of its file: the sha256 no longer matches, so the version cannot load."""
    iris = iris_logreg()
    store.publish(name, iris.onnx, iris.meta)
    onnx_file = home / "models" / name / "versions" / "1" / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))


def unknown_operator_onnx(domain: str = "com.example.custom", op: str = "Frobnicate") -> bytes:
    """A valid ONNX model (it passes ``onnx.checker``) that onnxruntime cannot load: its one
    node is ``domain:op``, an operator domain onnxruntime does not know. Its input
    ("float_input", float32 [N, 4]) matches ``imported_logreg``'s."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node(op, ["float_input"], ["label"], domain=domain)],
        "unknown_operator",
        [helper.make_tensor_value_info("float_input", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())
