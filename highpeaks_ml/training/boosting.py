"""XGBoost and LightGBM estimators, and their ONNX converters registered with skl2onnx.

Both libraries' scikit-learn estimators sit inside the same Pipeline as the
scikit-learn ones (training/pipeline.py); skl2onnx converts the Pipeline to
one ONNX graph, calling the converters those projects maintain in
onnxmltools for the last step (``register_converters``, the way onnxmltools
and skl2onnx document it: ``update_registered_converter`` with skl2onnx's
linear classifier/regressor shape calculators and onnxmltools'
``convert_xgboost`` / ``convert_lightgbm``).

Differences from the libraries' own defaults, and why:

- ``n_jobs=1`` here, raised to the job's CPUs by ``pipeline.build`` (as for
  the random forest).
- XGBoost: ``tree_method="hist"`` (the only method that trains on a GPU; also
  XGBoost's default), ``missing=NaN`` (what the ONNX converter requires), and
  class labels encoded to 0..n-1 for XGBoost and decoded back
  (``xgboost_model.LabelledXGBClassifier``): XGBoost only accepts labels
  0..n-1, while the catalogue takes any integers or strings. The exported
  graph returns the original labels.
- LightGBM: ``subsample_freq=1`` when ``subsample < 1`` (LightGBM ignores
  the fraction otherwise), ``verbose=-1`` (no console output from workers).

XGBoost, LightGBM and onnxmltools are imported lazily, by the functions that
use them, so that importing this module costs nothing.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import numpy as np

_lock = threading.Lock()
_registered: set[str] = set()

#: The modules that provide the two libraries (installed or not).
XGBOOST = "xgboost"
LIGHTGBM = "lightgbm"


def xgboost_estimator(classification: bool, p: dict[str, Any], seed: int) -> Any:
    """An unfitted XGBoost estimator (CPU; ``set_params(device="cuda")`` moves it)."""
    from xgboost import XGBRegressor

    from highpeaks_ml.training.xgboost_model import LabelledXGBClassifier

    cls = LabelledXGBClassifier if classification else XGBRegressor
    return cls(
        n_estimators=p["n_estimators"],
        max_depth=p["max_depth"],
        learning_rate=p["learning_rate"],
        subsample=p["subsample"],
        colsample_bytree=p["colsample_bytree"],
        reg_alpha=p["reg_alpha"],
        reg_lambda=p["reg_lambda"],
        min_child_weight=p["min_child_weight"],
        tree_method="hist",
        missing=np.nan,
        n_jobs=1,
        random_state=seed,
        device="cpu",
    )


def lightgbm_estimator(classification: bool, p: dict[str, Any], seed: int) -> Any:
    """An unfitted LightGBM estimator."""
    from lightgbm import LGBMClassifier, LGBMRegressor

    cls = LGBMClassifier if classification else LGBMRegressor
    return cls(
        n_estimators=p["n_estimators"],
        num_leaves=p["num_leaves"],
        max_depth=-1 if p["max_depth"] is None else p["max_depth"],
        learning_rate=p["learning_rate"],
        subsample=p["subsample"],
        subsample_freq=1 if p["subsample"] < 1.0 else 0,
        colsample_bytree=p["colsample_bytree"],
        reg_alpha=p["reg_alpha"],
        reg_lambda=p["reg_lambda"],
        min_child_samples=p["min_child_samples"],
        n_jobs=1,
        random_state=seed,
        verbose=-1,
    )


def register_converters() -> None:
    """Register onnxmltools' converters with skl2onnx for the libraries imported so far.

    Idempotent, and cheap when neither library is in use: a library is
    registered once this process has imported it (building an estimator
    does), so exporting a scikit-learn model imports neither.
    """
    with _lock:
        for library, register in ((XGBOOST, _register_xgboost), (LIGHTGBM, _register_lightgbm)):
            if library in sys.modules and library not in _registered:
                register()
                _registered.add(library)


_CLASSIFIER_OPTIONS = {"nocl": [True, False], "zipmap": [True, False, "columns"]}


def _register_xgboost() -> None:
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )
    from xgboost import XGBRegressor

    from highpeaks_ml.training.xgboost_model import LabelledXGBClassifier

    update_registered_converter(
        LabelledXGBClassifier,
        "HighPeaksLabelledXGBClassifier",
        calculate_linear_classifier_output_shapes,
        convert_xgboost,
        options=_CLASSIFIER_OPTIONS,
    )
    update_registered_converter(
        XGBRegressor,
        "XGBoostXGBRegressor",
        calculate_linear_regressor_output_shapes,
        convert_xgboost,
    )


def exact_thresholds(tree: dict[str, Any]) -> int:
    """Lower each ``<=`` threshold of a LightGBM tree dump to the largest float32 <= it.

    LightGBM compares ``x <= threshold`` in double precision; the ONNX
    TreeEnsemble compares in float32, and onnx stores the threshold rounded to
    the *nearest* float32, which may be above it: a row holding exactly that
    float32 value then goes left in ONNX but right in LightGBM. Training data
    is rounded to float32 before fitting (pipeline.prepare), so every value
    compared is a float32, and for a float32 ``x``, ``x <= t`` holds exactly
    when ``x <= largest float32 <= t``. Measured on builtin:diabetes (20
    trees): without this, 1 of 111 held-out rows differed by 5.07; with it,
    none. Returns how many thresholds changed; ``tree`` is changed in place.
    """
    changed = 0
    stack = [tree]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        if node.get("decision_type") == "<=" and isinstance(node.get("threshold"), int | float):
            t = float(node["threshold"])
            with np.errstate(over="ignore"):
                f = np.float32(t)
            if float(f) > t:
                f = np.nextafter(f, np.float32(-np.inf))
            if float(f) != t:
                node["threshold"] = float(f)
                changed += 1
        stack.extend(v for k, v in node.items() if k in ("left_child", "right_child"))
    return changed


def _exact_dump(dump: Any) -> Any:
    """Wrap onnxmltools' LightGBM ``dump_booster_model`` to apply ``exact_thresholds``."""

    def dump_booster_model(*args: Any, **kwargs: Any) -> Any:
        text, info = dump(*args, **kwargs)
        for tree in text.get("tree_info", ()):
            exact_thresholds(tree["tree_structure"])
        return text, info

    dump_booster_model.__highpeaks_fix__ = True  # type: ignore[attr-defined]
    return dump_booster_model


