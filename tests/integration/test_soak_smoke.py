"""A three-second run of scripts/soak.py: the script works end to end (server, first
training, every kind of load, the report, a clean drain) and passes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_soak_script_smoke_run(tmp_path):
    out_json = tmp_path / "soak.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "soak.py"),
            "--duration",
            "3",
            "--window",
            "1",
            "--concurrency",
            "8",
            "--train-every",
            "1",
            "--alias-every",
            "0.5",
            "--json",
            str(out_json),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "RESULT: PASS" in proc.stdout
    report = json.loads(out_json.read_text())
    assert report["predictions_ok"] > 0 and report["errors"] == {}
    assert set(report["per_kind"]) == {"unary-typed", "unary-raw", "unary-rows", "stream"}
    assert all(k["requests"] > 0 for k in report["per_kind"].values())
    assert len(report["windows"]) == 3
    assert report["control"].get("alias moved", 0) >= 1
    assert sum(report["intended_cancellations"].values()) >= 1
    for key in ("rss_mib", "fds", "threads"):
        assert report["server_start"][key] > 0 and report["server_end"][key] > 0
    assert report["exit_code"] == 0 and report["log_errors"] == 0
