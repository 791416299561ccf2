"""``LabelledXGBClassifier``: XGBClassifier that takes any class labels.

XGBoost only accepts class labels 0..n-1 (``Invalid classes inferred from
unique values of y`` otherwise), while the catalogue takes any integers or
strings, as the scikit-learn classifiers do. This subclass encodes the labels
before fitting and decodes predictions; ``classes_`` are the original labels
in sorted order, so ``predict`` returns them and onnxmltools' XGBoost
converter (which reads ``classes_``) writes them into the ONNX graph.

A module of its own (importing XGBoost at the top) so that the class has a
stable import path: clone, pickle and the skl2onnx converter registry key on it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from xgboost import XGBClassifier


class LabelledXGBClassifier(XGBClassifier):  # type: ignore[misc]
    """XGBClassifier over labels encoded to 0..n-1, answering with the original labels."""

    def fit(self, X: Any, y: Any, **kwargs: Any) -> LabelledXGBClassifier:
        """Fit on ``y`` encoded to 0..n-1; ``classes_`` become its sorted distinct values."""
        labels, encoded = np.unique(np.asarray(y), return_inverse=True)
        # XGBClassifier.fit compares the classes it sees with classes_ (0..n-1).
        self._labels = None
        super().fit(X, encoded.reshape(-1), **kwargs)
        self._labels = labels
        return self

    @property
    def classes_(self) -> np.ndarray:
        """The original class labels (0..n-1 while fitting)."""
        labels = getattr(self, "_labels", None)
        return labels if labels is not None else np.arange(self.n_classes_)

    def predict(self, X: Any, **kwargs: Any) -> Any:
        """Class labels, decoded to the original ones."""
        encoded = np.asarray(super().predict(X, **kwargs)).astype(np.int64)
        return self.classes_[encoded]


__all__ = ["LabelledXGBClassifier"]
