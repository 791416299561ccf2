"""One small, explicit fix around skl2onnx's HistGradientBoosting converter.

skl2onnx 1.20.0 builds each HistGradientBoosting tree node by node in
``skl2onnx.common.tree_ensemble.add_tree_to_attribute_pairs_hist_gradient_boosting``.
Two things in that function are wrong for us:

1. **Leaves pass a Python ``bool``** (``missing = False``) as
   ``nodes_missing_value_tracks_true``, an INTS attribute. protobuf 6.x
   silently stores it as 0; protobuf 7.x (required by grpcio-health-checking
   and grpcio-reflection from 1.82.1 on) refuses it, and the conversion fails
   with ``TypeError: Field onnx.AttributeProto.ints: Expected an int, got a
   boolean``. Reproduced on scikit-learn 1.9.1 + skl2onnx 1.20.0 + onnx 1.23.2
   with protobuf 7.36.2; the project pins protobuf 6.33 today (see
   pyproject.toml), where the same code converts. We coerce the values to
   ``int`` so the conversion works with either protobuf.

2. **Thresholds are rounded to float32 to nearest** (the converter passes
   ``adjust_threshold_for_sklearn=False`` for HistGradientBoosting, unlike the
   DecisionTree/RandomForest converters). A threshold halfway between two
   adjacent float32 values may round up onto the larger one, and a row holding
   exactly that value then goes left in ONNX but right in scikit-learn. Our
   training data is rounded to float32 once before fitting (the precision the
   served graph receives), so every value compared is a float32, and the
   largest float32 <= threshold (what ``adjust_threshold_for_sklearn=True``
   computes) routes every such value exactly as scikit-learn does. Measured
   on the diabetes data: without this, 4 of 221 held-out rows differed by up
   to 0.16; with it, none (docs/training.md).

``install()`` replaces the function that the converter module calls with a
wrapper doing both; it is idempotent and changes nothing else.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

_MISSING_KEY = "nodes_missing_value_tracks_true"
_lock = threading.Lock()
_installed = False


def _wrap(original: Any) -> Any:
    @functools.wraps(original)
    def add_hgb_tree(
        attr_pairs: dict[str, list[Any]],
        is_classifier: bool,
        tree: Any,
        tree_id: int,
        tree_weight: float,
        weight_id_bias: int,
        leaf_weights_are_counts: bool,
        adjust_threshold_for_sklearn: bool = False,
        dtype: Any = None,
    ) -> Any:
        start = len(attr_pairs[_MISSING_KEY])
        result = original(
            attr_pairs,
            is_classifier,
            tree,
            tree_id,
            tree_weight,
            weight_id_bias,
            leaf_weights_are_counts,
            adjust_threshold_for_sklearn=True,  # fix 2 (see the module docstring)
            dtype=dtype,
        )
        # Fix 1: only this tree's entries, so conversion stays linear in nodes.
        values = attr_pairs[_MISSING_KEY]
        values[start:] = [int(v) for v in values[start:]]
        return result

    add_hgb_tree.__highpeaks_fix__ = True  # type: ignore[attr-defined]
    return add_hgb_tree


def install() -> None:
    """Install the fix into skl2onnx's random-forest/boosting converter (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        from skl2onnx.operator_converters import random_forest

        current = random_forest.add_tree_to_attribute_pairs_hist_gradient_boosting
        if not getattr(current, "__highpeaks_fix__", False):
            random_forest.add_tree_to_attribute_pairs_hist_gradient_boosting = _wrap(current)
        _installed = True


__all__ = ["install"]
