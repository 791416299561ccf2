"""The algorithm catalogue: names, hyperparameter allow-list and bounds, task resolution."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from highpeaks_ml.errors import InvalidArgument
from highpeaks_ml.training import catalogue
from highpeaks_ml.training.catalogue import CLASSIFICATION, REGRESSION, get_algorithm

EXPECTED = {
    "logistic_regression": (CLASSIFICATION,),
    "linear_regression": (REGRESSION,),
    "ridge": (REGRESSION,),
    "decision_tree": (CLASSIFICATION, REGRESSION),
    "random_forest": (CLASSIFICATION, REGRESSION),
    "hist_gradient_boosting": (CLASSIFICATION, REGRESSION),
    "knn": (CLASSIFICATION, REGRESSION),
    "svm": (CLASSIFICATION, REGRESSION),
    "mlp": (CLASSIFICATION, REGRESSION),
    "xgboost": (CLASSIFICATION, REGRESSION),
    "lightgbm": (CLASSIFICATION, REGRESSION),
}


def test_catalogue_names_and_tasks():
    assert {a.name: a.tasks for a in catalogue.algorithms()} == EXPECTED


def test_trees_are_not_scaled_and_the_rest_is():
    scaled = {a.name for a in catalogue.algorithms() if a.scales_numeric}
    assert scaled == {"logistic_regression", "linear_regression", "ridge", "knn", "svm", "mlp"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_default_passes_its_own_validation(name):
    algo = get_algorithm(name)
    for task in algo.tasks:
        params = algo.validate(task, {})
        assert set(params) == {p.name for p in algo.params_for(task)}
        for p in algo.params_for(task):
            assert p.check(p.default, name) == p.default
            assert p.description
            if p.type == "string":
                assert p.choices
        algo.build(task, params, seed=3)  # a real estimator can be made from them


def test_defaults_are_filled_in_and_given_values_kept():
    params = get_algorithm("random_forest").validate(CLASSIFICATION, {"n_estimators": 7.0})
    assert params["n_estimators"] == 7 and isinstance(params["n_estimators"], int)
    assert params["max_depth"] is None and params["bootstrap"] is True


@pytest.mark.parametrize(
    ("algorithm", "given", "fragment"),
    [
        ("random_forest", {"n_jobs": -1}, "unknown hyperparameter 'n_jobs'"),
        ("random_forest", {"n_estimators": 10**9}, "'n_estimators' of 'random_forest' must be <="),
        ("random_forest", {"n_estimators": 0}, "must be >= 1"),
        ("random_forest", {"n_estimators": 5.5}, "must be an integer"),
        ("random_forest", {"n_estimators": "100"}, "must be a number"),
        ("random_forest", {"n_estimators": True}, "must be a number"),
        ("random_forest", {"n_estimators": None}, "must not be null"),
        ("random_forest", {"n_estimators": float("inf")}, "must be finite"),
        ("random_forest", {"bootstrap": 1}, "must be true or false"),
        ("random_forest", {"verbose": 1}, "unknown hyperparameter 'verbose'"),
        ("svm", {"kernel": "precomputed"}, "must be one of linear, poly, rbf, sigmoid"),
        ("svm", {"epsilon": 0.2}, "applies to regression only"),
        ("knn", {"n_neighbors": 100000}, "must be <= 1000"),
        ("logistic_regression", {"C": 0}, "must be >= 1e-06"),
        ("mlp", {"hidden_layer_sizes": [100, 100]}, "unknown hyperparameter"),
    ],
)
def test_refused_hyperparameters_name_the_parameter(algorithm, given, fragment):
    with pytest.raises(InvalidArgument) as err:
        get_algorithm(algorithm).validate(CLASSIFICATION, given)
    assert fragment in err.value.message


def test_nullable_parameters_accept_null():
    params = get_algorithm("decision_tree").validate(REGRESSION, {"max_depth": None})
    assert params["max_depth"] is None


def test_regression_only_parameter_is_accepted_for_regression():
    params = get_algorithm("svm").validate(REGRESSION, {"epsilon": 0.5})
    assert params["epsilon"] == 0.5
    assert "epsilon" not in get_algorithm("svm").validate(CLASSIFICATION, {})


def test_unknown_algorithm_lists_the_catalogue():
    with pytest.raises(InvalidArgument) as err:
        get_algorithm("catboost")
    assert "unknown algorithm 'catboost'" in err.value.message
    assert "random_forest" in err.value.message


def test_algorithm_refuses_a_task_it_lacks():
    with pytest.raises(InvalidArgument, match="supports regression only"):
        get_algorithm("ridge").validate(CLASSIFICATION, {})


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_int_bounds_are_inclusive_and_enforced(value):
    p = next(p for p in get_algorithm("random_forest").params if p.name == "n_estimators")
    if 1 <= value <= 1000:
        assert p.check(value, "random_forest") == value
    else:
        with pytest.raises(InvalidArgument):
            p.check(value, "random_forest")


def _resolve(requested, algo, numeric, integral, distinct):
    return catalogue.resolve_task(
        requested,
        get_algorithm(algo),
        target="y",
        target_numeric=numeric,
        target_integral=integral,
        distinct_values=distinct,
    )


@pytest.mark.parametrize(
    ("requested", "algo", "numeric", "integral", "distinct", "task"),
    [
        ("", "random_forest", False, False, 5, CLASSIFICATION),  # text labels
        ("", "random_forest", True, True, 3, CLASSIFICATION),  # few integers
        ("", "random_forest", True, True, 200, REGRESSION),  # many integers
        ("", "random_forest", True, False, 3, REGRESSION),  # floats
        ("", "linear_regression", True, True, 3, REGRESSION),  # the algorithm decides
        ("regression", "random_forest", True, True, 3, REGRESSION),  # explicit wins
        ("classification", "knn", True, True, 50, CLASSIFICATION),
    ],
)
def test_task_given_or_inferred(requested, algo, numeric, integral, distinct, task):
    assert _resolve(requested, algo, numeric, integral, distinct) == task


@pytest.mark.parametrize(
    ("requested", "algo", "numeric", "integral", "distinct", "fragment"),
    [
        ("regression", "random_forest", False, False, 3, "holds text"),
        ("classification", "random_forest", True, False, 3, "non-integer numbers"),
        ("", "logistic_regression", True, False, 30, "supports classification only"),
        ("", "random_forest", False, False, 1, "has one class"),
        ("regression", "ridge", True, False, 1, "is constant"),
        ("ranking", "ridge", True, False, 5, "invalid task"),
    ],
)
def test_task_refusals(requested, algo, numeric, integral, distinct, fragment):
    with pytest.raises(InvalidArgument) as err:
        _resolve(requested, algo, numeric, integral, distinct)
    assert fragment in err.value.message


def test_docs_catalogue_block_is_current():
    from tests.conftest import ROOT

    text = (ROOT / "docs" / "training.md").read_text()
    block = text.split("<!-- catalogue:begin -->\n", 1)[1].split("<!-- catalogue:end -->", 1)[0]
    assert block == catalogue.catalogue_markdown(), (
        "paste highpeaks_ml.training.catalogue.catalogue_markdown() into docs/training.md"
    )
