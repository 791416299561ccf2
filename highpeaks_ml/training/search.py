"""Hyperparameter search with cross-validation: the space, the plan, the sampler, the trial.

A search job (StartTraining with ``search``) runs in three steps:

1. **Plan** (at submission, in the server): :func:`plan_search` checks the
   request against the catalogue (every dimension names a hyperparameter of
   the algorithm for the task; listed values and range ends pass that
   parameter's own check, so they sit within its bounds), resolves the
   defaults (strategy, folds, metric, trials, parallelism, seed; the
   algorithm's :data:`DEFAULT_SPACES` entry when no space is given to random
   or TPE) and refuses what cannot run (an empty grid, more trials than the
   server's cap, folds < 2 or more folds than training rows per class) with
   InvalidArgument, before any job exists.
2. **Trials** (the job manager, on the executor): a :class:`Sampler` proposes
   configurations (scikit-learn's ``ParameterGrid`` for a grid, Optuna's
   ``RandomSampler`` / ``TPESampler`` with in-memory storage otherwise); each
   one is a :class:`~highpeaks_ml.training.spec.TrialSpec` run by the
   executor's ``run_trial`` on a worker, which calls :func:`run_trial_on`:
   k-fold cross-validation (stratified for classification) on the *training
   split only* (the held-out rows stay unseen until the refit is evaluated),
   returning the fold scores and the time.
3. **Refit**: the best configuration is trained as an ordinary job (fit on
   the whole training split, evaluate on the held-out split, export, verify),
   and the version records :func:`search_record` (space, every trial, winner).

This module imports scikit-learn and Optuna lazily: the server imports it to
plan, the workers to run trials.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from highpeaks_ml.errors import InvalidArgument, quote
from highpeaks_ml.training.catalogue import (
    BOOL,
    CLASSIFICATION,
    FLOAT,
    INT,
    REGRESSION,
    STRING,
    Algorithm,
    Param,
)

if TYPE_CHECKING:
    from highpeaks_ml.training.spec import TrialResult, TrialSpec

GRID = "grid"
RANDOM = "random"
TPE = "tpe"
STRATEGIES = (GRID, RANDOM, TPE)

#: The metrics a search can optimise, per task -> whether higher is better.
#: They are the held-out metrics the pipeline reports (pipeline.evaluate).
METRICS: dict[str, dict[str, bool]] = {
    CLASSIFICATION: {"accuracy": True, "f1_macro": True, "log_loss": False, "roc_auc": True},
    REGRESSION: {"r2": True, "rmse": False, "mae": False},
}
DEFAULT_METRIC = {CLASSIFICATION: "accuracy", REGRESSION: "r2"}
DEFAULT_FOLDS = 5
MAX_FOLDS = 20
DEFAULT_TRIALS = 10
#: Most trials at once, whatever is asked (the backend's capacity bounds it further).
MAX_PARALLELISM = 256
#: Most values one listed dimension may have.
MAX_VALUES = 1000

#: Trial states (search.proto TrialState).
TRIAL_SUCCEEDED = "SUCCEEDED"
TRIAL_FAILED = "FAILED"
TRIAL_CANCELLED = "CANCELLED"


# --- the space ---------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """Listed values of one hyperparameter."""

    values: tuple[Any, ...]


@dataclass(frozen=True)
class Range:
    """A numeric interval [low, high], drawn uniformly or on a log scale."""

    low: float
    high: float
    log: bool = False


Dimension = Choice | Range


def _dim_to_dict(name: str, dim: Dimension) -> dict[str, Any]:
    if isinstance(dim, Choice):
        return {"name": name, "values": list(dim.values)}
    return {"name": name, "low": dim.low, "high": dim.high, "log": dim.log}


def _dim_from_dict(d: Mapping[str, Any]) -> tuple[str, Dimension]:
    if "values" in d:
        return str(d["name"]), Choice(tuple(d["values"]))
    return str(d["name"]), Range(float(d["low"]), float(d["high"]), bool(d.get("log", False)))


@dataclass(frozen=True)
class SearchRequest:
    """What StartTraining's ``search`` asks for (domain form; 0 / "" / None = defaults)."""

    strategy: str = ""
    space: tuple[tuple[str, Dimension], ...] = ()
    folds: int = 0
    metric: str = ""
    max_trials: int = 0
    parallelism: int = 0
    time_budget_s: float = 0.0
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (job records)."""
        return {
            "strategy": self.strategy,
            "space": [_dim_to_dict(n, d) for n, d in self.space],
            "folds": self.folds,
            "metric": self.metric,
            "max_trials": self.max_trials,
            "parallelism": self.parallelism,
            "time_budget_s": self.time_budget_s,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchRequest:
        """Inverse of ``to_dict``."""
        return cls(
            strategy=str(data.get("strategy", "")),
            space=tuple(_dim_from_dict(d) for d in data.get("space", ())),
            folds=int(data.get("folds", 0)),
            metric=str(data.get("metric", "")),
            max_trials=int(data.get("max_trials", 0)),
            parallelism=int(data.get("parallelism", 0)),
            time_budget_s=float(data.get("time_budget_s", 0.0)),
            seed=None if data.get("seed") is None else int(data["seed"]),
        )


#: The space searched when a random or TPE search names none: the
#: hyperparameters that matter most for each algorithm, over ranges that suit
#: small and medium tables. Only those that apply to the job's task are used.
DEFAULT_SPACES: dict[str, tuple[tuple[str, Dimension], ...]] = {
    "logistic_regression": (("C", Range(1e-3, 1e3, log=True)),),
    "linear_regression": (("fit_intercept", Choice((True, False))),),
    "ridge": (("alpha", Range(1e-3, 1e3, log=True)),),
    "decision_tree": (
        ("max_depth", Range(2, 16)),
        ("min_samples_leaf", Range(1, 20)),
    ),
    "random_forest": (
        ("n_estimators", Range(20, 300, log=True)),
        ("max_depth", Range(2, 20)),
        ("min_samples_leaf", Range(1, 10)),
    ),
    "hist_gradient_boosting": (
        ("learning_rate", Range(0.01, 0.3, log=True)),
        ("max_leaf_nodes", Range(8, 64, log=True)),
        ("min_samples_leaf", Range(5, 50, log=True)),
    ),
    "xgboost": (
        ("n_estimators", Range(20, 300, log=True)),
        ("max_depth", Range(2, 10)),
        ("learning_rate", Range(0.01, 0.3, log=True)),
        ("subsample", Range(0.5, 1.0)),
    ),
    "lightgbm": (
        ("n_estimators", Range(20, 300, log=True)),
        ("num_leaves", Range(8, 64, log=True)),
        ("learning_rate", Range(0.01, 0.3, log=True)),
        ("min_child_samples", Range(5, 50, log=True)),
    ),
    "knn": (
        ("n_neighbors", Range(1, 30)),
        ("weights", Choice(("uniform", "distance"))),
    ),
    "svm": (
        ("C", Range(1e-2, 1e2, log=True)),
        ("kernel", Choice(("rbf", "linear"))),
    ),
    "mlp": (
        ("hidden_units", Range(16, 256, log=True)),
        ("alpha", Range(1e-5, 1e-1, log=True)),
        ("learning_rate_init", Range(1e-4, 1e-2, log=True)),
    ),
}


# --- the plan ----------------------------------------------------------------------


@dataclass(frozen=True)
class SearchPlan:
    """A validated search with every default resolved (stored with the job)."""

    strategy: str
    #: (name, dimension), values normalised by the catalogue's check.
    space: tuple[tuple[str, Dimension], ...]
    #: The parameter types of the space's names (catalogue types).
    types: Mapping[str, str]
    folds: int
    metric: str
    greater_is_better: bool
    max_trials: int
    parallelism: int
    time_budget_s: float
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (job records)."""
        return {
            "strategy": self.strategy,
            "space": [_dim_to_dict(n, d) for n, d in self.space],
            "types": dict(self.types),
            "folds": self.folds,
            "metric": self.metric,
            "greater_is_better": self.greater_is_better,
            "max_trials": self.max_trials,
            "parallelism": self.parallelism,
            "time_budget_s": self.time_budget_s,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchPlan:
        """Inverse of ``to_dict``."""
        return cls(
            strategy=str(data["strategy"]),
            space=tuple(_dim_from_dict(d) for d in data["space"]),
            types=dict(data.get("types", {})),
            folds=int(data["folds"]),
            metric=str(data["metric"]),
            greater_is_better=bool(data["greater_is_better"]),
            max_trials=int(data["max_trials"]),
            parallelism=int(data["parallelism"]),
            time_budget_s=float(data.get("time_budget_s", 0.0)),
            seed=int(data.get("seed", 0)),
        )

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of a grid, in ParameterGrid's order."""
        from sklearn.model_selection import ParameterGrid

        dims = {n: list(d.values) for n, d in self.space if isinstance(d, Choice)}
        return [dict(p) for p in ParameterGrid(dims)]

    def better(self, a: float, b: float | None) -> bool:
        """Whether score ``a`` beats ``b`` (None: nothing to beat)."""
        if b is None:
            return True
        return a > b if self.greater_is_better else a < b


def metric_direction(task: str, metric: str) -> bool:
    """Whether a higher ``metric`` is better for ``task``; InvalidArgument when unknown."""
    known = METRICS.get(task, {})
    if metric not in known:
        raise InvalidArgument(
            f"search.metric {quote(metric)} is not a {task} metric; use one of"
            f" {', '.join(sorted(known))}"
        )
    return known[metric]


def _check_dimension(p: Param, dim: Dimension, algorithm: str) -> Dimension:
    where = f"search.space {p.name!r}"
    if isinstance(dim, Choice):
        if not dim.values:
            raise InvalidArgument(f"{where}: the list of values is empty")
        if len(dim.values) > MAX_VALUES:
            raise InvalidArgument(f"{where}: more than {MAX_VALUES} values")
        normalised: list[Any] = []
        for value in dim.values:
            checked = p.check(value, algorithm)
            if not any(type(checked) is type(v) and checked == v for v in normalised):
                normalised.append(checked)
        return Choice(tuple(normalised))
    if p.type not in (INT, FLOAT):
        kinds = {BOOL: "true/false", STRING: "text"}
        raise InvalidArgument(
            f"{where}: {p.name!r} of {algorithm!r} takes {kinds.get(p.type, p.type)} values;"
            " list them instead of giving a range"
        )
    if not (math.isfinite(dim.low) and math.isfinite(dim.high)):
        raise InvalidArgument(f"{where}: the range ends must be finite numbers")
    low, high = p.check(dim.low, algorithm), p.check(dim.high, algorithm)
    if low > high:
        raise InvalidArgument(f"{where}: low ({low!r}) is above high ({high!r})")
    if dim.log and low <= 0:
        raise InvalidArgument(f"{where}: a log-scale range needs low > 0, got {low!r}")
    return Range(float(low), float(high), dim.log)


def plan_search(
    req: SearchRequest,
    *,
    algorithm: Algorithm,
    task: str,
    fixed: Mapping[str, Any],
    train_rows: int,
    n_classes: int,
    job_seed: int,
    default_parallelism: int,
    max_trials_cap: int,
) -> SearchPlan:
    """The validated plan for ``req``; InvalidArgument for anything that cannot run.

    ``fixed`` are the hyperparameters the request sets outright (they may not
    be searched too); ``train_rows`` / ``n_classes`` size the folds (the
    smallest class of the training split has at most ``train_rows //
    n_classes`` rows, so more folds than that cannot be stratified).
    """
    strategy = (req.strategy or RANDOM).lower()
    if strategy not in STRATEGIES:
        raise InvalidArgument(
            f"search.strategy {quote(req.strategy)} is unknown; use {', '.join(STRATEGIES)}"
        )
    known = {p.name: p for p in algorithm.params}
    applicable = {p.name: p for p in algorithm.params_for(task)}
    given = req.space
    if not given and strategy != GRID:
        given = tuple(
            (name, dim)
            for name, dim in DEFAULT_SPACES.get(algorithm.name, ())
            if name in applicable and name not in fixed
        )
        if not given:
            raise InvalidArgument(
                f"algorithm {algorithm.name!r} has no default search space for {task} (or its"
                " hyperparameters are all fixed); give search.space"
            )
    if not given:
        raise InvalidArgument("search.space is empty: a grid needs at least one list of values")
    space: list[tuple[str, Dimension]] = []
    seen: set[str] = set()
    for name, dim in given:
        if name not in known:
            allowed = ", ".join(sorted(applicable)) or "none"
            raise InvalidArgument(
                f"search.space: unknown hyperparameter {quote(name)} for {algorithm.name!r};"
                f" allowed: {allowed}"
            )
        if name not in applicable:
            raise InvalidArgument(
                f"search.space: hyperparameter {name!r} of {algorithm.name!r} applies to"
                f" {' and '.join(known[name].tasks)} only, not {task}"
            )
        if name in seen:
            raise InvalidArgument(f"search.space: {name!r} is given twice")
        if name in fixed:
            raise InvalidArgument(
                f"search.space: {name!r} is also set in hyperparameters; search it or fix it"
            )
        seen.add(name)
        if strategy == GRID and isinstance(dim, Range):
            raise InvalidArgument(
                f"search.space {name!r}: a grid search needs a list of values, not a range"
            )
        space.append((name, _check_dimension(applicable[name], dim, algorithm.name)))

    cap = max_trials_cap
    if strategy == GRID:
        size = math.prod(len(d.values) for _, d in space if isinstance(d, Choice))
        if size > cap:
            raise InvalidArgument(
                f"the grid has {size} combinations, more than this server's cap of {cap}"
                " trials (max_search_trials)"
            )
        if req.max_trials and req.max_trials < size:
            raise InvalidArgument(
                f"the grid has {size} combinations but search.max_trials is {req.max_trials};"
                " a grid search runs every combination (shrink the grid or use random)"
            )
        trials = size
    else:
        trials = req.max_trials or min(DEFAULT_TRIALS, cap)
        if trials > cap:
            raise InvalidArgument(
                f"search.max_trials {trials} is more than this server's cap of {cap}"
                " (max_search_trials)"
            )

    folds = req.folds or DEFAULT_FOLDS
    if folds < 2 or folds > MAX_FOLDS:
        raise InvalidArgument(f"search.folds must be between 2 and {MAX_FOLDS}, got {folds}")
    if folds > train_rows:
        raise InvalidArgument(
            f"search.folds {folds} is more than the {train_rows} rows of the training split"
        )
    if task == CLASSIFICATION and n_classes and folds > train_rows // n_classes:
        raise InvalidArgument(
            f"search.folds {folds} is more than the training rows per class allow"
            f" ({train_rows} rows, {n_classes} classes: the smallest class has at most"
            f" {train_rows // n_classes}); use fewer folds"
        )

    metric = req.metric or DEFAULT_METRIC[task]
    greater = metric_direction(task, metric)
    if metric == "roc_auc" and n_classes != 2:
        raise InvalidArgument(
            f"search.metric 'roc_auc' needs two classes; the target has {n_classes}"
        )

    if req.parallelism > MAX_PARALLELISM:
        raise InvalidArgument(
            f"search.parallelism must be at most {MAX_PARALLELISM}, got {req.parallelism}"
        )
    parallelism = min(req.parallelism or max(1, default_parallelism), trials)
    budget = float(req.time_budget_s)
    if not math.isfinite(budget) or budget < 0:
        raise InvalidArgument(f"search.time_budget_seconds must be >= 0, got {budget!r}")
    return SearchPlan(
        strategy=strategy,
        space=tuple(space),
        types={n: applicable[n].type for n, _ in space},
        folds=folds,
        metric=metric,
        greater_is_better=greater,
        max_trials=trials,
        parallelism=max(1, parallelism),
        time_budget_s=budget,
        seed=job_seed if req.seed is None else int(req.seed),
    )


# --- the sampler (server side) ---------------------------------------------------


class Sampler:
    """Proposes trial configurations: ``ask()`` -> (number, params) or None, ``tell()``.

    A grid walks scikit-learn's ``ParameterGrid``; random and TPE ask an
    Optuna study with in-memory storage (its ask-and-tell interface), so
    several trials can be out at once and TPE learns from those that ended.
    """

    def __init__(self, plan: SearchPlan) -> None:
        self.plan = plan
        self._asked = 0
        self._grid: list[dict[str, Any]] | None = None
        self._study: Any = None
        self._trials: dict[int, Any] = {}
        self._distributions: dict[str, Any] = {}
        if plan.strategy == GRID:
            self._grid = plan.grid()
            return
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        seed = int(plan.seed) % (2**32)
        sampler = (
            optuna.samplers.TPESampler(seed=seed)
            if plan.strategy == TPE
            else optuna.samplers.RandomSampler(seed=seed)
        )
        self._study = optuna.create_study(
            direction="maximize" if plan.greater_is_better else "minimize", sampler=sampler
        )
        dist = optuna.distributions
        for name, d in plan.space:
            if isinstance(d, Choice):
                self._distributions[name] = dist.CategoricalDistribution(list(d.values))
            elif plan.types.get(name) == INT:
                self._distributions[name] = dist.IntDistribution(int(d.low), int(d.high), log=d.log)
            else:
                self._distributions[name] = dist.FloatDistribution(d.low, d.high, log=d.log)

    def ask(self) -> tuple[int, dict[str, Any]] | None:
        """The next configuration, or None when there is none left (a grid's end, max_trials)."""
        if self._asked >= self.plan.max_trials:
            return None
        number = self._asked
        if self._grid is not None:
            if number >= len(self._grid):
                return None
            self._asked += 1
            return number, dict(self._grid[number])
        trial = self._study.ask(self._distributions)
        self._trials[number] = trial
        self._asked += 1
        return number, {k: _plain(v) for k, v in trial.params.items()}

    def tell(self, number: int, score: float | None) -> None:
        """Report a trial's mean score (None: it failed or was cancelled)."""
        trial = self._trials.pop(number, None)
        if trial is None:
            return
        import optuna

        if score is None or not math.isfinite(score):
            self._study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            self._study.tell(trial, score)


def _plain(value: Any) -> Any:
    """numpy scalars (Optuna may hand them back) as Python values."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


# --- trial records ---------------------------------------------------------------


@dataclass
class TrialRecord:
    """One trial as the job and the version record it."""

    number: int
    params: dict[str, Any]
    state: str = TRIAL_CANCELLED
    fold_scores: list[float] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""

    @property
    def mean(self) -> float | None:
        """Mean fold score (None without scores)."""
        return sum(self.fold_scores) / len(self.fold_scores) if self.fold_scores else None

    @property
    def std(self) -> float | None:
        """Population standard deviation of the fold scores."""
        mean = self.mean
        if mean is None:
            return None
        return math.sqrt(sum((s - mean) ** 2 for s in self.fold_scores) / len(self.fold_scores))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, mean and std included."""
        return {
            "number": self.number,
            "params": dict(self.params),
            "state": self.state,
            "fold_scores": list(self.fold_scores),
            "mean": self.mean,
            "std": self.std,
            "seconds": round(self.seconds, 4),
            "error": self.error,
        }


def best_trial(plan: SearchPlan, trials: Sequence[TrialRecord]) -> TrialRecord | None:
    """The succeeded trial with the best mean (the lowest number among ties)."""
    best: TrialRecord | None = None
    for t in sorted(trials, key=lambda t: t.number):
        mean = t.mean
        if t.state != TRIAL_SUCCEEDED or mean is None:
            continue
        if best is None or plan.better(mean, best.mean):
            best = t
    return best


def search_record(
    plan: SearchPlan, trials: Sequence[TrialRecord], stopped_by_budget: bool
) -> dict[str, Any]:
    """What the version's metadata keeps of a search (VersionMeta.search)."""
    best = best_trial(plan, trials)
    return {
        "strategy": plan.strategy,
        "space": [_dim_to_dict(n, d) for n, d in plan.space],
        "folds": plan.folds,
        "metric": plan.metric,
        "greater_is_better": plan.greater_is_better,
        "seed": plan.seed,
        "max_trials": plan.max_trials,
        "parallelism": plan.parallelism,
        "time_budget_s": plan.time_budget_s,
        "trials": [t.to_dict() for t in sorted(trials, key=lambda t: t.number)],
        "best_trial": best.number if best is not None else -1,
        "best_score": best.mean if best is not None else None,
        "best_params": dict(best.params) if best is not None else {},
        "stopped_by_budget": stopped_by_budget,
    }


# --- the trial (worker side) -------------------------------------------------------


@dataclass
class FoldData:
    """A job's training split and its folds, prepared once per worker and job."""

    data: Any  # pipeline.PreparedData (the whole table's types)
    X: Any  # the training split's features
    y: Any
    splits: list[tuple[Any, Any]]


def prepare_folds(frame: Any, spec: TrialSpec) -> FoldData:
    """Type the table, take the training split (as the refit will) and cut the folds."""
    import numpy as np
    from sklearn.model_selection import KFold, StratifiedKFold

    from highpeaks_ml.training import pipeline

    data = pipeline.prepare(frame, spec.target, [(n, t) for n, t in spec.features], spec.task)
    X_train, _X_test, y_train, _y_test = pipeline.split(data, spec.test_size, spec.seed)
    X_train = X_train.reset_index(drop=True)
    seed = int(spec.search_seed) % (2**32)
    if spec.task == CLASSIFICATION:
        labels, counts = np.unique(y_train, return_counts=True)
        if counts.min() < spec.folds:
            raise InvalidArgument(
                f"class {quote(str(labels[counts.argmin()]))} has {int(counts.min())} rows in the"
                f" training split, fewer than the {spec.folds} folds; use fewer folds"
            )
        splitter: Any = StratifiedKFold(n_splits=spec.folds, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=spec.folds, shuffle=True, random_state=seed)
    splits = list(splitter.split(np.zeros(len(y_train)), y_train))
    return FoldData(data=data, X=X_train, y=y_train, splits=splits)


def cross_validate(folds: FoldData, spec: TrialSpec) -> list[float]:
    """Fit and score ``spec.params`` on each fold; the metric per fold."""
    from highpeaks_ml.training import pipeline
    from highpeaks_ml.training.catalogue import get_algorithm

    algorithm = get_algorithm(spec.algorithm)
    scores = []
    for train_idx, valid_idx in folds.splits:
        X_fit, y_fit = folds.X.iloc[train_idx], folds.y[train_idx]
        pipeline.check_params_fit_rows(algorithm, dict(spec.params), len(X_fit))
        model = pipeline.build(
            algorithm,
            folds.data,
            dict(spec.params),
            spec.seed,
            spec.resources.cpus,
            spec.resources.device,
        )
        pipeline.fit(model, X_fit, y_fit, folds.data.all_numeric)
        if algorithm.training_device(spec.resources.device) != "cpu":
            model.steps[-1][1].set_params(device="cpu")
        metrics = pipeline.evaluate(
            model, folds.X.iloc[valid_idx], folds.y[valid_idx], spec.task, folds.data.all_numeric
        )
        if spec.metric not in metrics:
            raise InvalidArgument(f"metric {spec.metric!r} cannot be computed on this data")
        score = float(metrics[spec.metric])
        if not math.isfinite(score):
            raise InvalidArgument(f"the {spec.metric} of a fold is not a finite number")
        scores.append(score)
    return scores


def run_trial_on(folds: FoldData, spec: TrialSpec) -> TrialResult:
    """One trial on prepared folds: its fold scores and wall time, or its failure."""
    from highpeaks_ml.errors import HighPeaksError
    from highpeaks_ml.training.spec import TrialResult

    started = time.perf_counter()
    try:
        scores = cross_validate(folds, spec)
    except HighPeaksError as exc:
        return TrialResult(
            spec.number, TRIAL_FAILED, (), time.perf_counter() - started, exc.message
        )
    except MemoryError:
        raise
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0][:300]
        return TrialResult(
            spec.number,
            TRIAL_FAILED,
            (),
            time.perf_counter() - started,
            f"{type(exc).__name__}: {first}",
        )
    return TrialResult(spec.number, TRIAL_SUCCEEDED, tuple(scores), time.perf_counter() - started)


