"""The evaluation report of a trained version: figures, numbers, one HTML page.

Computed by the training worker after verification, on the held-out split,
from the **ONNX model's own predictions** (onnxruntime, the graph that will
serve), with scikit-learn's metrics and inspection and matplotlib's Agg
backend; nothing is drawn by hand. The artifacts, published with the version
(``registry`` ``artifacts``, sha256 in the version's metadata):

- ``report.json``: every number (metrics, curves' areas, per-class scores,
  confusion matrices, permutation importances, the figures' names and sizes);
- ``fig-<name>.png``: each figure, ``FIG_WIDTH`` x ``FIG_HEIGHT`` pixels;
- ``report.html``: one self-contained page (figures embedded as base64 data
  URLs, inline CSS, a Content-Security-Policy that forbids any network fetch
  and any script), readable offline;
- ``profile.json``: the training split's feature profile for drift
  (``serving/drift.py``).

Classification: confusion matrix (counts, and normalised over the true
class), ROC and precision-recall curves per class (one-vs-rest) with their
AUC and average precision, a calibration curve per class, per-class
precision/recall/F1. Regression: predicted against actual, residuals against
predicted, the residuals' histogram, MAE/RMSE/R². Both: permutation feature
importance (``sklearn.inspection.permutation_importance`` over the ONNX
predictions) on at most ``IMPORTANCE_ROWS`` held-out rows with
``IMPORTANCE_REPEATS`` repeats, so a large dataset does not blow the job's
time; scatter plots draw at most ``PLOT_ROWS`` points. A search job's trials
(``trials``: score against each searched hyperparameter) are drawn when the
caller passes them.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from highpeaks_ml.serving.drift import PROFILE_ARTIFACT, build_profile

#: Figure size in pixels (inches x DPI; saved without cropping, so exact).
FIG_WIDTH = 640
FIG_HEIGHT = 480
DPI = 100
#: Held-out rows used by the permutation importance, and its repeats.
IMPORTANCE_ROWS = 1000
IMPORTANCE_REPEATS = 3
#: Most points drawn in a scatter plot (evenly spaced held-out rows).
PLOT_ROWS = 5000
#: Most classes drawn as separate curves (ROC, PR, calibration).
MAX_CURVE_CLASSES = 10
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
FORMAT = 1

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


@dataclass
class ReportInput:
    """What the report needs: the ONNX bytes, the held-out split, the training split."""

    onnx_bytes: bytes
    task: str  # "classification" | "regression"
    #: Held-out rows (the prepared table: columns named by the ONNX inputs, in feature order).
    X_test: Any
    y_test: np.ndarray
    #: Training rows (for the drift profile); same columns.
    X_train: Any
    #: (column name, kind) per feature, in order; the table's columns follow this order.
    features: Sequence[tuple[str, str]]
    #: The feeds builder for the ONNX session (``pipeline.onnx_feed`` bound to the data).
    feed: Any
    class_labels: Sequence[Any] = ()
    model_name: str = ""
    algorithm: str = ""
    seed: int = 0
    #: A search job's trials: [{"params": {...}, "score": float}, ...] (None: no search).
    trials: Sequence[Mapping[str, Any]] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def _session(onnx_bytes: bytes) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])


class _OnnxModel:
    """The ONNX session as the estimator ``permutation_importance`` scores."""

    def __init__(self, sess: Any, feed: Any, task: str) -> None:
        self.sess = sess
        self.feed = feed
        self.task = task

    def fit(self, X: Any, y: Any) -> _OnnxModel:  # scikit-learn's estimator check wants it
        return self

    def run(self, X: Any) -> list[np.ndarray]:
        return list(self.sess.run(None, self.feed(X)))

    def predict(self, X: Any) -> np.ndarray:
        out = self.run(X)
        return out[0].ravel() if self.task == "regression" else out[0]


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    # A bare Figure (no pyplot state): safe in a worker that builds many reports.
    fig = Figure(figsize=(FIG_WIDTH / DPI, FIG_HEIGHT / DPI), dpi=DPI, layout="constrained")
    return fig, fig.add_subplot()


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _spaced(n: int, most: int) -> np.ndarray:
    """Indices of at most ``most`` evenly spaced rows of ``n``."""
    if n <= most:
        return np.arange(n)
    return np.linspace(0, n - 1, most).round().astype(np.int64)


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


class _Figures:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.listed: list[dict[str, Any]] = []

    def add(self, name: str, title: str, fig: Any, caption: str) -> None:
        artifact = f"fig-{name}.png"
        self.files[artifact] = _png(fig)
        self.listed.append(
            {
                "name": name,
                "artifact": artifact,
                "title": title,
                "caption": caption,
                "width": FIG_WIDTH,
                "height": FIG_HEIGHT,
            }
        )


# --- classification --------------------------------------------------------------------


def _classification(inp: ReportInput, model: _OnnxModel, figs: _Figures) -> dict[str, Any]:
    from sklearn import metrics as skm
    from sklearn.calibration import CalibrationDisplay, calibration_curve

    outs = model.run(inp.X_test)
    # float32 probabilities may leave [0, 1] by an ulp, which scikit-learn's
    # log_loss and calibration_curve refuse: clip them (ranking is unchanged).
    pred, proba = outs[0], np.clip(np.asarray(outs[1], dtype=np.float64), 0.0, 1.0)
    classes = np.asarray(inp.class_labels) if len(inp.class_labels) else np.unique(inp.y_test)
    y = np.asarray(inp.y_test)
    # Labels as the model outputs them (int64 or string); compare as strings.
    y_s = y.astype(str)
    pred_s = np.asarray(pred).astype(str)
    labels = [str(c) for c in classes]
    cm = skm.confusion_matrix(y_s, pred_s, labels=labels)
    with np.errstate(invalid="ignore", divide="ignore"):
        cm_norm = skm.confusion_matrix(y_s, pred_s, labels=labels, normalize="true")
    cm_norm = np.nan_to_num(cm_norm)
    p, r, f1, support = skm.precision_recall_fscore_support(
        y_s, pred_s, labels=labels, zero_division=0
    )
    out: dict[str, Any] = {
        "accuracy": float(skm.accuracy_score(y_s, pred_s)),
        "f1_macro": float(skm.f1_score(y_s, pred_s, labels=labels, average="macro")),
        "log_loss": float(skm.log_loss(y_s, proba, labels=labels)),
        "labels": labels,
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalized": cm_norm.tolist(),
        "per_class": {
            lab: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, lab in enumerate(labels)
        },
    }
    for normalized, matrix, name in (
        (False, cm, "confusion-matrix"),
        (True, cm_norm, "confusion-matrix-normalized"),
    ):
        fig, ax = _figure()
        disp = skm.ConfusionMatrixDisplay(matrix, display_labels=labels)
        disp.plot(ax=ax, values_format=".2f" if normalized else "d", colorbar=True)
        ax.set_title(
            "Confusion matrix" + (" (normalised over the true class)" if normalized else "")
        )
        figs.add(
            name,
            "Confusion matrix" + (", normalised" if normalized else ""),
            fig,
            "Rows: true class; columns: predicted class"
            + ("; each row sums to 1 (recall on the diagonal)." if normalized else "; counts."),
        )
    roc: dict[str, Any] = {}
    pr: dict[str, Any] = {}
    calib: dict[str, Any] = {}
    shown = labels[:MAX_CURVE_CLASSES]
    fig_roc, ax_roc = _figure()
    fig_pr, ax_pr = _figure()
    fig_cal, ax_cal = _figure()
    for i, lab in enumerate(labels):
        positive = (y_s == lab).astype(np.int64)
        if positive.min() == positive.max():
            roc[lab] = pr[lab] = None  # the class is absent (or alone) in the held-out rows
            continue
        score = proba[:, i]
        roc[lab] = {"auc": float(skm.roc_auc_score(positive, score))}
        pr[lab] = {"average_precision": float(skm.average_precision_score(positive, score))}
        prob_true, prob_pred = calibration_curve(positive, score, n_bins=10, strategy="uniform")
        calib[lab] = {"prob_true": prob_true.tolist(), "prob_pred": prob_pred.tolist()}
        if lab in shown:
            skm.RocCurveDisplay.from_predictions(
                positive, score, ax=ax_roc, name=f"class {lab}", plot_chance_level=i == 0
            )
            skm.PrecisionRecallDisplay.from_predictions(
                positive, score, ax=ax_pr, name=f"class {lab}"
            )
            CalibrationDisplay.from_predictions(
                positive, score, n_bins=10, ax=ax_cal, name=f"class {lab}"
            )
    ax_roc.set_title("ROC curves (one class against the rest)")
    ax_pr.set_title("Precision-recall curves (one class against the rest)")
    ax_cal.set_title("Calibration (predicted probability against observed frequency)")
    ax_cal.set_xlabel("mean predicted probability of the class")
    ax_cal.set_ylabel("fraction of rows of the class")
    more = f" (first {MAX_CURVE_CLASSES} classes)" if len(labels) > MAX_CURVE_CLASSES else ""
    figs.add("roc", "ROC curves" + more, fig_roc, "True-positive against false-positive rate.")
    figs.add("precision-recall", "Precision-recall curves" + more, fig_pr, "AP per class.")
    figs.add(
        "calibration",
        "Calibration curves" + more,
        fig_cal,
        "10 equal-width probability bins; the diagonal is perfect calibration.",
    )
    fig, ax = _figure()
    x = np.arange(len(labels))
    width = 0.27
    ax.bar(x - width, p, width, label="precision")
    ax.bar(x, r, width, label="recall")
    ax.bar(x + width, f1, width, label="F1")
    ax.set_xticks(x, labels, rotation=45 if len(labels) > 6 else 0)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.set_title("Per-class precision, recall and F1")
    ax.legend(loc="lower right")
    figs.add("per-class", "Per-class precision, recall, F1", fig, "On the held-out split.")
    out["roc"] = roc
    out["precision_recall"] = pr
    out["calibration"] = calib
    if len(labels) == 2 and roc.get(labels[1]) is not None:
        out["roc_auc"] = roc[labels[1]]["auc"]
    return out


# --- regression --------------------------------------------------------------------------


def _regression(inp: ReportInput, model: _OnnxModel, figs: _Figures) -> dict[str, Any]:
    from sklearn import metrics as skm

    pred = np.asarray(model.predict(inp.X_test), dtype=np.float64)
    y = np.asarray(inp.y_test, dtype=np.float64)
    residuals = y - pred
    out = {
        "mae": float(skm.mean_absolute_error(y, pred)),
        "rmse": float(math.sqrt(skm.mean_squared_error(y, pred))),
        "r2": float(skm.r2_score(y, pred)),
        "residuals": {
            "mean": float(residuals.mean()),
            "std": float(residuals.std()),
            "min": float(residuals.min()),
            "max": float(residuals.max()),
        },
    }
    rows = len(y)
    drawn = min(rows, PLOT_ROWS)
    for kind, name, title in (
        ("actual_vs_predicted", "predicted-vs-actual", "Predicted against actual"),
        ("residual_vs_predicted", "residuals-vs-predicted", "Residuals against predicted"),
    ):
        fig, ax = _figure()
        skm.PredictionErrorDisplay.from_predictions(
            y,
            pred,
            kind=kind,
            ax=ax,
            subsample=PLOT_ROWS,
            random_state=inp.seed,
            scatter_kwargs={"alpha": 0.4, "s": 8},
        )
        ax.set_title(title)
        figs.add(name, title, fig, f"{drawn} of {rows} held-out rows drawn.")
    fig, ax = _figure()
    ax.hist(residuals, bins=min(50, max(10, rows // 20)))
    ax.set_xlabel("residual (actual - predicted)")
    ax.set_ylabel("rows")
    ax.set_title("Residuals")
    figs.add("residuals-histogram", "Residual histogram", fig, f"All {rows} held-out rows.")
    return out


# --- permutation importance and trials ---------------------------------------------------


def _importance(inp: ReportInput, model: _OnnxModel, figs: _Figures) -> dict[str, Any]:
    from sklearn import metrics as skm
    from sklearn.inspection import permutation_importance

    idx = np.random.default_rng(inp.seed).permutation(len(inp.y_test))[:IMPORTANCE_ROWS]
    idx.sort()
    X = inp.X_test.iloc[idx].reset_index(drop=True)
    y = np.asarray(inp.y_test)[idx]
    if inp.task == "regression":
        metric = "r2"

        def scorer(est: Any, Xp: Any, yp: Any) -> float:
            return float(skm.r2_score(yp, est.predict(Xp)))
    else:
        metric = "accuracy"

        def scorer(est: Any, Xp: Any, yp: Any) -> float:
            return float(
                skm.accuracy_score(np.asarray(yp).astype(str), est.predict(Xp).astype(str))
            )

    result = permutation_importance(
        model, X, y, scoring=scorer, n_repeats=IMPORTANCE_REPEATS, random_state=inp.seed
    )
    names = [n for n, _ in inp.features]
    order = sorted(range(len(names)), key=lambda i: -float(result.importances_mean[i]))
    ranked: list[dict[str, Any]] = [
        {
            "feature": names[i],
            "mean": float(result.importances_mean[i]),
            "std": float(result.importances_std[i]),
        }
        for i in order
    ]
    fig, ax = _figure()
    top = ranked[:20][::-1]
    ax.barh(
        [d["feature"] for d in top],
        [d["mean"] for d in top],
        xerr=[d["std"] for d in top],
    )
    ax.set_xlabel(f"drop in {metric} when the feature is shuffled")
    ax.set_title("Permutation feature importance (held-out rows)")
    more = " (top 20)" if len(ranked) > 20 else ""
    figs.add(
        "permutation-importance",
        "Permutation feature importance" + more,
        fig,
        f"{len(idx)} held-out rows, {IMPORTANCE_REPEATS} repeats, scored by {metric}.",
    )
    return {
        "metric": metric,
        "rows": len(idx),
        "repeats": IMPORTANCE_REPEATS,
        "features": ranked,
    }


def _trials(trials: Sequence[Mapping[str, Any]], figs: _Figures) -> dict[str, Any]:
    """Score against each searched hyperparameter (one figure per hyperparameter)."""
    params = sorted({p for t in trials for p in (t.get("params") or {})})
    for name in params:
        xs, ys = [], []
        for t in trials:
            if name in (t.get("params") or {}) and t.get("score") is not None:
                xs.append(t["params"][name])
                ys.append(float(t["score"]))
        if not xs:
            continue
        fig, ax = _figure()
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs):
            ax.scatter(xs, ys)
            positive = all(v > 0 for v in xs)
            if positive and max(xs) / max(min(xs), 1e-300) > 100:
                ax.set_xscale("log")
        else:
            cats = sorted({str(v) for v in xs})
            ax.scatter([cats.index(str(v)) for v in xs], ys)
            ax.set_xticks(range(len(cats)), cats)
        ax.set_xlabel(name)
        ax.set_ylabel("trial score")
        ax.set_title(f"Search trials: score against {name}")
        safe = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "param"
        figs.add(f"trials-{safe}", f"Trials: {name}", fig, f"{len(xs)} trials.")
    return {"count": len(trials), "params": params, "trials": [dict(t) for t in trials]}


# --- the whole report --------------------------------------------------------------------


def build(inp: ReportInput) -> dict[str, bytes]:
    """Every artifact of the report (and the drift profile), by artifact name."""
    import warnings

    sess = _session(inp.onnx_bytes)
    model = _OnnxModel(sess, inp.feed, inp.task)
    figs = _Figures()
    with warnings.catch_warnings():
        # Ill-defined scores of classes absent from a small held-out split are
        # reported as 0 (zero_division) or left out; no need to warn about them.
        warnings.simplefilter("ignore")
        if inp.task == "regression":
            numbers = _regression(inp, model, figs)
        else:
            numbers = _classification(inp, model, figs)
        importance = _importance(inp, model, figs)
        trials = _trials(inp.trials, figs) if inp.trials else None
    doc: dict[str, Any] = {
        "format": FORMAT,
        "model_name": inp.model_name,
        "algorithm": inp.algorithm,
        "task": inp.task,
        "held_out_rows": len(inp.y_test),
        "metrics": numbers,
        "permutation_importance": importance,
        "trials": trials,
        "figures": figs.listed,
        **dict(inp.extra),
    }
    artifacts = dict(figs.files)
    artifacts[REPORT_JSON] = json.dumps(doc, indent=1, default=_finite).encode()
    artifacts[REPORT_HTML] = render_html(doc, figs.files).encode()
    columns = [
        (name, kind, inp.X_train.iloc[:, i].to_numpy())
        for i, (name, kind) in enumerate(inp.features)
    ]
    artifacts[PROFILE_ARTIFACT] = build_profile(columns).to_json()
    return artifacts


def for_job(
    spec: Any, trained: Any, trials: Sequence[Mapping[str, Any]] | None = None
) -> tuple[dict[str, bytes], str]:
    """The artifacts of a training job's version (``JobSpec``, ``pipeline.TrainedModel``)
    and a warning ("" when all went well).

    A report that cannot be made (an unexpected library error) does not fail
    the job: the version is published without it, with a warning, and
    GetVersionReport answers NOT_FOUND for it. A memory error does propagate
    (the worker turns it into the job's memory-limit failure).
    """
    import logging

    from highpeaks_ml.training import pipeline

    data = trained.data
    if data is None or trained.X_test is None:
        return {}, "no evaluation report: the held-out split was not kept"
    try:
        inp = ReportInput(
            onnx_bytes=trained.onnx_bytes,
            task=trained.task,
            X_test=trained.X_test,
            y_test=trained.y_test,
            X_train=trained.X_train,
            features=list(data.features),
            feed=lambda X: pipeline.onnx_feed(X, data),
            class_labels=list(trained.class_labels),
            model_name=spec.model_name,
            algorithm=spec.algorithm,
            seed=int(spec.seed),
            trials=trials,
            extra={"job_id": spec.job_id},
        )
        return build(inp), ""
    except MemoryError:
        raise
    except Exception as exc:
        logging.getLogger("highpeaks_ml.training.report").exception(
            "evaluation report of job %s failed", spec.job_id
        )
        return {}, f"no evaluation report: {type(exc).__name__}: {str(exc)[:200]}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(doc: Mapping[str, Any], figures: Mapping[str, bytes]) -> str:
    """The self-contained page: numbers as tables, figures as base64 data URLs."""
    m = doc["metrics"]
    title = f"Evaluation report: {doc.get('model_name') or 'model'}"
    if doc.get("version"):
        title += f" version {doc['version']}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;"
        "padding:.2em .6em;text-align:right}th{background:#eee}"
        "figure{display:inline-block;margin:.5em}figcaption{font-size:.9em;color:#444}"
        "img{border:1px solid #ddd}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(doc.get('algorithm', ''))}, {html.escape(doc['task'])};"
        f" {doc['held_out_rows']} held-out rows, predictions of the exported ONNX model.</p>",
        "<h2>Metrics</h2>",
    ]
    scalars = [(k, v) for k, v in m.items() if isinstance(v, (int, float))]
    parts.append(_table(["metric", "value"], scalars))
    if "per_class" in m:
        parts.append("<h2>Per class</h2>")
        rows = []
        for lab, d in m["per_class"].items():
            roc = (m.get("roc") or {}).get(lab) or {}
            pr = (m.get("precision_recall") or {}).get(lab) or {}
            rows.append(
                [
                    lab,
                    d["precision"],
                    d["recall"],
                    d["f1"],
                    d["support"],
                    roc.get("auc", "n/a"),
                    pr.get("average_precision", "n/a"),
                ]
            )
        parts.append(
            _table(["class", "precision", "recall", "F1", "support", "ROC AUC", "AP"], rows)
        )
        parts.append("<h3>Confusion matrix (rows: true, columns: predicted)</h3>")
        parts.append(
            _table(
                ["", *m["labels"]],
                [[lab, *row] for lab, row in zip(m["labels"], m["confusion_matrix"], strict=True)],
            )
        )
    imp = doc["permutation_importance"]
    parts.append("<h2>Permutation feature importance</h2>")
    parts.append(
        f"<p>Drop in {html.escape(imp['metric'])} when one feature is shuffled;"
        f" {imp['rows']} held-out rows, {imp['repeats']} repeats.</p>"
    )
    parts.append(
        _table(
            ["feature", "mean", "std"],
            [[d["feature"], d["mean"], d["std"]] for d in imp["features"]],
        )
    )
    parts.append("<h2>Figures</h2>")
    for f in doc["figures"]:
        data = base64.b64encode(figures[f["artifact"]]).decode()
        parts.append(
            f'<figure><img alt="{html.escape(f["title"])}" width="{f["width"]}"'
            f' height="{f["height"]}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(f['title'])}: {html.escape(f['caption'])}"
            "</figcaption></figure>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


__all__ = [
    "DPI",
    "FIG_HEIGHT",
    "FIG_WIDTH",
    "IMPORTANCE_REPEATS",
    "IMPORTANCE_ROWS",
    "PLOT_ROWS",
    "REPORT_HTML",
    "REPORT_JSON",
    "ReportInput",
    "build",
    "for_job",
    "render_html",
]
