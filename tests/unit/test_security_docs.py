"""docs/security.md keeps up with the scope table and the metrics."""

from __future__ import annotations

from highpeaks_ml.api.auth import METHOD_SCOPES, PUBLIC_METHODS
from highpeaks_ml.metrics import Metrics
from tests.conftest import ROOT

DOC = (ROOT / "docs" / "security.md").read_text()


def test_every_method_and_scope_is_documented():
    for method, scope in METHOD_SCOPES.items():
        assert f"| `{method}` | `{scope}` |" in DOC, method
    for method in PUBLIC_METHODS:
        assert f"| `{method}` | none |" in DOC, method


def test_every_metric_is_documented():
    m = Metrics(process=False)
    # From the exposition, so prometheus_client's metrics and the hot path's
    # (highpeaks_ml/hotmetrics.py) count alike.
    names = [
        family.name + ("_total" if family.type == "counter" else "")
        for family in m.registry.collect()
    ]
    assert len(names) == 24
    for name in names:
        assert f"`{name}`" in DOC, name
