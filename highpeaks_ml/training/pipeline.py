"""Fit -> evaluate -> export -> verify: one table in, one verified ONNX model out.

The scikit-learn model is a Pipeline whose preprocessing travels inside the
exported ONNX graph, so callers send raw rows:

- numeric columns: missing values imputed with the training median (except
  for HistGradientBoosting, which routes missing values itself), then
  standardised when the algorithm needs it (never in front of trees);
- categorical (text) columns: one-hot encoded, unseen categories ignored.

ONNX conventions (docs/training.md, shared with serving):

- every feature numeric: ONE input ``input`` float32 ``[-1, n_features]``;
  otherwise ONE input per feature, ``[-1, 1]``, float32 or string;
- classifiers output ``label`` ``[-1]`` (int64 or string) and
  ``probabilities`` float32 ``[-1, n_classes]`` (ZipMap disabled), columns in
  ``class_labels`` order; regressors output ``variable`` float32 ``[-1, 1]``.

Precision: the graph computes in float32. Numeric training data is rounded to
float32 once before fitting, so scikit-learn and ONNX see the same numbers;
trees get no scaler in front (a float32 scaler would move rows across split
thresholds); HistGradientBoosting thresholds are made exact by
``onnx_fixes``. Verification then compares onnxruntime (CPU) with
scikit-learn on the held-out rows against the tolerances below, and a model
that misses them is refused (``VerificationFailed``). The same check then runs
on a copy of those rows with values left out (``verify_missing``): features
are recorded as accepting missing values (``allows_missing``, which serving
obeys) only when the exported graph agrees there too.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from highpeaks_ml.errors import HighPeaksError, InvalidArgument, quote
from highpeaks_ml.training.catalogue import CLASSIFICATION, REGRESSION, Algorithm
from highpeaks_ml.training.datasets import NUMERIC

log = logging.getLogger("highpeaks_ml.training")

#: Largest allowed |onnx - sklearn| of a class probability.
PROBA_TOLERANCE = 1e-4
#: Largest allowed |onnx - sklearn| of a regression value, relative to
#: (|sklearn value| + standard deviation of the training target).
REGRESSION_RTOL = 1e-4
#: Rows whose two best scikit-learn scores are this close count as ties:
#: float32 may pick either class there.
TIE_TOLERANCE = 1e-4
#: Fewest rows in each of the training and the held-out split.
MIN_SPLIT_ROWS = 5
#: Most categories one-hot encoded per categorical column.
MAX_CATEGORIES = 1000

INPUT = "input"
LABEL = "label"
PROBABILITIES = "probabilities"
VARIABLE = "variable"
_OUTPUT_NAMES = {LABEL, PROBABILITIES, VARIABLE}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class VerificationFailed(HighPeaksError):
    """The ONNX model does not predict what the scikit-learn model predicts."""


@dataclass
class PreparedData:
    """Features and target ready for fitting."""

    X: pd.DataFrame  # columns named by the ONNX input names, in feature order
    y: np.ndarray
    task: str
    features: list[tuple[str, str]]  # (column name, NUMERIC | CATEGORICAL)
    input_names: list[str]  # ONNX input name per feature (mixed tables)

    @property
    def all_numeric(self) -> bool:
        """Whether the graph gets one ``input`` matrix (no categorical feature)."""
        return all(t == NUMERIC for _, t in self.features)

    @property
    def numeric_inputs(self) -> list[str]:
        return [
            n for n, (_, t) in zip(self.input_names, self.features, strict=True) if t == NUMERIC
        ]

    @property
    def categorical_inputs(self) -> list[str]:
        return [
            n for n, (_, t) in zip(self.input_names, self.features, strict=True) if t != NUMERIC
        ]


@dataclass
class TrainedModel:
    """The outcome of ``train``: the verified ONNX bytes and everything to record."""

    onnx_bytes: bytes
    task: str
    metrics: dict[str, float]
    verification: dict[str, Any]
    features: list[dict[str, Any]]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    class_labels: list[str]
    label_dtype: str
    train_rows: int
    test_rows: int
    warnings: list[str] = field(default_factory=list)
    #: The fitted scikit-learn Pipeline the ONNX bytes were exported from.
    estimator: Any = field(default=None, repr=False)
    #: Where the estimator was fitted: "cuda" (XGBoost on a GPU) or "cpu".
    training_device: str = "cpu"
    #: The prepared data and its split, for the evaluation report and the
    #: training profile (training/report.py): held-out rows and targets, training rows.
    data: PreparedData | None = field(default=None, repr=False)
    X_train: pd.DataFrame | None = field(default=None, repr=False)
    X_test: pd.DataFrame | None = field(default=None, repr=False)
    y_test: np.ndarray | None = field(default=None, repr=False)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a trained model."""
    import onnx
    import onnxruntime
    import skl2onnx
    import sklearn

    from highpeaks_ml.training import boosting

    return {
        "scikit-learn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        **boosting.library_versions(),
    }


