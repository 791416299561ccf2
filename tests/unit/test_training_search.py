"""training/search.py without a server: plans, default spaces, samplers, records."""

from __future__ import annotations

import pytest

from highpeaks_ml.errors import InvalidArgument
from highpeaks_ml.training import catalogue
from highpeaks_ml.training import search as S


def _plan(
    algorithm: str = "random_forest", task: str = "classification", **kw: object
) -> S.SearchPlan:
    req = S.SearchRequest(**kw)  # type: ignore[arg-type]
    return S.plan_search(
        req,
        algorithm=catalogue.get_algorithm(algorithm),
        task=task,
        fixed={},
        train_rows=400,
        n_classes=2 if task == "classification" else 0,
        job_seed=7,
        default_parallelism=2,
        max_trials_cap=50,
    )


@pytest.mark.parametrize("algorithm", sorted(catalogue.CATALOGUE))
def test_every_algorithm_has_a_default_space_that_passes_its_own_checks(algorithm: str) -> None:
    algo = catalogue.get_algorithm(algorithm)
    assert algorithm in S.DEFAULT_SPACES
    for task in algo.tasks:
        plan = _plan(algorithm, task, strategy="tpe")
        assert plan.space, (algorithm, task)
        # Every configuration the sampler proposes is a valid set of hyperparameters.
        sampler = S.Sampler(plan)
        while (asked := sampler.ask()) is not None:
            number, params = asked
            algo.validate(task, params)
            sampler.tell(number, 0.5)


def test_defaults_are_resolved() -> None:
    plan = _plan()
    assert (plan.strategy, plan.folds, plan.metric, plan.greater_is_better) == (
        "random",
        5,
        "accuracy",
        True,
    )
    assert (plan.max_trials, plan.parallelism, plan.seed) == (10, 2, 7)
    assert _plan(task="regression", metric="rmse").greater_is_better is False


def test_grid_is_every_combination_once() -> None:
    plan = _plan(
        strategy="grid",
        space=(("max_depth", S.Choice((2, 4.0, 2))), ("bootstrap", S.Choice((True, False)))),
    )
    assert plan.max_trials == 4  # the duplicate 2 (and 2 == 4.0's int form) dropped
    sampler = S.Sampler(plan)
    seen = []
    while (asked := sampler.ask()) is not None:
        seen.append(asked[1])
    assert sorted(map(repr, seen)) == sorted(
        repr({"bootstrap": b, "max_depth": d}) for b in (True, False) for d in (2, 4)
    )


def test_random_search_is_reproducible_from_its_seed() -> None:
    space = (("min_samples_leaf", S.Range(1, 50, log=True)),)

    def draws(seed: int) -> list[dict[str, object]]:
        sampler = S.Sampler(_plan(space=space, seed=seed, max_trials=5))
        out = []
        while (asked := sampler.ask()) is not None:
            out.append(asked[1])
            sampler.tell(asked[0], 0.9)
        return out

    assert draws(1) == draws(1) != draws(2)
    assert all(isinstance(d["min_samples_leaf"], int) for d in draws(1))


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"space": (("nope", S.Choice((1,))),)}, "unknown hyperparameter"),
        ({"space": (("n_estimators", S.Range(0, 10)),)}, "must be >= 1"),
        ({"space": (("n_estimators", S.Range(20, 10)),)}, "above high"),
        ({"space": (("bootstrap", S.Range(0, 1)),)}, "list them"),
        ({"space": (("n_estimators", S.Choice(())),)}, "empty"),
        ({"strategy": "grid"}, "a grid needs"),
        ({"strategy": "bayes"}, "unknown"),
        ({"max_trials": 51}, "cap of 50"),
        ({"folds": 1}, "between 2 and 20"),
        ({"metric": "r2"}, "not a classification metric"),
        ({"time_budget_s": -1.0}, ">= 0"),
        ({"parallelism": 10_000}, "at most"),
    ],
)
def test_bad_plans_are_invalid_argument(kw: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        _plan(**kw)
    assert words in err.value.message


def test_folds_are_bounded_by_rows_per_class() -> None:
    with pytest.raises(InvalidArgument, match="per class"):
        S.plan_search(
            S.SearchRequest(folds=10),
            algorithm=catalogue.get_algorithm("knn"),
            task="classification",
            fixed={},
            train_rows=30,
            n_classes=4,
            job_seed=0,
            default_parallelism=1,
            max_trials_cap=10,
        )


def test_a_fixed_hyperparameter_cannot_be_searched_too() -> None:
    with pytest.raises(InvalidArgument, match="also set in hyperparameters"):
        S.plan_search(
            S.SearchRequest(space=(("n_neighbors", S.Range(1, 5)),)),
            algorithm=catalogue.get_algorithm("knn"),
            task="classification",
            fixed={"n_neighbors": 3},
            train_rows=100,
            n_classes=2,
            job_seed=0,
            default_parallelism=1,
            max_trials_cap=10,
        )


def test_records_mean_std_and_the_best_respect_the_direction() -> None:
    plan = _plan(task="regression", metric="mae")
    a = S.TrialRecord(0, {"x": 1}, S.TRIAL_SUCCEEDED, [1.0, 3.0])
    b = S.TrialRecord(1, {"x": 2}, S.TRIAL_SUCCEEDED, [1.5, 1.5])
    c = S.TrialRecord(2, {"x": 3}, S.TRIAL_FAILED, [], error="boom")
    assert (a.mean, a.std) == (2.0, 1.0)
    assert S.best_trial(plan, [a, b, c]) is b  # lower mae wins
    record = S.search_record(plan, [c, a, b], stopped_by_budget=False)
    assert [t["number"] for t in record["trials"]] == [0, 1, 2]
    assert record["best_trial"] == 1 and record["best_score"] == 1.5
    assert S.best_trial(plan, [c]) is None


def test_request_and_plan_survive_a_json_round_trip() -> None:
    req = S.SearchRequest(
        "tpe", (("C", S.Range(0.1, 10.0, True)), ("kernel", S.Choice(("rbf",)))), 3, "", 4
    )
    assert S.SearchRequest.from_dict(req.to_dict()) == req
    plan = _plan("svm", space=req.space, strategy="tpe")
    assert S.SearchPlan.from_dict(plan.to_dict()) == plan
