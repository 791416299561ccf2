"""scripts/gpu_check.py: the CPU-only CI size end to end, and the wheel-carrying steps.

The GPU run itself needs a machine with an NVIDIA GPU (docs/gpu.md); here the
same script runs with ``--device cpu --tiny``: real servers as subprocesses,
real skl2onnx models, predictions compared over gRPC with onnxruntime in the
test process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


def _module() -> ModuleType:
    """The script as a module (registered first: its dataclasses look themselves up)."""
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module
        spec.loader.exec_module(module)
    return sys.modules["gpu_check"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, str]:
    out = tmp_path_factory.mktemp("gpu-check")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    return proc.returncode, out, proc.stdout + proc.stderr


def test_tiny_cpu_run_passes_and_writes_its_files(tiny_run: tuple[int, Path, str]) -> None:
    rc, out, output = tiny_run
    assert rc == 0, output[-4000:]
    assert sorted(p.name for p in out.iterdir()) == ["log", "results.json", "results.txt"]
    results = json.loads((out / "results.json").read_text())
    assert results["passed"] is True
    assert results["errors"] == []
    assert results["mode"] == {"device": "cpu", "tiny": True, "budget_s": 330.0}
    env = results["environment"]
    assert "CPUExecutionProvider" in env["available_providers"]
    for lib in ("onnxruntime", "numpy", "scikit-learn", "skl2onnx", "onnx", "grpcio"):
        assert env["versions"][lib]
    assert set(results["models"]) == {"gpu-mlp", "gpu-forest"}
    # The servers' logs are kept in the run's log.
    assert "---- server log: device=cpu, batching off ----" in (out / "log").read_text()


def test_served_predictions_agree_with_in_process_onnxruntime(
    tiny_run: tuple[int, Path, str],
) -> None:
    _, out, _ = tiny_run
    results = json.loads((out / "results.json").read_text())
    checks = results["checks"]
    # One large request per model (batching off) and concurrent batch-1
    # requests per model with batching on.
    assert {(c["model"], c["request"].startswith("one request")) for c in checks} == {
        ("gpu-mlp", True),
        ("gpu-mlp", False),
        ("gpu-forest", True),
        ("gpu-forest", False),
    }
    for c in checks:
        assert c["device"] == "cpu"
        assert c["provider_in_response"] == "CPUExecutionProvider"
        assert c.get("provider_in_metadata", "CPUExecutionProvider") == "CPUExecutionProvider"
        assert c["rows"] > 0
        assert c["tolerance"] == 1e-4
        assert c["max_abs_diff"] <= c["tolerance"]
        assert c["label_mismatches_outside_ties"] == 0
        assert c["agree"] is True and c["passed"] is True
    assert {c["load_state"] for c in checks if "load_state" in c} == {"LOAD_STATE_READY"}


def test_measurements_cover_every_model_and_batch_size(tiny_run: tuple[int, Path, str]) -> None:
    _, out, _ = tiny_run
    results = json.loads((out / "results.json").read_text())
    plan = results["plan"]
    unary = {(r["model"], r["batch"]): r for r in results["unary"]}
    assert set(unary) == {(m, b) for m in ("gpu-mlp", "gpu-forest") for b in plan["batch_sizes"]}
    for r in unary.values():
        assert r["device"] == "cpu"
        assert r["rows_per_s"] > 0 and r["inprocess_rows_per_s"] > 0 and r["calls"] >= 2
    labels = {"off", *(f"on, delay {d} us" for d in plan["delays_us"])}
    conc = {(r["model"], r["batching"]) for r in results["concurrent"]}
    assert conc == {(m, label) for m in ("gpu-mlp", "gpu-forest") for label in labels}
    assert all(
        r["clients"] == plan["clients"] and r["rows_per_s"] > 0 for r in results["concurrent"]
    )
    # CPU mode: no CUDA column, so no ratios.
    assert results["ratios"] == []
    placement = {p["model"]: p for p in results["placement"]}
    assert set(placement) == {"gpu-mlp", "gpu-forest"}
    assert set(placement["gpu-forest"]["nodes"]) == {"CPUExecutionProvider"}
    text = (out / "results.txt").read_text()
    for heading in ("Checks", "Rows/s, one caller", "concurrent batch-1 unary clients"):
        assert heading in text
    assert re.search(r"\| gpu-forest \| 1 +\| - +\| - +\| [\d,]+ +\| [\d,]+ ", text)


def test_xgboost_training_is_measured_on_the_cpu(tiny_run: tuple[int, Path, str]) -> None:
    """The training measurement's CPU path (CUDA vs CPU on a GPU run; docs/gpu.md)."""
    _, out, _ = tiny_run
    results = json.loads((out / "results.json").read_text())
    (row,) = results["training"]
    plan = results["plan"]
    assert (row["device"], row["device_used"]) == ("cpu", "cpu")
    assert (row["rows"], row["features"]) == (plan["xgb_rows"], plan["xgb_features"])
    assert row["trees"] == plan["xgb_trees"] == 5 and row["fit_s"] > 0
    assert row["train_accuracy"] > 0.6  # it learned the generated target
    assert results["environment"]["xgboost_cuda_build"] in (True, False)
    text = (out / "results.txt").read_text()
    assert re.search(r"XGBoost training, hist, 2,000 rows x 10 features, 5 trees of depth 4", text)
    assert re.search(r"\| cpu +\| cpu +\| [\d.]+ +\| [\d.]+ ", text)