# --- data ------------------------------------------------------------------------


def input_names(columns: list[str]) -> list[str]:
    """ONNX input names for feature columns: the name itself when it is a plain
    identifier, otherwise a sanitised one; never an output name, never twice."""
    used: set[str] = set()
    out = []
    for col in columns:
        name = re.sub(r"[^A-Za-z0-9_]", "_", col)
        if not name or name[0].isdigit():
            name = f"f_{name}"
        if name in _OUTPUT_NAMES:
            name = f"{name}_"
        base, n = name, 2
        while name in used:
            name = f"{base}_{n}"
            n += 1
        used.add(name)
        out.append(name)
    return out


def prepare(
    frame: pd.DataFrame, target: str, features: list[tuple[str, str]], task: str
) -> PreparedData:
    """Typed feature table and target; InvalidArgument for data that cannot be trained on.

    ``frame`` columns are typed as ``datasets.type_frame`` does (numeric
    float64 with NaN for missing, categorical str).
    """
    y_raw = frame[target]
    if task == CLASSIFICATION:
        if pd.api.types.is_numeric_dtype(y_raw):
            values = y_raw.to_numpy(dtype="float64")
            if np.isnan(values).any():
                raise InvalidArgument(f"target column {quote(target)} has missing values")
            if not np.all(np.floor(values) == values):
                raise InvalidArgument(
                    f"target column {quote(target)} holds non-integer numbers; use task regression"
                )
            y = values.astype(np.int64)
        else:
            y = y_raw.astype(str).to_numpy(dtype=object)
            if (y == "").any():
                raise InvalidArgument(f"target column {quote(target)} has missing values")
        if len(np.unique(y)) < 2:
            raise InvalidArgument(f"target column {quote(target)} has one class: nothing to learn")
    else:
        if not pd.api.types.is_numeric_dtype(y_raw):
            raise InvalidArgument(
                f"target column {quote(target)} holds text; it cannot be regressed"
            )
        y = y_raw.to_numpy(dtype="float64")
        if not np.isfinite(y).all():
            raise InvalidArgument(f"target column {quote(target)} has missing or infinite values")
        if np.all(y == y[0]):
            raise InvalidArgument(f"target column {quote(target)} is constant: nothing to learn")
    names = input_names([c for c, _ in features])
    columns: dict[str, Any] = {}
    for (col, kind), name in zip(features, names, strict=True):
        s = frame[col]
        if kind == NUMERIC:
            values = s.to_numpy(dtype="float64")
            present = values[~np.isnan(values)]
            if present.size == 0:
                raise InvalidArgument(f"feature column {quote(col)} has no values; leave it out")
            if np.abs(present).max() > _FLOAT32_MAX:
                raise InvalidArgument(
                    f"feature column {quote(col)} has values beyond the float32 range (±3.4e38)"
                )
            # The served graph takes float32: train on exactly those numbers.
            columns[name] = values.astype(np.float32).astype(np.float64)
        else:
            values = s.astype(str).to_numpy(dtype=object)
            distinct = len(pd.unique(values))
            if distinct > MAX_CATEGORIES:
                raise InvalidArgument(
                    f"feature column {quote(col)} has {distinct} distinct values; at most"
                    f" {MAX_CATEGORIES} categories are one-hot encoded (leave it out with"
                    " feature_columns)"
                )
            columns[name] = values
    X = pd.DataFrame(columns, index=range(len(frame)))
    return PreparedData(X=X, y=y, task=task, features=list(features), input_names=names)


