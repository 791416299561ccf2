"""docs/security.md keeps up with the scope table and the metrics."""

from __future__ import annotations

from prometheus_client import Counter

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
    names = [
        attr._name + ("_total" if isinstance(attr, Counter) else "")
        for attr in vars(m).values()
        if hasattr(attr, "_name") and hasattr(attr, "_type")
    ]
    assert len(names) == 24
    for name in names:
        assert f"`{name}`" in DOC, name