def _register_lightgbm() -> None:
    from lightgbm import LGBMClassifier, LGBMRegressor
    from onnxmltools.convert.lightgbm.operator_converters import LightGbm
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    # convert_lightgbm calls the module's dump_booster_model (onnxmltools 1.16).
    if not getattr(LightGbm.dump_booster_model, "__highpeaks_fix__", False):
        LightGbm.dump_booster_model = _exact_dump(LightGbm.dump_booster_model)
    update_registered_converter(
        LGBMClassifier,
        "LightGbmLGBMClassifier",
        calculate_linear_classifier_output_shapes,
        convert_lightgbm,
        options=_CLASSIFIER_OPTIONS,
    )
    update_registered_converter(
        LGBMRegressor,
        "LightGbmLGBMRegressor",
        calculate_linear_regressor_output_shapes,
        convert_lightgbm,
    )


def is_boosting(estimator: Any) -> bool:
    """Whether ``estimator`` is an XGBoost or LightGBM model (exported by onnxmltools)."""
    module = type(estimator).__module__
    return module.startswith((XGBOOST, LIGHTGBM, "highpeaks_ml.training.xgboost_model"))


def target_opset(estimator: Any) -> dict[str, int] | None:
    """The opsets to export ``estimator`` with (None: skl2onnx's choice).

    onnxmltools' tree converters do not pin the ``ai.onnx.ml`` version, so
    the graph would claim the newest one onnx knows (5), which skl2onnx
    refuses; its TreeEnsemble nodes are valid in version 3, the newest
    skl2onnx supports (and onnxruntime runs).
    """
    if not is_boosting(estimator):
        return None
    from skl2onnx import get_latest_tested_opset_version

    return {"": get_latest_tested_opset_version(), "ai.onnx.ml": 3}


def library_versions() -> dict[str, str]:
    """Versions of XGBoost (either wheel), LightGBM and onnxmltools, where installed."""
    from importlib import metadata

    out = {}
    for key, distributions in (
        ("xgboost", ("xgboost", "xgboost-cpu")),
        ("lightgbm", ("lightgbm",)),
        ("onnxmltools", ("onnxmltools",)),
    ):
        for distribution in distributions:
            try:
                out[key] = metadata.version(distribution)
            except metadata.PackageNotFoundError:
                continue
            break
    return out


__all__ = [
    "LIGHTGBM",
    "XGBOOST",
    "is_boosting",
    "library_versions",
    "lightgbm_estimator",
    "register_converters",
    "target_opset",
    "xgboost_estimator",
]