def check_split_sizes(rows: int, test_size: float, n_classes: int = 0) -> tuple[int, int]:
    """(train rows, test rows) for ``rows``; InvalidArgument when a split is too small."""
    n_test = math.ceil(rows * test_size)
    n_train = rows - n_test
    need = max(MIN_SPLIT_ROWS, n_classes)
    if n_test < need or n_train < need:
        per_class = f" and one per class ({n_classes} classes)" if n_classes else ""
        raise InvalidArgument(
            f"too few rows for the split: {rows} rows with test_size {test_size:g} give"
            f" {n_train} training and {n_test} held-out rows; each split needs at least"
            f" {MIN_SPLIT_ROWS}{per_class}"
        )
    return n_train, n_test


def split(
    data: PreparedData, test_size: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray]:
    """Seeded train/test split, stratified by class for classification."""
    from sklearn.model_selection import train_test_split

    stratify = None
    if data.task == CLASSIFICATION:
        labels, counts = np.unique(data.y, return_counts=True)
        check_split_sizes(len(data.y), test_size, len(labels))
        if counts.min() < 2:
            lonely = labels[counts.argmin()]
            raise InvalidArgument(
                f"class {quote(lonely)} has only 1 row; each class needs at least 2"
                " (one to train on, one held out)"
            )
        stratify = data.y
    else:
        check_split_sizes(len(data.y), test_size)
    X_train, X_test, y_train, y_test = train_test_split(
        data.X, data.y, test_size=test_size, random_state=int(seed) % 2**32, stratify=stratify
    )
    return X_train, X_test, y_train, y_test


def check_params_fit_rows(algorithm: Algorithm, params: dict[str, Any], train_rows: int) -> None:
    """Hyperparameters that depend on the data size (k of k-NN <= training rows)."""
    k = params.get("n_neighbors")
    if algorithm.name == "knn" and isinstance(k, int) and k > train_rows:
        raise InvalidArgument(
            f"hyperparameter 'n_neighbors' of 'knn' ({k}) exceeds the {train_rows} training rows"
        )


# --- model -----------------------------------------------------------------------


def build(
    algorithm: Algorithm,
    data: PreparedData,
    params: dict[str, Any],
    seed: int,
    n_jobs: int = 1,
    device: str = "cpu",
) -> Any:
    """The unfitted scikit-learn Pipeline (preprocessing + estimator).

    ``n_jobs``: the job's CPUs, given to estimators that take ``n_jobs``
    (callers cannot set it: it is not a catalogue hyperparameter).
    ``device``: the server's training device (only XGBoost uses ``cuda``).
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric_steps: list[tuple[str, Any]] = []
    if not algorithm.native_missing:
        numeric_steps.append(("impute", SimpleImputer(strategy="median")))
    if algorithm.scales_numeric:
        numeric_steps.append(("scale", StandardScaler()))
    estimator = algorithm.build(data.task, params, seed, device)
    if n_jobs != 1 and "n_jobs" in estimator.get_params(deep=False):
        estimator.set_params(n_jobs=n_jobs)
    if data.all_numeric:
        return Pipeline([*numeric_steps, ("model", estimator)])
    transformers: list[tuple[str, Any, list[str]]] = []
    if data.numeric_inputs:
        numeric: Any = Pipeline(numeric_steps) if numeric_steps else "passthrough"
        transformers.append(("numeric", numeric, data.numeric_inputs))
    transformers.append(
        (
            "categorical",
            OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float64),
            data.categorical_inputs,
        )
    )
    pre = ColumnTransformer(transformers, sparse_threshold=0.0)
    return Pipeline([("preprocess", pre), ("model", estimator)])


def fit(model: Any, X: pd.DataFrame, y: np.ndarray, all_numeric: bool) -> list[str]:
    """Fit in place; returns the warnings scikit-learn raised (convergence, say)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(_sk_input(X, all_numeric), y)
    seen: list[str] = []
    for w in caught:
        text = f"{w.category.__name__}: {str(w.message).splitlines()[0][:200]}"
        if text not in seen:
            seen.append(text)
    return seen


def _sk_input(X: pd.DataFrame, all_numeric: bool) -> Any:
    # An all-numeric pipeline is fitted on a plain matrix (one ONNX input);
    # a mixed one on the named table (one ONNX input per column).
    return X.to_numpy(dtype="float64") if all_numeric else X


