"""Nothing that cannot serve reaches callers (issue 13 §1), on the real server.

- ImportModel proves onnxruntime loads and runs a version before storing it:
  a model that passes onnx.checker but that onnxruntime cannot load is
  INVALID_ARGUMENT in our words, and nothing is stored or aliased.
- A version that fails to load in serving anyway (published past the check,
  here straight through the store as versions from before the check were):
  SetAlias onto it is FAILED_PRECONDITION unless forced; callers of the
  latest and of a forced alias keep getting the previous version; the failure
  shows in GetModelVersion, the log and the metrics.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from highpeaks_ml.client import Client
from highpeaks_ml.registry.local import LocalModelStore
from highpeaks_ml.v1 import registry_pb2
from tests.conftest import ServerProcess
from tests.support import security as sec
from tests.support import serving_models as sm

# onnxruntime's own words for this failure; callers must never see them.
ORT_WORDS = ("ONNXRuntimeError", "not a registered function", "FAIL :")


def _error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def _held_metric(port: int, model: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "highpeaks_ml_model_targets_held" and sample.labels == {
                "model": model
            }:
                return float(sample.value)
    return 0.0


def _until(predicate: Callable[[], bool], limit_s: float = 30.0) -> None:
    """Wait until ``predicate()`` holds (an RPC error counts as not yet)."""
    end = time.monotonic() + limit_s
    while True:
        try:
            if predicate():
                return
        except grpc.RpcError:
            pass
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def test_import_of_a_model_onnxruntime_cannot_load_is_refused_and_stores_nothing(
    server: ServerProcess, home: Path
) -> None:
    good = sm.imported_logreg()
    bad = sm.unknown_operator_onnx()
    with Client(server.target) as client:
        # A brand-new name: refused, and the model does not come into being.
        err = _error(lambda: client.import_model("fresh", bad, aliases=["production"]))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        message = err.details()
        assert "cannot be served" in message and "nothing was stored" in message
        assert "com.example.custom:Frobnicate" in message  # names the culprit, our words
        assert not any(w in message for w in ORT_WORDS), message
        assert _error(lambda: client.get_model("fresh")).code() == grpc.StatusCode.NOT_FOUND

        # An existing model: its latest and its alias stay where they were.
        v1 = client.import_model("iris", good.onnx, task="classification", aliases=["production"])
        assert v1.version == 1
        err = _error(lambda: client.import_model("iris", bad, aliases=["production"]))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        model = client.get_model("iris")
        assert model.latest_version == 1 and dict(model.aliases) == {"production": 1}
        assert [v.version for v in model.versions] == [1]
        # The next good import takes number 2: the refused one used no number.
        assert client.import_model("iris", good.onnx).version == 2
    # Nothing of the refused uploads is left on disk (no version directory, no scratch).
    assert sorted(p.name for p in (home / "models" / "iris" / "versions").iterdir()) == ["1", "2"]
    assert not (home / "models" / "fresh" / "versions").exists()
    assert not [p for p in (home / "tmp").iterdir() if p.name.startswith("registry-")]
    assert "refused model fresh" in server.output()


def test_a_version_that_fails_to_load_never_takes_callers_from_the_previous_one(
    server_process: Callable[..., ServerProcess], home: Path, tmp_path: Path
) -> None:
    metrics_port = sec.free_port()
    server = server_process("--metrics-port", str(metrics_port))
    good = sm.imported_logreg()
    X = good.X[:3]
    with Client(server.target) as client:
        client.import_model("iris", good.onnx, task="classification", aliases=["production"])
        _until(lambda: client.get_version("iris", version=1).load_state == 3)  # READY

        # Version 2 reaches the store past the check (as versions published before
        # it existed did): it passes onnx.checker, onnxruntime cannot load it.
        LocalModelStore(home).publish("iris", sm.unknown_operator_onnx(), good.meta)
        _until(lambda: client.get_version("iris", version=2).held_targets == ["latest"])

        # Callers of the latest keep getting version 1 ...
        pred = client.predict("iris", X)
        assert pred.model_version == 1
        # ... while the registry says 2 is the latest, and why it is not served.
        v2 = client.get_version("iris")
        assert v2.version == 2 and v2.load_state == registry_pb2.LOAD_STATE_FAILED
        assert "failed to load" in v2.load_error and "Frobnicate" in v2.load_error
        assert not any(w in v2.load_error for w in ORT_WORDS), v2.load_error
        # An explicit request for version 2 fails in our words, too.
        err = _error(lambda: client.predict("iris", X, version=2))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert not any(w in err.details() for w in ORT_WORDS), err.details()

        # SetAlias onto it: refused, the alias keeps its version.
        err = _error(lambda: client.set_alias("iris", "production", 2))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "'production' was not moved" in err.details() and "force" in err.details()
        assert dict(client.get_model("iris").aliases) == {"production": 1}
        assert client.predict("iris", X, alias="production").model_version == 1

        # Forced (the CLI's --force): moved in the registry, yet this server keeps
        # answering the alias from version 1 while version 2 fails to load.
        cli = [sys.executable, "-m", "highpeaks_ml.cli", "models", "alias"]
        out = subprocess.run(
            [*cli, "iris", "production", "2", "--force", "--target", server.target],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert dict(client.get_model("iris").aliases) == {"production": 2}
        _until(
            lambda: client.get_version("iris", version=2).held_targets == ["latest", "production"]
        )
        assert client.predict("iris", X, alias="production").model_version == 1
        np.testing.assert_array_equal(
            np.asarray(client.predict("iris", X, alias="production").labels),
            np.asarray(pred.labels),
        )
        assert _held_metric(metrics_port, "iris") == 2

        # A new version that loads releases both: callers move to it.
        client.import_model("iris", good.onnx, task="classification", aliases=["production"])
        _until(lambda: client.predict("iris", X).model_version == 3)
        assert client.predict("iris", X, alias="production").model_version == 3
        assert list(client.get_version("iris", version=2).held_targets) == []
        assert _held_metric(metrics_port, "iris") == 0
    log = server.output()
    assert "latest now points at version 2, which failed to load" in log
    assert "keep getting version 1" in log
