"""The algorithm catalogue: what can be trained, with which hyperparameters.

Every algorithm is a scikit-learn estimator family (or XGBoost's or
LightGBM's scikit-learn estimators) with a classification and/or a
regression variant. Callers may only set the hyperparameters listed
here, within their bounds: anything else (an unknown name, ``n_jobs``, a
string where a number belongs, ``n_estimators=10**9``) is refused with
InvalidArgument naming the parameter. Values not given take the catalogue
default, and the full set (defaults filled in) is what is recorded with the
version.

This module is imported by the server (to list and validate) and by the
training workers (to build estimators); it imports scikit-learn, XGBoost and
LightGBM lazily so that listing the catalogue stays cheap.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from highpeaks_ml.errors import FailedPrecondition, InvalidArgument, quote

CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, REGRESSION)

INT = "int"
FLOAT = "float"
STRING = "string"
BOOL = "bool"

#: A target is inferred to be a classification target when it holds strings,
#: or integers with at most this many distinct values.
MAX_INFERRED_CLASSES = 20


@dataclass(frozen=True)
class Param:
    """One tunable hyperparameter.

    ``minimum``/``maximum`` are inclusive bounds (numeric types); ``choices``
    the allowed values (string type); ``tasks`` the tasks it applies to.
    """

    name: str
    type: str
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    nullable: bool = False
    tasks: tuple[str, ...] = TASKS

    def check(self, value: Any, algorithm: str) -> Any:
        """The validated (normalised) value, or InvalidArgument naming the parameter."""
        where = f"hyperparameter {self.name!r} of {algorithm!r}"
        if value is None:
            if self.nullable:
                return None
            raise InvalidArgument(f"{where} must not be null")
        if self.type == BOOL:
            if not isinstance(value, bool):
                raise InvalidArgument(f"{where} must be true or false, got {_show(value)}")
            return value
        if self.type == STRING:
            if not isinstance(value, str) or value not in self.choices:
                raise InvalidArgument(
                    f"{where} must be one of {', '.join(self.choices)}; got {_show(value)}"
                )
            return value
        # Numbers: bools are ints in Python but never a valid number here.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidArgument(f"{where} must be a number, got {_show(value)}")
        if not math.isfinite(value):
            raise InvalidArgument(f"{where} must be finite, got {value!r}")
        number: int | float
        if self.type == INT:
            # Struct values arrive as doubles: 5.0 is the integer 5, 5.5 is not.
            if float(value) != int(value):
                raise InvalidArgument(f"{where} must be an integer, got {value!r}")
            number = int(value)
        else:
            number = float(value)
        if self.minimum is not None and number < self.minimum:
            raise InvalidArgument(f"{where} must be >= {_num(self.minimum)}, got {number!r}")
        if self.maximum is not None and number > self.maximum:
            raise InvalidArgument(f"{where} must be <= {_num(self.maximum)}, got {number!r}")
        return number


@dataclass(frozen=True)
class Algorithm:
    """One catalogue entry: its tasks, hyperparameters and estimator factory."""

    name: str
    description: str
    tasks: tuple[str, ...]
    params: tuple[Param, ...]
    #: Whether numeric columns are standardised in front of the estimator.
    #: Never in front of trees: they are scale-invariant, and a float32
    #: scaler in the ONNX graph would move rows across split thresholds
    #: (see docs/training.md).
    scales_numeric: bool
    #: Builds the estimator: (task, validated params, seed) -> estimator.
    factory: Callable[[str, dict[str, Any], int], Any] = field(repr=False, compare=False)
    #: Whether the estimator handles missing numeric values itself (no imputer).
    native_missing: bool = False
    #: Modules of optional libraries it needs (none for scikit-learn's own):
    #: submissions are refused with FailedPrecondition when one is not installed.
    requires: tuple[str, ...] = ()
    #: Whether it trains on the CUDA device when the server's training device is ``cuda``.
    gpu: bool = False

    def missing_modules(self) -> list[str]:
        """The modules in ``requires`` that are not installed here (found without importing)."""
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def training_device(self, device: str) -> str:
        """The device it trains on when the server's training device is ``device``."""
        return "cuda" if self.gpu and device == "cuda" else "cpu"

    def params_for(self, task: str) -> tuple[Param, ...]:
        """The hyperparameters that apply to ``task``."""
        return tuple(p for p in self.params if task in p.tasks)

    def validate(self, task: str, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """Check ``given`` against the allow-list; return all parameters, defaults filled in."""
        if task not in self.tasks:
            raise InvalidArgument(
                f"algorithm {self.name!r} supports {' and '.join(self.tasks)} only, not {task}"
            )
        missing = self.missing_modules()
        if missing:
            raise FailedPrecondition(
                f"algorithm {self.name!r} needs {' and '.join(missing)}, not installed on this"
                " server (install highpeaks-ml[boost], or [boost-gpu] for CUDA XGBoost)"
            )
        given = dict(given or {})
        known = {p.name: p for p in self.params}
        applicable = {p.name: p for p in self.params_for(task)}
        for name in given:
            if name not in known:
                allowed = ", ".join(sorted(applicable)) or "none"
                raise InvalidArgument(
                    f"unknown hyperparameter {_show(name)} for {self.name!r}; allowed: {allowed}"
                )
            if name not in applicable:
                raise InvalidArgument(
                    f"hyperparameter {name!r} of {self.name!r} applies to"
                    f" {' and '.join(known[name].tasks)} only, not {task}"
                )
        return {
            name: p.check(given[name], self.name) if name in given else p.default
            for name, p in applicable.items()
        }

    def build(self, task: str, params: dict[str, Any], seed: int, device: str = "cpu") -> Any:
        """A new, unfitted scikit-learn estimator for validated ``params``.

        ``device`` is the server's training device; only ``gpu`` algorithms use it.
        """
        estimator = self.factory(task, params, seed)
        if self.training_device(device) != "cpu":
            estimator.set_params(device=self.training_device(device))
        return estimator


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


# --- the estimators ------------------------------------------------------------


def _seed(seed: int) -> int:
    # scikit-learn wants a seed in [0, 2**32 - 1].
    return int(seed) % (2**32)


def _logistic_regression(task: str, p: dict[str, Any], seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(
        C=p["C"],
        max_iter=p["max_iter"],
        tol=p["tol"],
        fit_intercept=p["fit_intercept"],
        class_weight=p["class_weight"],
        random_state=_seed(seed),
    )


def _linear_regression(task: str, p: dict[str, Any], seed: int) -> Any:
    from sklearn.linear_model import LinearRegression

    return LinearRegression(fit_intercept=p["fit_intercept"])


def _ridge(task: str, p: dict[str, Any], seed: int) -> Any:
    from sklearn.linear_model import Ridge

    return Ridge(alpha=p["alpha"], fit_intercept=p["fit_intercept"], random_state=_seed(seed))


def _decision_tree(task: str, p: dict[str, Any], seed: int) -> Any:
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    cls = DecisionTreeClassifier if task == CLASSIFICATION else DecisionTreeRegressor
    return cls(
        max_depth=p["max_depth"],
        min_samples_split=p["min_samples_split"],
        min_samples_leaf=p["min_samples_leaf"],
        max_leaf_nodes=p["max_leaf_nodes"],
        random_state=_seed(seed),
    )


def _random_forest(task: str, p: dict[str, Any], seed: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    cls = RandomForestClassifier if task == CLASSIFICATION else RandomForestRegressor
    # n_jobs stays 1: a job owns one worker process, and the pool size is
    # the operator's knob for parallelism.
    return cls(
        n_estimators=p["n_estimators"],
        max_depth=p["max_depth"],
        min_samples_split=p["min_samples_split"],
        min_samples_leaf=p["min_samples_leaf"],
        max_leaf_nodes=p["max_leaf_nodes"],
        bootstrap=p["bootstrap"],
        n_jobs=1,
        random_state=_seed(seed),
    )


def _hist_gradient_boosting(task: str, p: dict[str, Any], seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    cls = (
        HistGradientBoostingClassifier if task == CLASSIFICATION else HistGradientBoostingRegressor
    )
    return cls(
        learning_rate=p["learning_rate"],
        max_iter=p["max_iter"],
        max_leaf_nodes=p["max_leaf_nodes"],
        max_depth=p["max_depth"],
        min_samples_leaf=p["min_samples_leaf"],
        l2_regularization=p["l2_regularization"],
        early_stopping=p["early_stopping"],
        random_state=_seed(seed),
    )


def _knn(task: str, p: dict[str, Any], seed: int) -> Any:
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

    cls = KNeighborsClassifier if task == CLASSIFICATION else KNeighborsRegressor
    return cls(n_neighbors=p["n_neighbors"], weights=p["weights"], p=p["p"], n_jobs=1)


def _svm(task: str, p: dict[str, Any], seed: int) -> Any:
    from sklearn.svm import SVC, SVR

    common = {
        "C": p["C"],
        "kernel": p["kernel"],
        "gamma": p["gamma"],
        "degree": p["degree"],
        "tol": p["tol"],
        "max_iter": p["max_iter"],
    }
    if task == CLASSIFICATION:
        # probability=True: the exported model must return class probabilities.
        return SVC(probability=True, random_state=_seed(seed), **common)
    return SVR(epsilon=p["epsilon"], **common)


def _mlp(task: str, p: dict[str, Any], seed: int) -> Any:
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    cls = MLPClassifier if task == CLASSIFICATION else MLPRegressor
    return cls(
        hidden_layer_sizes=(p["hidden_units"],) * p["hidden_layers"],
        activation=p["activation"],
        alpha=p["alpha"],
        learning_rate_init=p["learning_rate_init"],
        max_iter=p["max_iter"],
        early_stopping=p["early_stopping"],
        random_state=_seed(seed),
    )


def _xgboost(task: str, p: dict[str, Any], seed: int) -> Any:
    from highpeaks_ml.training.boosting import xgboost_estimator

    return xgboost_estimator(task == CLASSIFICATION, p, _seed(seed))


def _lightgbm(task: str, p: dict[str, Any], seed: int) -> Any:
    from highpeaks_ml.training.boosting import lightgbm_estimator

    # LightGBM's seed is a C int.
    return lightgbm_estimator(task == CLASSIFICATION, p, int(seed) % (2**31))


# --- shared parameter definitions ------------------------------------------------


def _max_depth() -> Param:
    return Param(
        "max_depth",
        INT,
        None,
        "Deepest a tree may grow; null: until leaves are pure.",
        1,
        100,
        nullable=True,
    )


def _min_samples_split() -> Param:
    return Param("min_samples_split", INT, 2, "Fewest rows a node needs to be split.", 2, 100_000)


def _min_samples_leaf(default: int = 1) -> Param:
    return Param("min_samples_leaf", INT, default, "Fewest rows in a leaf.", 1, 100_000)


def _max_leaf_nodes() -> Param:
    return Param(
        "max_leaf_nodes",
        INT,
        None,
        "Most leaves per tree; null: unlimited.",
        2,
        1_000_000,
        nullable=True,
    )


def _fit_intercept() -> Param:
    return Param("fit_intercept", BOOL, True, "Whether to fit an intercept term.")


def _boosting_params() -> tuple[Param, ...]:
    """What XGBoost and LightGBM share (their own defaults, except where noted)."""
    return (
        Param("n_estimators", INT, 100, "Boosting rounds (trees per class).", 1, 5000),
        Param(
            "subsample",
            FLOAT,
            1.0,
            "Fraction of the training rows each tree sees (sampled without replacement).",
            0.01,
            1.0,
        ),
        Param("colsample_bytree", FLOAT, 1.0, "Fraction of the columns each tree sees.", 0.01, 1.0),
        Param("reg_alpha", FLOAT, 0.0, "L1 penalty on leaf values.", 0.0, 1e6),
    )


_ALGORITHMS: tuple[Algorithm, ...] = (
    Algorithm(
        name="logistic_regression",
        description="Logistic regression (scikit-learn LogisticRegression, L2 penalty, lbfgs).",
        tasks=(CLASSIFICATION,),
        params=(
            Param("C", FLOAT, 1.0, "Inverse regularisation strength.", 1e-6, 1e6),
            Param("max_iter", INT, 1000, "Most solver iterations.", 1, 100_000),
            Param("tol", FLOAT, 1e-4, "Stopping tolerance.", 1e-12, 1.0),
            _fit_intercept(),
            Param(
                "class_weight",
                STRING,
                None,
                "'balanced' reweights classes by frequency.",
                choices=("balanced",),
                nullable=True,
            ),
        ),
        scales_numeric=True,
        factory=_logistic_regression,
    ),
    Algorithm(
        name="linear_regression",
        description="Ordinary least squares (scikit-learn LinearRegression).",
        tasks=(REGRESSION,),
        params=(_fit_intercept(),),
        scales_numeric=True,
        factory=_linear_regression,
    ),
    Algorithm(
        name="ridge",
        description="Least squares with an L2 penalty (scikit-learn Ridge).",
        tasks=(REGRESSION,),
        params=(
            Param("alpha", FLOAT, 1.0, "Regularisation strength.", 0.0, 1e6),
            _fit_intercept(),
        ),
        scales_numeric=True,
        factory=_ridge,
    ),
    Algorithm(
        name="decision_tree",
        description="One decision tree (DecisionTreeClassifier / DecisionTreeRegressor).",
        tasks=TASKS,
        params=(_max_depth(), _min_samples_split(), _min_samples_leaf(), _max_leaf_nodes()),
        scales_numeric=False,
        factory=_decision_tree,
    ),
    Algorithm(
        name="random_forest",
        description="A forest of bagged trees (RandomForestClassifier / RandomForestRegressor).",
        tasks=TASKS,
        params=(
            Param("n_estimators", INT, 100, "Number of trees.", 1, 1000),
            _max_depth(),
            _min_samples_split(),
            _min_samples_leaf(),
            _max_leaf_nodes(),
            Param("bootstrap", BOOL, True, "Whether each tree sees a bootstrap sample."),
        ),
        scales_numeric=False,
        factory=_random_forest,
    ),
    Algorithm(
        name="hist_gradient_boosting",
        description=(
            "Histogram-based gradient boosting"
            " (HistGradientBoostingClassifier / HistGradientBoostingRegressor)."
        ),
        tasks=TASKS,
        params=(
            Param("learning_rate", FLOAT, 0.1, "Shrinkage of each tree's contribution.", 1e-6, 1.0),
            Param("max_iter", INT, 100, "Boosting iterations (trees per class).", 1, 2000),
            Param(
                "max_leaf_nodes",
                INT,
                31,
                "Most leaves per tree; null: unlimited.",
                2,
                4096,
                nullable=True,
            ),
            _max_depth(),
            _min_samples_leaf(20),
            Param("l2_regularization", FLOAT, 0.0, "L2 penalty on leaf values.", 0.0, 1e6),
            Param(
                "early_stopping",
                BOOL,
                False,
                "Stop when a validation split stops improving (off: fully reproducible).",
            ),
        ),
        scales_numeric=False,
        factory=_hist_gradient_boosting,
        native_missing=True,
    ),
    Algorithm(
        name="xgboost",
        description=(
            "XGBoost gradient-boosted trees (XGBClassifier / XGBRegressor, hist method);"
            " trains on the GPU when the server's training device is cuda."
        ),
        tasks=TASKS,
        params=(
            _boosting_params()[0],
            Param("max_depth", INT, 6, "Deepest a tree may grow.", 1, 24),
            Param("learning_rate", FLOAT, 0.3, "Shrinkage of each tree's contribution.", 1e-6, 1.0),
            *_boosting_params()[1:],
            Param("reg_lambda", FLOAT, 1.0, "L2 penalty on leaf values.", 0.0, 1e6),
            Param(
                "min_child_weight",
                FLOAT,
                1.0,
                "Least hessian (for squared error: rows) a child must hold to split.",
                0.0,
                1e6,
            ),
        ),
        scales_numeric=False,
        factory=_xgboost,
        native_missing=True,
        requires=("xgboost", "onnxmltools"),
        gpu=True,
    ),
    Algorithm(
        name="lightgbm",
        description=(
            "LightGBM gradient-boosted trees, grown leaf-wise (LGBMClassifier / LGBMRegressor);"
            " CPU only."
        ),
        tasks=TASKS,
        params=(
            _boosting_params()[0],
            Param("num_leaves", INT, 31, "Most leaves per tree.", 2, 131_072),
            Param(
                "max_depth",
                INT,
                None,
                "Deepest a tree may grow; null: no limit (num_leaves bounds it).",
                1,
                100,
                nullable=True,
            ),
            Param("learning_rate", FLOAT, 0.1, "Shrinkage of each tree's contribution.", 1e-6, 1.0),
            *_boosting_params()[1:],
            Param("reg_lambda", FLOAT, 0.0, "L2 penalty on leaf values.", 0.0, 1e6),
            Param("min_child_samples", INT, 20, "Fewest rows in a leaf.", 1, 100_000),
        ),
        scales_numeric=False,
        factory=_lightgbm,
        native_missing=True,
        requires=("lightgbm", "onnxmltools"),
    ),
    Algorithm(
        name="knn",
        description="k-nearest neighbours (KNeighborsClassifier / KNeighborsRegressor).",
        tasks=TASKS,
        params=(
            Param("n_neighbors", INT, 5, "Neighbours consulted per prediction.", 1, 1000),
            Param(
                "weights",
                STRING,
                "uniform",
                "'distance' weighs closer neighbours more.",
                choices=("uniform", "distance"),
            ),
            Param("p", INT, 2, "Minkowski power: 1 Manhattan, 2 Euclidean.", 1, 2),
        ),
        scales_numeric=True,
        factory=_knn,
    ),
    Algorithm(
        name="svm",
        description="Support vector machine (SVC with probabilities / SVR).",
        tasks=TASKS,
        params=(
            Param("C", FLOAT, 1.0, "Inverse regularisation strength.", 1e-6, 1e6),
            Param(
                "kernel",
                STRING,
                "rbf",
                "Kernel function.",
                choices=("linear", "poly", "rbf", "sigmoid"),
            ),
            Param(
                "gamma",
                STRING,
                "scale",
                "Kernel coefficient rule for rbf, poly and sigmoid.",
                choices=("scale", "auto"),
            ),
            Param("degree", INT, 3, "Degree of the poly kernel.", 1, 10),
            Param("tol", FLOAT, 1e-3, "Stopping tolerance.", 1e-12, 1.0),
            Param("max_iter", INT, -1, "Most solver iterations; -1: no limit.", -1, 10_000_000),
            Param(
                "epsilon",
                FLOAT,
                0.1,
                "Width of the no-penalty tube (regression only).",
                0.0,
                1e6,
                tasks=(REGRESSION,),
            ),
        ),
        scales_numeric=True,
        factory=_svm,
    ),
    Algorithm(
        name="mlp",
        description="Multi-layer perceptron (MLPClassifier / MLPRegressor, adam).",
        tasks=TASKS,
        params=(
            Param("hidden_units", INT, 100, "Units in each hidden layer.", 1, 4096),
            Param("hidden_layers", INT, 1, "Number of hidden layers.", 1, 10),
            Param(
                "activation",
                STRING,
                "relu",
                "Hidden-layer activation.",
                choices=("identity", "logistic", "tanh", "relu"),
            ),
            Param("alpha", FLOAT, 1e-4, "L2 penalty.", 0.0, 1e3),
            Param("learning_rate_init", FLOAT, 1e-3, "Initial learning rate.", 1e-7, 1.0),
            Param("max_iter", INT, 200, "Most epochs.", 1, 100_000),
            Param("early_stopping", BOOL, False, "Stop when a validation split stops improving."),
        ),
        scales_numeric=True,
        factory=_mlp,
    ),
)

CATALOGUE: dict[str, Algorithm] = {a.name: a for a in _ALGORITHMS}


def algorithms() -> list[Algorithm]:
    """The catalogue, by name."""
    return sorted(CATALOGUE.values(), key=lambda a: a.name)


def get_algorithm(name: str) -> Algorithm:
    """One algorithm; InvalidArgument listing the catalogue when unknown."""
    algo = CATALOGUE.get(name) if isinstance(name, str) else None
    if algo is None:
        raise InvalidArgument(
            f"unknown algorithm {_show(name)}; choose one of {', '.join(sorted(CATALOGUE))}"
        )
    return algo


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"`{value}`" if isinstance(value, str) else str(value)


def catalogue_markdown() -> str:
    """The catalogue as Markdown tables (docs/training.md embeds it; a test keeps it current)."""
    out: list[str] = []
    for a in algorithms():
        scaling = "standardised" if a.scales_numeric else "not scaled"
        out += [
            f"**`{a.name}`** ({', '.join(a.tasks)}; numeric columns {scaling}): {a.description}",
            "",
            "| hyperparameter | type | default | allowed |",
            "| --- | --- | --- | --- |",
        ]
        for p in a.params:
            allowed = []
            if p.minimum is not None or p.maximum is not None:
                allowed.append(f"{_shown(p.minimum)} … {_shown(p.maximum)}")
            if p.choices:
                allowed.append(", ".join(f"`{c}`" for c in p.choices))
            if p.nullable:
                allowed.append("or null")
            if p.tasks != TASKS:
                allowed.append(f"({' and '.join(p.tasks)} only)")
            out.append(f"| `{p.name}` | {p.type} | {_shown(p.default)} | {' '.join(allowed)} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def infer_task(target_numeric: bool, target_integral: bool, distinct_values: int) -> str:
    """The task for a target column: strings, or integers with few values, are classes."""
    if not target_numeric:
        return CLASSIFICATION
    if target_integral and distinct_values <= MAX_INFERRED_CLASSES:
        return CLASSIFICATION
    return REGRESSION


def resolve_task(
    requested: str,
    algorithm: Algorithm,
    *,
    target: str,
    target_numeric: bool,
    target_integral: bool,
    distinct_values: int,
) -> str:
    """The task to train: ``requested`` when given (checked against the target), else inferred.

    When inference picks a task the algorithm does not support but the other
    one fits the target, the algorithm's task wins (``linear_regression`` on
    an integer target with few values is regression).
    """
    if requested and requested not in TASKS:
        raise InvalidArgument(f"invalid task {quote(requested)}: use classification or regression")
    task = requested
    if not task:
        task = infer_task(target_numeric, target_integral, distinct_values)
        other = algorithm.tasks[0]
        fits_other = target_numeric and (other == REGRESSION or target_integral)
        if task not in algorithm.tasks and fits_other:
            task = other
    if task not in algorithm.tasks:
        raise InvalidArgument(
            f"algorithm {algorithm.name!r} supports {' and '.join(algorithm.tasks)} only,"
            f" but target column {quote(target)} makes this a {task} task"
        )
    if task == REGRESSION and not target_numeric:
        raise InvalidArgument(
            f"target column {quote(target)} holds text, so it cannot be a regression target"
        )
    if task == CLASSIFICATION and target_numeric and not target_integral:
        raise InvalidArgument(
            f"target column {quote(target)} holds non-integer numbers; classification needs"
            " class labels (whole numbers or text), or use task regression"
        )
    if distinct_values < 2:
        what = "has one class" if task == CLASSIFICATION else "is constant"
        raise InvalidArgument(
            f"target column {quote(target)} {what} (one distinct value): there is nothing to learn"
        )
    return task


__all__ = [
    "CATALOGUE",
    "CLASSIFICATION",
    "REGRESSION",
    "TASKS",
    "Algorithm",
    "Param",
    "algorithms",
    "catalogue_markdown",
    "get_algorithm",
    "infer_task",
    "resolve_task",
]