def _fake_wheels(folder: Path) -> dict[str, bytes]:
    folder.mkdir()
    wheels = {
        "big-1.0-py3-none-any.whl": bytes(range(256)) * 100,  # 25,600 bytes: split
        "small-1.0-py3-none-any.whl": b"s" * 1000,
        "other-1.0-py3-none-any.whl": b"o" * 3000,
    }
    for name, data in wheels.items():
        (folder / name).write_bytes(data)
    return wheels


def test_carry_folders_fit_and_parts_join_back(tmp_path: Path) -> None:
    gc = _module()
    wheels = _fake_wheels(tmp_path / "dl")
    into = tmp_path / ".whl"
    capacity = 10_000
    plan = gc.prepare_carry(tmp_path / "dl", into, capacity=capacity)
    folders = sorted((p for p in into.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    assert [sorted(x.name for x in f.iterdir()) for f in folders] == plan
    assert len(folders) >= 4  # 25,600 bytes of parts + 4,000 of wheels, 10,000 a call
    for f in folders:
        assert sum(x.stat().st_size for x in f.iterdir()) <= capacity
        assert (f / "big-1.0-py3-none-any.whl.manifest.json").is_file()
    assert not [p for p in into.iterdir() if not p.name.isdigit()]  # no staging left
    # The device side: folders arrive one call at a time.
    stash = tmp_path / "stash"
    stash.mkdir()
    manifest = json.loads((folders[0] / "big-1.0-py3-none-any.whl.manifest.json").read_text())
    assert len(manifest["parts"]) == 5
    for folder in folders:
        for f in folder.iterdir():
            (stash / f.name).write_bytes(f.read_bytes())
        ready, missing = gc._join_parts(stash, stash / "joined")
        arrived = all((stash / p).is_file() for p in manifest["parts"])
        assert (missing == []) == arrived
        if not arrived:
            assert "missing part-" in missing[0]
            assert "big-1.0-py3-none-any.whl" not in {p.name for p in ready}
    assert missing == []
    assert sorted(p.name for p in ready) == sorted(wheels)
    for p in ready:
        assert hashlib.sha256(p.read_bytes()).digest() == hashlib.sha256(wheels[p.name]).digest()


def _carried(tmp_path: Path, calls: str) -> Path:
    """Fake wheels laid out for calls of 10,000 bytes; the files of ``calls`` (a glob
    such as "*" or "1") copied into a stash, as the device's calls would leave them."""
    _fake_wheels(tmp_path / "dl")
    _module().prepare_carry(tmp_path / "dl", tmp_path / ".whl", capacity=10_000)
    stash = tmp_path / "stash"
    stash.mkdir()
    for f in (tmp_path / ".whl").glob(f"{calls}/*"):
        (stash / f.name).write_bytes(f.read_bytes())
    return stash


def test_a_damaged_part_is_refused(tmp_path: Path) -> None:
    gc = _module()
    stash = _carried(tmp_path, "*")
    part = next(stash.glob("*.part-01"))
    part.write_bytes(b"x" + part.read_bytes()[1:])
    ready, missing = gc._join_parts(stash, stash / "joined")
    assert missing == ["big-1.0-py3-none-any.whl: the joined parts do not match its sha256"]
    assert "big-1.0-py3-none-any.whl" not in {p.name for p in ready}


def test_missing_parts_stop_the_run_before_anything_is_installed(tmp_path: Path) -> None:
    gc = _module()
    stash = _carried(tmp_path, "1")
    site = tmp_path / "site"
    out = tmp_path / "out"
    args = ["--wheels", str(stash), "--site", str(site), "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == gc.EXIT_WAITING, proc.stderr
    assert "waiting for wheel parts: big-1.0-py3-none-any.whl" in (out / "log").read_text()
    assert not site.exists()


def test_a_wheel_repacked_as_xz_unpacks_to_its_files(tmp_path: Path) -> None:
    gc = _module()
    (tmp_path / "dl").mkdir()
    wheel = tmp_path / "dl" / "pkg-1.0-py3-none-any.whl"
    files = {
        "pkg/__init__.py": b"VALUE = 1\n" * 400,  # compresses: xz wins over deflate
        "pkg/lib.so": os.urandom(30_000),  # does not: the archive still needs parts
        "pkg-1.0.dist-info/METADATA": b"Name: pkg\nVersion: 1.0\n",
    }
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    plan = gc.prepare_carry(tmp_path / "dl", tmp_path / ".whl", capacity=12_000, xz=True)
    names = {n for call in plan for n in call}
    assert "pkg-1.0-py3-none-any.whl.tar.xz.part-00" in names
    assert not any(n.endswith(".whl.part-00") for n in names)
    stash = tmp_path / "stash"
    stash.mkdir()
    for f in (tmp_path / ".whl").glob("*/*"):
        (stash / f.name).write_bytes(f.read_bytes())
    ready, missing = gc._join_parts(stash, stash / "joined")
    assert missing == []
    assert [p.name for p in ready] == ["pkg-1.0-py3-none-any.whl.tar.xz"]
    site = tmp_path / "site"
    gc.unpack_xz(ready[0], site)
    assert {str(p.relative_to(site)): p.read_bytes() for p in site.rglob("*") if p.is_file()} == (
        files
    )


def test_the_wheel_list_matches_the_pinned_constraints() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from pin_cuda_libs import pins
    finally:
        sys.path.pop(0)
    wanted = pins((ROOT / "scripts" / "gpu_wheels.txt").read_text().splitlines())
    pinned = pins((ROOT / "constraints.txt").read_text().splitlines())
    assert "onnxruntime-gpu" in wanted and "skl2onnx" in wanted
    assert {name: pinned.get(name) for name in wanted} == wanted