def evaluate(model: Any, X: pd.DataFrame, y: np.ndarray, task: str, all_numeric: bool) -> dict:
    """Held-out metrics: accuracy, f1_macro, roc_auc (binary), log_loss; r2, rmse, mae."""
    from sklearn import metrics as skm

    Xs = _sk_input(X, all_numeric)
    pred = model.predict(Xs)
    if task == CLASSIFICATION:
        proba = model.predict_proba(Xs)
        classes = model.classes_
        out = {
            "accuracy": float(skm.accuracy_score(y, pred)),
            "f1_macro": float(skm.f1_score(y, pred, average="macro")),
            "log_loss": float(skm.log_loss(y, proba, labels=classes)),
        }
        if len(classes) == 2 and len(np.unique(y)) == 2:
            out["roc_auc"] = float(skm.roc_auc_score(y, proba[:, 1]))
        return out
    return {
        "r2": float(skm.r2_score(y, pred)),
        "rmse": float(math.sqrt(skm.mean_squared_error(y, pred))),
        "mae": float(skm.mean_absolute_error(y, pred)),
    }


# --- export and verification -----------------------------------------------------


def export(model: Any, data: PreparedData) -> bytes:
    """Convert the fitted Pipeline to ONNX (float32, ZipMap off) following the conventions."""
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    from highpeaks_ml.training import boosting, onnx_fixes

    onnx_fixes.install()
    # XGBoost's and LightGBM's converters come from onnxmltools.
    boosting.register_converters()
    if data.all_numeric:
        initial_types: list[tuple[str, Any]] = [
            (INPUT, FloatTensorType([None, len(data.features)]))
        ]
    else:
        initial_types = [
            (name, FloatTensorType([None, 1]) if kind == NUMERIC else StringTensorType([None, 1]))
            for name, (_, kind) in zip(data.input_names, data.features, strict=True)
        ]
    estimator = model.steps[-1][1]
    options = {id(estimator): {"zipmap": False}} if data.task == CLASSIFICATION else None
    with warnings.catch_warnings():
        # skl2onnx reads SVC.probA_/probB_, deprecated in scikit-learn 1.9
        # (SVC(probability=True) goes in 1.11; see docs/training.md).
        warnings.simplefilter("ignore", FutureWarning)
        proto = convert_sklearn(
            model,
            initial_types=initial_types,
            options=options,
            target_opset=boosting.target_opset(estimator),
        )
    expected = [LABEL, PROBABILITIES] if data.task == CLASSIFICATION else [VARIABLE]
    got = [o.name for o in proto.graph.output]
    if got != expected:
        raise VerificationFailed(
            f"the exported graph has outputs {got}, expected {expected}; nothing was published"
        )
    proto.doc_string = "High Peaks ML: scikit-learn pipeline exported with skl2onnx"
    onnx.checker.check_model(proto)
    return bytes(proto.SerializeToString())


def onnx_feed(X: pd.DataFrame, data: PreparedData) -> dict[str, np.ndarray]:
    """The onnxruntime inputs for raw rows, as a caller would send them."""
    if data.all_numeric:
        return {INPUT: X.to_numpy(dtype=np.float32)}
    feed = {}
    for name, (_, kind) in zip(data.input_names, data.features, strict=True):
        column = X[name].to_numpy()
        if kind == NUMERIC:
            feed[name] = column.astype(np.float32).reshape(-1, 1)
        else:
            feed[name] = column.astype(str).astype(object).reshape(-1, 1)
    return feed


