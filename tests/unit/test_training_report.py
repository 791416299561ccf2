"""Evaluation reports: figures of the stated size, sklearn's numbers, a page Chromium renders."""

from __future__ import annotations

import io
import json
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from highpeaks_ml.serving.drift import TrainingProfile
from highpeaks_ml.training import datasets as ds
from highpeaks_ml.training import pipeline, report
from highpeaks_ml.training.catalogue import get_algorithm
from tests.support import chromium


def _train(dataset: str, task: str, algorithm: str, params: dict) -> pipeline.TrainedModel:
    frame = ds.builtin_frame(dataset)
    algo = get_algorithm(algorithm)
    return pipeline.train(
        frame,
        algorithm=algo,
        task=task,
        params=algo.validate(task, params),
        target="target",
        features=[(c, "numeric") for c in frame.columns if c != "target"],
        test_size=0.25,
        seed=3,
    )


@pytest.fixture(scope="module")
def classifier():
    trained = _train("iris", "classification", "random_forest", {"n_estimators": 10})
    spec = SimpleNamespace(model_name="iris", algorithm="random_forest", seed=3, job_id="j1")
    artifacts, problem = report.for_job(spec, trained)
    assert problem == ""
    return trained, artifacts


@pytest.fixture(scope="module")
def regressor():
    trained = _train("diabetes", "regression", "ridge", {})
    spec = SimpleNamespace(model_name="diabetes", algorithm="ridge", seed=3, job_id="j2")
    artifacts, problem = report.for_job(spec, trained)
    assert problem == ""
    return trained, artifacts


def _onnx_outputs(trained):
    sess = pipeline.session(trained.onnx_bytes)
    return sess.run(None, pipeline.onnx_feed(trained.X_test, trained.data))


def _figures_are_pngs_of_the_stated_size(artifacts, expected):
    doc = json.loads(artifacts["report.json"])
    names = [f["name"] for f in doc["figures"]]
    assert set(expected) <= set(names)
    for f in doc["figures"]:
        png = artifacts[f["artifact"]]
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(png)) as img:
            img.verify()
        with Image.open(io.BytesIO(png)) as img:
            assert img.size == (f["width"], f["height"]) == (report.FIG_WIDTH, report.FIG_HEIGHT)
            # Not blank: a drawn figure has many distinct colours.
            assert len(img.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 20
    return doc


def test_classifier_report_matches_sklearn_on_onnx_predictions(classifier):
    trained, artifacts = classifier
    doc = _figures_are_pngs_of_the_stated_size(
        artifacts,
        [
            "confusion-matrix",
            "confusion-matrix-normalized",
            "roc",
            "precision-recall",
            "calibration",
            "per-class",
            "permutation-importance",
        ],
    )
    label, proba = _onnx_outputs(trained)
    y = trained.y_test.astype(str)
    pred = np.asarray(label).astype(str)
    labels = list(trained.class_labels)
    m = doc["metrics"]
    assert m["accuracy"] == skm.accuracy_score(y, pred)
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=labels).tolist()
    np.testing.assert_array_equal(
        m["confusion_matrix_normalized"],
        skm.confusion_matrix(y, pred, labels=labels, normalize="true"),
    )
    p, r, f1, support = skm.precision_recall_fscore_support(y, pred, labels=labels)
    for i, lab in enumerate(labels):
        assert m["per_class"][lab] == {
            "precision": p[i],
            "recall": r[i],
            "f1": f1[i],
            "support": support[i],
        }
        positive = (y == lab).astype(int)
        score = np.clip(np.asarray(proba, dtype=np.float64), 0.0, 1.0)[:, i]
        assert m["roc"][lab]["auc"] == skm.roc_auc_score(positive, score)
        assert m["precision_recall"][lab]["average_precision"] == skm.average_precision_score(
            positive, score
        )
    imp = doc["permutation_importance"]
    assert imp["rows"] == len(y) and imp["repeats"] == report.IMPORTANCE_REPEATS
    assert {f["feature"] for f in imp["features"]} == {n for n, _ in trained.data.features}
    # The petal measurements carry iris: shuffling one costs accuracy.
    assert imp["features"][0]["feature"].startswith("petal") and imp["features"][0]["mean"] > 0


def test_regressor_report_matches_sklearn_on_onnx_predictions(regressor):
    trained, artifacts = regressor
    doc = _figures_are_pngs_of_the_stated_size(
        artifacts,
        [
            "predicted-vs-actual",
            "residuals-vs-predicted",
            "residuals-histogram",
            "permutation-importance",
        ],
    )
    (variable,) = _onnx_outputs(trained)
    pred = np.asarray(variable, dtype=np.float64).ravel()
    y = trained.y_test
    m = doc["metrics"]
    assert m["mae"] == skm.mean_absolute_error(y, pred)
    assert m["rmse"] == math.sqrt(skm.mean_squared_error(y, pred))
    assert m["r2"] == skm.r2_score(y, pred)
    assert m["residuals"]["mean"] == pytest.approx(float(np.mean(y - pred)))


def test_profile_artifact_describes_the_training_split(regressor):
    trained, artifacts = regressor
    profile = TrainingProfile.from_json(artifacts["profile.json"])
    assert profile.rows == len(trained.X_train)
    assert [f.name for f in profile.features] == [n for n, _ in trained.data.features]
    for f in profile.features:
        # Deciles; a two-valued feature (sex) keeps its distinct edges only.
        assert len(f.edges) >= (1 if f.name == "sex" else 5)
        assert len(f.proportions) == len(f.edges) + 1
        assert sum(f.proportions) == pytest.approx(1.0) and f.missing_rate == 0.0


@pytest.mark.parametrize("which", ["classifier", "regressor"])
def test_html_renders_in_chromium_without_console_errors(which, request, tmp_path):
    _trained, artifacts = request.getfixturevalue(which)
    doc = json.loads(artifacts["report.json"])
    page = tmp_path / "report.html"
    page.write_bytes(artifacts["report.html"])
    html = artifacts["report.html"].decode()
    # Self-contained: no URL but data: ones.
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:)""", html)

    shot = tmp_path / "shot.png"
    opened = chromium.open_page(page, f"--screenshot={shot}", "--window-size=1400,4000")
    assert opened.console == []
    with Image.open(shot) as img:
        rgb = img.convert("RGB")
        assert rgb.size == (1400, 4000)
        assert len(rgb.getcolors(maxcolors=1 << 22) or []) > 100  # not a blank page

    # Every figure decodes at its size: the same page with one inline script
    # (allowed in this copy only) that records the images once loaded.
    probe = html.replace(
        "style-src 'unsafe-inline'", "style-src 'unsafe-inline'; script-src 'unsafe-inline'"
    ).replace(
        "</body>",
        "<script>window.addEventListener('load', () => { document.body.dataset.figures ="
        " [...document.images].filter(i => i.complete && i.naturalWidth === 640"
        " && i.naturalHeight === 480).length; });</script></body>",
    )
    checked = tmp_path / "probe.html"
    checked.write_text(probe)
    dom = chromium.open_page(checked, "--dump-dom", "--virtual-time-budget=5000")
    assert dom.console == []
    assert f'data-figures="{len(doc["figures"])}"' in dom.output
