"""Small formatting rules of the CLI output."""

from __future__ import annotations

from highpeaks_ml.cli.models import _param


def test_whole_number_hyperparameters_print_as_ints():
    assert _param(100.0) == 100 and isinstance(_param(100.0), int)
    assert _param(0.5) == 0.5
    assert _param("gini") == "gini" and _param(None) is None and _param(True) is True