def session(onnx_bytes: bytes) -> Any:
    """An onnxruntime CPU session (one thread: the worker owns one core's worth)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])


def _tie_rows(model: Any, Xs: Any) -> np.ndarray:
    """Rows where scikit-learn itself is within float32 noise of another class."""
    from sklearn.svm import SVC

    estimator = model.steps[-1][1]
    if isinstance(estimator, SVC):
        # SVC labels come from the decision function, not the probabilities.
        scores = np.asarray(model.decision_function(Xs), dtype=np.float64)
        if scores.ndim == 1:
            return np.abs(scores) <= TIE_TOLERANCE * (1 + np.abs(scores))
    else:
        scores = np.asarray(model.predict_proba(Xs), dtype=np.float64)
    top2 = np.sort(scores, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) <= TIE_TOLERANCE * (1 + np.abs(top2[:, 1]))


def _neighbour_tie_rows(model: Any, Xs: Any, rows: int) -> np.ndarray:
    """k-NN rows whose k-th and (k+1)-th nearest training rows are equally far.

    Which of two equidistant neighbours is counted is an implementation detail
    (scikit-learn and onnxruntime's TopK choose differently; iris has duplicate
    rows), so such rows may legitimately get other probabilities or values, up
    to one neighbour's weight. They are reported and left out of the check.
    """
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

    estimator = model.steps[-1][1]
    if not isinstance(estimator, KNeighborsClassifier | KNeighborsRegressor):
        return np.zeros(rows, dtype=bool)
    k = int(estimator.n_neighbors)
    if k >= estimator.n_samples_fit_:
        return np.zeros(rows, dtype=bool)
    transformed = model[:-1].transform(Xs) if len(model.steps) > 1 else Xs
    dist, _ = estimator.kneighbors(transformed, n_neighbors=k + 1)
    dist = np.asarray(dist, dtype=np.float64)
    # float32 in the graph: distances this close may order either way.
    return np.abs(dist[:, k] - dist[:, k - 1]) <= 1e-5 * (1 + np.abs(dist[:, k - 1]))


def verify(
    model: Any, onnx_bytes: bytes, X: pd.DataFrame, data: PreparedData, y_train: np.ndarray
) -> dict[str, Any]:
    """Compare onnxruntime with scikit-learn on ``X``; VerificationFailed past the tolerances."""
    sess = session(onnx_bytes)
    outputs = sess.run(None, onnx_feed(X, data))
    Xs = _sk_input(X, data.all_numeric)
    rows = len(X)
    if data.task == CLASSIFICATION:
        sk_label = model.predict(Xs)
        sk_proba = model.predict_proba(Xs)
        ox_label, ox_proba = outputs[0], outputs[1]
        if ox_proba.shape != sk_proba.shape or ox_label.shape != (rows,):
            raise VerificationFailed(
                f"ONNX verification failed: output shapes {ox_label.shape} and"
                f" {ox_proba.shape} do not match scikit-learn's; nothing was published"
            )
        mismatch = np.asarray(ox_label).astype(str) != np.asarray(sk_label).astype(str)
        neighbour_ties = _neighbour_tie_rows(model, Xs, rows)
        ties = _tie_rows(model, Xs) | neighbour_ties
        hard = mismatch & ~ties
        diff = np.abs(ox_proba.astype(np.float64) - sk_proba)
        diff[neighbour_ties] = 0.0
        max_diff = float(diff.max()) if diff.size else 0.0
        result = {
            "rows": rows,
            "label_mismatch_rate": float(mismatch.mean()) if rows else 0.0,
            "tie_rows": int(ties.sum()),
            "max_abs_diff": max_diff,
            "tolerance": PROBA_TOLERANCE,
            "passed": bool(not hard.any() and max_diff <= PROBA_TOLERANCE),
        }
        if not result["passed"]:
            over = int((diff.max(axis=1) > PROBA_TOLERANCE).sum())
            raise VerificationFailed(
                "ONNX verification failed: the exported model disagrees with scikit-learn on"
                f" the held-out rows: labels differ on {int(hard.sum())} of {rows} rows"
                f" (ties aside), probabilities differ by up to {max_diff:.3g} on {over} rows"
                f" (tolerance {PROBA_TOLERANCE:g}); nothing was published"
            )
        return result
    sk_value = np.asarray(model.predict(Xs), dtype=np.float64).reshape(-1)
    ox_value = outputs[0]
    if ox_value.shape != (rows, 1):
        raise VerificationFailed(
            f"ONNX verification failed: output shape {ox_value.shape}, expected ({rows}, 1);"
            " nothing was published"
        )
    diff = np.abs(ox_value.reshape(-1).astype(np.float64) - sk_value)
    neighbour_ties = _neighbour_tie_rows(model, Xs, rows)
    diff[neighbour_ties] = 0.0
    scale = np.abs(sk_value) + max(float(np.std(y_train)), 1e-12)
    rel = diff / scale
    max_rel = float(rel.max()) if rel.size else 0.0
    result = {
        "rows": rows,
        "label_mismatch_rate": 0.0,
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "max_rel_diff": max_rel,
        "tie_rows": int(neighbour_ties.sum()),
        "tolerance": REGRESSION_RTOL,
        "passed": bool(max_rel <= REGRESSION_RTOL),
    }
    if not result["passed"]:
        raise VerificationFailed(
            "ONNX verification failed: the exported model disagrees with scikit-learn on"
            f" the held-out rows: values differ by up to {result['max_abs_diff']:.3g}"
            f" ({max_rel:.3g} relative, tolerance {REGRESSION_RTOL:g}) on"
            f" {int((rel > REGRESSION_RTOL).sum())} of {rows} rows; nothing was published"
        )
    return result


#: Most rows of the missing-value verification (a copy of held-out rows).
MAX_MISSING_ROWS = 1000


def handles_missing(kind: str, algorithm: Algorithm, model: Any) -> bool:
    """Whether the fitted pipeline ``model`` answers for a missing value of a ``kind`` feature.

    Numeric: a median imputer fills it in, or the estimator routes it itself
    (``native_missing``, HistGradientBoosting). Categorical: training turns an
    empty cell into the empty string (``datasets.type_frame``), which the
    one-hot encoder encodes like any category (all zeros, i.e. ignored, when no
    training row lacked the value); serving sends a null the same way.
    Recorded only once the exported graph is shown to agree (``verify_missing``).
    """
    from sklearn.impute import SimpleImputer

    if kind == NUMERIC:
        imputed = any(isinstance(step, SimpleImputer) for step in _steps(model))
        return imputed or algorithm.native_missing
    return True


def _steps(model: Any) -> list[Any]:
    """Every estimator inside a Pipeline / ColumnTransformer tree."""
    out = [model]
    for child in getattr(model, "steps", ()):
        out.extend(_steps(child[1]))
    for child in getattr(model, "transformers_", ()):
        out.extend(_steps(child[1]))
    return out


def missing_rows(X: pd.DataFrame, data: PreparedData) -> pd.DataFrame:
    """Held-out rows with values knocked out, as a caller would send them.

    Row i loses feature i mod n (NaN for a numeric feature, "" for a
    categorical one: what training makes of an empty cell); the first row
    loses every feature.
    """
    out = X.iloc[:MAX_MISSING_ROWS].copy().reset_index(drop=True)
    n = len(data.features)
    for j, (name, (_, kind)) in enumerate(zip(data.input_names, data.features, strict=True)):
        gone = np.zeros(len(out), dtype=bool)
        gone[j::n] = True
        gone[:1] = True
        out.loc[gone, name] = np.nan if kind == NUMERIC else ""
    return out


def verify_missing(
    model: Any, onnx_bytes: bytes, X: pd.DataFrame, data: PreparedData, y_train: np.ndarray
) -> tuple[int, str]:
    """``verify`` on ``missing_rows(X)``: (rows checked, "") or (0, why it disagrees).

    A disagreement does not refuse the model (it predicts complete rows as
    scikit-learn does); its features are then recorded as not accepting
    missing values, so serving keeps refusing NaN for it.
    """
    Xm = missing_rows(X, data)
    try:
        verify(model, onnx_bytes, Xm, data, y_train)
    except VerificationFailed as exc:
        return 0, (
            "this version refuses missing values: on held-out rows with values left out,"
            f" the exported model disagrees with scikit-learn ({exc})"
        )
    return len(Xm), ""


# --- the whole run ---------------------------------------------------------------


def train(
    frame: pd.DataFrame,
    *,
    algorithm: Algorithm,
    task: str,
    params: dict[str, Any],
    target: str,
    features: list[tuple[str, str]],
    test_size: float,
    seed: int,
    progress: Callable[[str, dict[str, Any] | None], None] | None = None,
    n_jobs: int = 1,
    device: str = "cpu",
) -> TrainedModel:
    """Prepare, split, fit, evaluate, export and verify; ``progress(stage, info)`` per step.

    ``device`` is the server's training device; the one really used is
    ``TrainedModel.training_device`` (``cuda`` only for XGBoost).
    """

    def report(stage: str, info: dict[str, Any] | None = None) -> None:
        if progress is not None:
            progress(stage, info)

    data = prepare(frame, target, features, task)
    X_train, X_test, y_train, y_test = split(data, test_size, seed)
    check_params_fit_rows(algorithm, params, len(X_train))
    model = build(algorithm, data, params, seed, n_jobs, device)
    report("FITTING")
    fit_warnings = fit(model, X_train, y_train, data.all_numeric)
    used = algorithm.training_device(device)
    if used != "cpu":
        # Predict on the CPU from here on, as the ONNX model is checked on the
        # CPU; XGBoost would otherwise warn about data on another device.
        model.steps[-1][1].set_params(device="cpu")
    report("EVALUATING")
    metrics = evaluate(model, X_test, y_test, task, data.all_numeric)
    report("EXPORTING", {"metrics": metrics})
    onnx_bytes = export(model, data)
    report("VERIFYING")
    verification = verify(model, onnx_bytes, X_test, data, y_train)
    missing_ok, missing_note = verify_missing(model, onnx_bytes, X_test, data, y_train)
    verification["rows_with_missing"] = missing_ok
    if missing_note:
        fit_warnings.append(missing_note)
    return TrainedModel(
        onnx_bytes=onnx_bytes,
        task=task,
        metrics=metrics,
        verification=verification,
        features=_feature_specs(model, data, algorithm, missing_ok > 0),
        inputs=_input_specs(data),
        outputs=_output_specs(model, task),
        class_labels=[str(c) for c in model.classes_] if task == CLASSIFICATION else [],
        label_dtype=_label_dtype(data) if task == CLASSIFICATION else "",
        train_rows=len(X_train),
        test_rows=len(X_test),
        warnings=fit_warnings,
        estimator=model,
        training_device=used,
        data=data,
        X_train=X_train,
        X_test=X_test,
        y_test=y_test,
    )


def _label_dtype(data: PreparedData) -> str:
    return "int64" if data.y.dtype.kind in "iu" else "string"


def _feature_specs(
    model: Any, data: PreparedData, algorithm: Algorithm, missing_verified: bool
) -> list[dict[str, Any]]:
    categories: dict[str, list[str]] = {}
    if not data.all_numeric:
        encoder = model.named_steps["preprocess"].named_transformers_["categorical"]
        for name, cats in zip(data.categorical_inputs, encoder.categories_, strict=True):
            categories[name] = [str(c) for c in cats]
    return [
        {
            "name": col,
            "type": kind,
            "categories": categories.get(name, []),
            "allows_missing": missing_verified and handles_missing(kind, algorithm, model),
        }
        for (col, kind), name in zip(data.features, data.input_names, strict=True)
    ]


def _input_specs(data: PreparedData) -> list[dict[str, Any]]:
    if data.all_numeric:
        return [{"name": INPUT, "dtype": "float32", "shape": [-1, len(data.features)]}]
    return [
        {"name": name, "dtype": "float32" if kind == NUMERIC else "string", "shape": [-1, 1]}
        for name, (_, kind) in zip(data.input_names, data.features, strict=True)
    ]


def _output_specs(model: Any, task: str) -> list[dict[str, Any]]:
    if task == REGRESSION:
        return [{"name": VARIABLE, "dtype": "float32", "shape": [-1, 1]}]
    label = "int64" if np.asarray(model.classes_).dtype.kind in "iu" else "string"
    return [
        {"name": LABEL, "dtype": label, "shape": [-1]},
        {"name": PROBABILITIES, "dtype": "float32", "shape": [-1, len(model.classes_)]},
    ]


__all__ = [
    "MAX_CATEGORIES",
    "MAX_MISSING_ROWS",
    "MIN_SPLIT_ROWS",
    "PROBA_TOLERANCE",
    "REGRESSION_RTOL",
    "TIE_TOLERANCE",
    "PreparedData",
    "TrainedModel",
    "VerificationFailed",
    "build",
    "check_params_fit_rows",
    "check_split_sizes",
    "evaluate",
    "export",
    "fit",
    "handles_missing",
    "input_names",
    "library_versions",
    "missing_rows",
    "onnx_feed",
    "prepare",
    "split",
    "train",
    "verify",
    "verify_missing",
]