# --- promotion: score an ONNX model on the held-out rows ---------------------------


def score_onnx(
    onnx_bytes: bytes,
    feed: Mapping[str, Any],
    y_true: Any,
    task: str,
    metric: str,
    class_labels: Sequence[str],
) -> float:
    """``metric`` of an ONNX model (our output conventions) on rows given as ``feed``.

    Both the new version and the alias's current one are scored by this same
    function on the same rows, so the comparison is like for like.
    """
    import numpy as np
    from sklearn import metrics as skm

    from highpeaks_ml.training import pipeline

    sess = pipeline.session(onnx_bytes)
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(None, dict(feed)), strict=True))
    if task == CLASSIFICATION:
        if pipeline.LABEL not in out or pipeline.PROBABILITIES not in out:
            raise InvalidArgument("the model has no label and probabilities outputs")
        y = np.asarray(y_true).astype(str)
        labels = np.asarray(out[pipeline.LABEL]).reshape(-1).astype(str)
        if metric == "accuracy":
            return float(skm.accuracy_score(y, labels))
        if metric == "f1_macro":
            return float(skm.f1_score(y, labels, average="macro"))
        classes = [str(c) for c in class_labels]
        proba = np.asarray(out[pipeline.PROBABILITIES], dtype=np.float64)
        if proba.ndim != 2 or proba.shape[1] != len(classes):
            raise InvalidArgument("the model's probabilities do not match its class labels")
        if metric == "log_loss":
            return float(skm.log_loss(y, proba, labels=classes))
        if metric == "roc_auc":
            if len(classes) != 2:
                raise InvalidArgument("roc_auc needs a model with two classes")
            return float(skm.roc_auc_score(y == classes[1], proba[:, 1]))
        raise InvalidArgument(f"unknown metric {metric!r}")
    if pipeline.VARIABLE not in out:
        raise InvalidArgument("the model has no variable output")
    pred = np.asarray(out[pipeline.VARIABLE], dtype=np.float64).reshape(-1)
    yv = np.asarray(y_true, dtype=np.float64)
    if metric == "r2":
        return float(skm.r2_score(yv, pred))
    if metric == "rmse":
        return float(math.sqrt(skm.mean_squared_error(yv, pred)))
    if metric == "mae":
        return float(skm.mean_absolute_error(yv, pred))
    raise InvalidArgument(f"unknown metric {metric!r}")


__all__ = [
    "DEFAULT_METRIC",
    "DEFAULT_SPACES",
    "GRID",
    "METRICS",
    "RANDOM",
    "STRATEGIES",
    "TPE",
    "TRIAL_CANCELLED",
    "TRIAL_FAILED",
    "TRIAL_SUCCEEDED",
    "Choice",
    "Dimension",
    "FoldData",
    "Range",
    "Sampler",
    "SearchPlan",
    "SearchRequest",
    "TrialRecord",
    "best_trial",
    "cross_validate",
    "metric_direction",
    "plan_search",
    "prepare_folds",
    "run_trial_on",
    "score_onnx",
    "search_record",
]
