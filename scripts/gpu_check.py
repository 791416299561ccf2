#!/usr/bin/env python
"""GPU check: serve on the CUDA execution provider end to end and measure it against the CPU.

    python scripts/gpu_check.py --device cuda --out DIR   # a machine with an NVIDIA GPU
    python scripts/gpu_check.py --device cpu --out DIR    # CPU only (1.5-3.5 min on 2 cores)
    python scripts/gpu_check.py --device cpu --tiny --out DIR  # CI size (~15 s)
    sh scripts/gpu_check.sh                               # on the device tool (docs/gpu.md)
    python scripts/gpu_check.py --prepare-carry .whl/dl --into .whl --xz  # wheels -> calls

One run, bounded by ``--budget-s`` (default 330 s, installation included, so
it ends within 6 minutes):

1. Environment. With ``--wheels DIR`` it first installs every wheel in DIR
   (``pip install --no-index --no-deps --target SITE``; a wheel carried in
   parts is joined and checked against its manifest first) and runs itself
   again with SITE first on PYTHONPATH and the NVIDIA wheels' libraries
   reachable. It reports the versions (python, onnxruntime and its build,
   numpy, scikit-learn, skl2onnx, onnx, grpcio, protobuf),
   ``onnxruntime.get_available_providers()``, ``nvidia-smi``'s device and
   driver, what ``onnxruntime.preload_dlls()`` loaded, and the server's own
   CUDA probe.
2. Correctness. Trains an MLP classifier and a 300-tree random forest on
   generated data *in this process*, exports them with skl2onnx and imports
   them through the registry API (ImportModel) of a server started as a
   subprocess with ``--device cuda`` (then ``--device cpu``). Importing rather
   than training through TrainService: the same ONNX bytes go to every
   server and to the in-process reference, training time does not eat the
   budget, and the data and models are fixed by their seeds. Over gRPC it
   checks that each version's metadata (GetModelVersion) and each response
   name the expected execution provider, and that the served labels and
   probabilities equal an in-process onnxruntime CPU session's on the same
   bytes within docs/training.md's tolerance (|p| <= 1e-4; labels identical
   except on ties), for one large request and for concurrent batch-1
   requests merged by dynamic batching.
3. Speed. Rows/s for batch sizes 1, 256, 8,192 and 65,536 (one caller,
   unary, batching off), next to onnxruntime in this process with the
   server's session options on the same provider (the two take turns call by
   call, so drift hits both alike); and rows/s with 32
   concurrent batch-1 unary callers with dynamic batching off, on with delay
   0 (opportunistic) and on with a 1,000 us delay. CUDA and CPU run the same
   code, models, requests and client, one server at a time (never two
   servers competing for the cores); only ``--device`` differs. Where the
   nodes of each model run (CUDA or CPU fallback) is read from an
   onnxruntime profile.
4. Training (before the serving phases): XGBoost ``hist`` fit seconds on
   generated data (1,000,000 rows x 50 features, the catalogue's defaults of
   100 trees of depth 6; ``--tiny``: 2,000 x 10, 5 trees) with
   ``device="cuda"`` and with ``device="cpu"`` (every usable core), in this
   process, and the CPU/CUDA fit-time ratio. Needs XGBoost (the CUDA build
   for the CUDA row, ``xgboost`` in scripts/gpu_wheels.txt); a missing one is
   listed under ``skipped``, not failed.
5. Output under ``--out`` (else ``$OUT``): results.json, results.txt (the
   tables) and log (this run and every server's log). Exit status 0 when
   every check passed, 1 when one failed, 3 while carried wheel parts are
   still missing (``--wheels``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
EXIT_WAITING = 3
#: Start of the whole run (seconds since the epoch), handed to the re-executed process.
T0_ENV = "HIGHPEAKS_GPU_CHECK_T0"
#: What one device call may carry (docs/gpu.md): the working tree and the carried paths.
CALL_LIMIT = 64 << 20
MIB = 1 << 20
_MANIFEST_ROOM = 4096
XZ_SUFFIX = ".tar.xz"
#: Offline, exactly the given files, nothing compiled or cached.
_PIP_INSTALL = (
    "install",
    "-q",
    "--upgrade",
    "--no-index",
    "--no-deps",
    "--no-compile",
    "--no-cache-dir",
)

log = logging.getLogger("gpu_check")


@dataclass(frozen=True)
class Plan:
    """Sizes and timings of one run (full, or --tiny for CI)."""

    train_rows: int
    check_rows: int
    features: int
    classes: int
    mlp_hidden: tuple[int, ...]
    mlp_iter: int
    trees: int
    depth: int
    batch_sizes: tuple[int, ...]
    clients: int
    delays_us: tuple[int, ...]
    unary_s: float  # measurement window per (model, batch size): served and in-process in turns
    rate_s: float  # measurement window per concurrency case
    min_calls: int
    batched_rows: int  # concurrent batch-1 requests checked against the reference
    # XGBoost training measurement: generated rows x features, trees, depth.
    xgb_rows: int = 1_000_000
    xgb_features: int = 50
    xgb_trees: int = 100
    xgb_depth: int = 6


FULL = Plan(
    train_rows=20_000,
    check_rows=2_000,
    features=20,
    classes=3,
    mlp_hidden=(256, 256),
    mlp_iter=20,
    trees=300,
    depth=10,
    batch_sizes=(1, 256, 8_192, 65_536),
    clients=32,
    delays_us=(0, 1000),
    unary_s=2.0,
    rate_s=3.0,
    min_calls=3,
    batched_rows=128,
)
TINY = Plan(
    train_rows=600,
    check_rows=100,
    features=8,
    classes=3,
    mlp_hidden=(16,),
    mlp_iter=30,
    trees=5,
    depth=4,
    batch_sizes=(1, 16, 256, 1024),
    clients=4,
    delays_us=(0,),
    unary_s=0.15,
    rate_s=0.3,
    min_calls=2,
    batched_rows=16,
    xgb_rows=2_000,
    xgb_features=10,
    xgb_trees=5,
    xgb_depth=4,
)


class Budget:
    """Wall-clock budget of the whole run, counted from the first process's start."""

    def __init__(self, seconds: float) -> None:
        self.t0 = float(os.environ.get(T0_ENV) or time.time())
        self.deadline = self.t0 + seconds

    def elapsed(self) -> float:
        return time.time() - self.t0

    def left(self, until: float | None = None) -> float:
        return min(self.deadline, until or self.deadline) - time.time()


# --- wheels: prepare the carry here, join and install there ----------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MIB):
            h.update(block)
    return h.hexdigest()


def _tree_bytes() -> int:
    """Bytes of the working tree a device call sends (tracked + untracked, not ignored)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    total = 0
    for name in out.decode().split("\0"):
        p = ROOT / name
        if name and p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def _repack_xz(wheel: Path, target: Path) -> None:
    """The files of ``wheel`` as an xz-compressed tar: onnxruntime-gpu's CUDA library
    shrinks far more under LZMA than under the wheel's deflate (256 MB -> 204 MB)."""
    import tarfile
    import zipfile

    with zipfile.ZipFile(wheel) as zf, tarfile.open(target, "w:xz", preset=6) as tf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            entry = tarfile.TarInfo(info.filename)
            entry.size = info.file_size
            entry.mode = (info.external_attr >> 16) & 0o777 or 0o644
            with zf.open(info) as f:
                tf.addfile(entry, f)


def prepare_carry(
    src: Path, into: Path, capacity: int | None = None, margin: int = 4 * MIB, xz: bool = False
) -> list[list[str]]:
    """Lay the wheels of ``src`` out as ``into/1``, ``into/2``, ...: one folder per device call.

    Each folder holds at most ``capacity`` bytes (default: what one call may
    carry beside the working tree, CALL_LIMIT, less ``margin`` for files added
    to the tree before the call). A larger wheel is cut into parts, with a
    ``<wheel>.manifest.json`` (size, sha256, part names) that travels in
    every folder, so the device side can tell what is still missing; with
    ``xz`` it is first repacked as ``<wheel>.tar.xz`` (fewer calls; the device
    side unpacks it into the site folder instead of running pip on it).
    Returns the file names per call.
    """
    if capacity is None:
        capacity = CALL_LIMIT - _tree_bytes() - margin
    wheels = sorted(src.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"no .whl files in {src}")
    into.mkdir(parents=True, exist_ok=True)
    for old in into.glob("*"):
        if old.is_dir() and old.name.isdigit():
            shutil.rmtree(old)
    staging = Path(tempfile.mkdtemp(prefix="hp-carry-", dir=into))
    manifests: list[Path] = []
    items: list[Path] = []
    part_size = capacity - _MANIFEST_ROOM  # the manifests travel beside each part
    for wheel in wheels:
        if wheel.stat().st_size <= part_size:
            items.append(wheel)
            continue
        packed = wheel
        if xz:
            packed = staging / f"{wheel.name}{XZ_SUFFIX}"
            _repack_xz(wheel, packed)
        size = packed.stat().st_size
        parts = []
        with open(packed, "rb") as f:
            for i in range(0, size, part_size):
                part = staging / f"{packed.name}.part-{i // part_size:02d}"
                part.write_bytes(f.read(part_size))
                parts.append(part.name)
                items.append(part)
        manifest = staging / f"{wheel.name}.manifest.json"
        manifest.write_text(
            json.dumps(
                {
                    "wheel": wheel.name,
                    "file": packed.name,
                    "size": size,
                    "sha256": _sha256(packed),
                    "parts": parts,
                }
            )
        )
        manifests.append(manifest)
        if packed != wheel:
            packed.unlink()
    room = capacity - sum(m.stat().st_size for m in manifests)
    calls: list[list[Path]] = []
    loads: list[int] = []
    for item in sorted(items, key=lambda p: -p.stat().st_size):  # first fit, largest first
        size = item.stat().st_size
        for i, load in enumerate(loads):
            if load + size <= room:
                calls[i].append(item)
                loads[i] += size
                break
        else:
            calls.append([item])
            loads.append(size)
    plan = []
    for i, files in enumerate(calls, start=1):
        folder = into / str(i)
        folder.mkdir(parents=True)
        for item in [*files, *manifests]:
            target = folder / item.name
            if item.parent == staging and item not in manifests:
                item.rename(target)
            else:
                shutil.copy2(item, target)
        plan.append(sorted(p.name for p in folder.iterdir()))
    shutil.rmtree(staging)
    return plan


def _join_parts(stash: Path, joined: Path) -> tuple[list[Path], list[str]]:
    """Wheels (and repacked ``.whl.tar.xz``) ready in ``stash``, parts joined into ``joined``,
    and what is still missing."""
    ready = sorted([*stash.glob("*.whl"), *stash.glob(f"*.whl{XZ_SUFFIX}")])
    missing: list[str] = []
    for manifest_path in sorted(stash.glob("*.manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        wheel = joined / manifest.get("file", manifest["wheel"])
        absent = [p for p in manifest["parts"] if not (stash / p).is_file()]
        if absent:
            have = len(manifest["parts"]) - len(absent)
            missing.append(
                f"{manifest['wheel']}: {have} of {len(manifest['parts'])} parts here,"
                f" missing {', '.join(p.rsplit('.', 1)[-1] for p in absent)}"
            )
            continue
        if not (wheel.is_file() and wheel.stat().st_size == manifest["size"]):
            joined.mkdir(parents=True, exist_ok=True)
            with open(wheel, "wb") as out:
                for p in manifest["parts"]:
                    with open(stash / p, "rb") as part:
                        shutil.copyfileobj(part, out, 16 * MIB)
        if _sha256(wheel) != manifest["sha256"]:
            wheel.unlink()
            missing.append(f"{manifest['wheel']}: the joined parts do not match its sha256")
            continue
        ready.append(wheel)
    return ready, missing


def unpack_xz(archive: Path, site: Path) -> None:
    """Install a repacked wheel: its files straight into ``site`` (as pip --target would)."""
    import tarfile

    with tarfile.open(archive, "r:xz") as tf:
        if hasattr(tarfile, "data_filter"):
            tf.extractall(site, filter="data")
        else:  # pragma: no cover - Python < 3.11.4
            tf.extractall(site)  # our own archive, checked by its sha256


def _nvidia_dirs() -> list[Path]:
    """``nvidia`` package folders (the CUDA/cuDNN wheels) of this Python's site-packages."""
    import site

    seen: list[Path] = []
    for p in [*site.getsitepackages(), site.getusersitepackages(), *sys.path]:
        d = Path(p) / "nvidia"
        if d.is_dir() and d.resolve() not in [s.resolve() for s in seen]:
            seen.append(d)
    return seen


def install_and_reexec(args: argparse.Namespace, out: Path) -> int:
    """Install the wheels of ``--wheels`` into ``--site`` and run this script again over them."""
    stash = Path(args.wheels)
    site = Path(args.site)
    ready, missing = _join_parts(stash, stash / "joined")
    if missing:
        for line in missing:
            log.info("waiting for wheel parts: %s", line)
        log.info("carry the remaining .whl/N folders (docs/gpu.md); nothing was run")
        return EXIT_WAITING
    stamp = site / ".highpeaks-installed"
    wanted = "\n".join(f"{w.name} {w.stat().st_size}" for w in sorted(ready, key=lambda p: p.name))
    if stamp.is_file() and stamp.read_text() == wanted:
        log.info("wheels already installed in %s", site)
    elif ready:
        log.info("installing %d wheels into %s", len(ready), site)
        t = time.monotonic()
        wheels = [str(w) for w in ready if w.name.endswith(".whl")]
        pip = subprocess.run(
            [sys.executable, "-m", "pip", *_PIP_INSTALL, "--target", str(site), *wheels],
            capture_output=True,
            text=True,
        )
        if pip.returncode != 0:
            log.error("pip install failed:\n%s%s", pip.stdout, pip.stderr)
            return 1
        for archive in ready:
            if archive.name.endswith(XZ_SUFFIX):
                unpack_xz(archive, site)
        stamp.write_text(wanted)
        log.info("installed in %.1f s: %s", time.monotonic() - t, " ".join(w.name for w in ready))
    env = dict(os.environ)  # carries T0_ENV: the budget counts the installation too
    env["PYTHONPATH"] = os.pathsep.join(
        [str(site), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env["PYTHONUNBUFFERED"] = "1"
    nvidia = _nvidia_dirs()
    if nvidia and not (site / "nvidia").exists():
        # onnxruntime.preload_dlls() looks for nvidia/<pkg>/lib beside the onnxruntime
        # package it belongs to; the CUDA wheels live in the image's site-packages.
        (site / "nvidia").symlink_to(nvidia[0], target_is_directory=True)
        log.info("linked %s -> %s for onnxruntime.preload_dlls()", site / "nvidia", nvidia[0])
    lib_dirs = [str(lib) for d in nvidia for lib in sorted(d.glob("*/lib")) if lib.is_dir()]
    if lib_dirs:
        # The fallback if preloading misses one: the dynamic loader's own search path.
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [*lib_dirs, *filter(None, [os.environ.get("LD_LIBRARY_PATH")])]
        )
    argv = [sys.executable, str(Path(__file__).resolve()), *_forward(args, out)]
    logging.shutdown()
    return subprocess.run(argv, env=env, check=False).returncode


def _forward(args: argparse.Namespace, out: Path) -> list[str]:
    """The command-line flags of this run, minus the installation step."""
    argv = ["--device", args.device, "--out", str(out), "--budget-s", str(args.budget_s)]
    if args.tiny:
        argv.append("--tiny")
    if args.batch_sizes:
        argv += ["--batch-sizes", args.batch_sizes]
    return argv


# --- environment -----------------------------------------------------------------


def _nvidia_smi() -> dict[str, Any]:
    exe = shutil.which("nvidia-smi") or next(
        (
            p
            for p in ("/usr/local/nvidia/bin/nvidia-smi", "/usr/bin/nvidia-smi")
            if Path(p).is_file()
        ),
        None,
    )
    if exe is None:
        return {"error": "nvidia-smi not found"}
    try:
        query = subprocess.run(
            [
                exe,
                "--query-gpu=name,driver_version,memory.total,compute_cap",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        header = subprocess.run([exe], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}
    if query.returncode != 0:
        return {"error": (query.stderr or query.stdout).strip()[:300]}
    name, driver, memory, cap = ([*query.stdout.strip().splitlines()[0].split(", "), "", ""])[:4]
    cuda = header.split("CUDA Version:")[1].split()[0] if "CUDA Version:" in header else ""
    return {"name": name, "driver": driver, "memory": memory, "compute_cap": cap, "cuda": cuda}


def _loaded_cuda_libraries() -> list[str]:
    """CUDA/cuDNN shared libraries mapped into this process (Linux)."""
    keys = ("libcublas", "libcudart", "libcudnn", "libcurand", "libcufft", "libnvrtc")
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    found = {line.split()[-1] for line in maps.splitlines() if any(k in line for k in keys)}
    return sorted(found)


def environment(device: str) -> dict[str, Any]:
    """Versions, providers, the GPU and what preloading the CUDA libraries did."""
    import grpc
    import numpy as np
    import onnx
    import onnxruntime as ort
    import skl2onnx
    import sklearn
    from google import protobuf

    from highpeaks_ml.serving.providers import _captured_output, probe_cuda, usable_cores

    build: Any = None
    with contextlib.suppress(ImportError):
        build = importlib.import_module("onnxruntime.capi.build_and_package_info")
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_cores_usable": usable_cores(),
        "versions": {
            "onnxruntime": ort.__version__,
            "onnxruntime_package": getattr(build, "package_name", ""),
            "onnxruntime_cuda_build": getattr(build, "cuda_version", ""),
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnx": onnx.__version__,
            "grpcio": grpc.__version__,
            "protobuf": protobuf.__version__,
        },
        "onnxruntime_path": str(Path(ort.__file__).parent),
        "ld_library_path": os.environ.get("LD_LIBRARY_PATH", ""),
        "available_providers": list(ort.get_available_providers()),
        "nvidia_smi": _nvidia_smi(),
    }
    if device == "cuda":
        preload = getattr(ort, "preload_dlls", None)
        text = ""
        if preload is not None:
            with _captured_output() as captured:
                try:
                    preload()
                except Exception as exc:  # reported, the probe below decides
                    print(f"preload_dlls raised {exc!r}")
            text = captured[0]
        env["preload_dlls"] = {
            "called": preload is not None,
            "output": text.strip()[-2000:],
            "loaded": _loaded_cuda_libraries(),
        }
        ok, why = probe_cuda()
        env["cuda_probe"] = {"usable": ok, "reason": why}
    return env


# --- models and the reference ---------------------------------------------------


@dataclass
class Model:
    """One exported model with its reference (in-process CPU) predictions."""

    name: str
    kind: str
    onnx: bytes
    X: Any  # check rows (float32)
    labels: Any
    probabilities: Any
    info: dict[str, Any] = field(default_factory=dict)


_SHOWN_PARAMS = {"hidden_layer_sizes", "max_iter", "n_estimators", "max_depth"}


def build_models(plan: Plan) -> dict[str, Model]:
    """Train the MLP and the forest on generated data, export, predict the check rows on CPU."""
    import numpy as np
    from bench_serving import _export
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    X, y = make_classification(
        n_samples=plan.train_rows + plan.check_rows,
        n_features=plan.features,
        n_informative=max(2, plan.features * 3 // 5),
        n_classes=plan.classes,
        random_state=0,
    )
    X = X.astype(np.float32)
    X_train, y_train, X_check = X[: plan.train_rows], y[: plan.train_rows], X[plan.train_rows :]
    estimators = {
        "gpu-mlp": (
            "mlp",
            MLPClassifier(
                hidden_layer_sizes=plan.mlp_hidden, max_iter=plan.mlp_iter, random_state=0
            ),
        ),
        "gpu-forest": (
            "random_forest",
            RandomForestClassifier(
                n_estimators=plan.trees, max_depth=plan.depth, random_state=0, n_jobs=-1
            ),
        ),
    }
    models = {}
    for name, (kind, est) in estimators.items():
        t = time.monotonic()
        with warnings.catch_warnings():
            # A fixed, short training: convergence is not the point of this check.
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X_train, y_train)
        fit_s = time.monotonic() - t
        onnx = _export(est, plan.features)
        labels, proba = _session(onnx, "cpu").run(None, {"input": X_check})
        models[name] = Model(name, kind, onnx, X_check, labels, proba)
        models[name].info = {
            "kind": kind,
            "params": {k: v for k, v in est.get_params().items() if k in _SHOWN_PARAMS},
            "onnx_bytes": len(onnx),
            "fit_s": round(fit_s, 2),
            "export_s": round(time.monotonic() - t - fit_s, 2),
        }
        log.info("model %s: %s, %d bytes of ONNX", name, models[name].info, len(onnx))
    return models


def training_data(plan: Plan) -> tuple[Any, Any]:
    """Generated rows for the XGBoost measurement: float32 features, a binary target
    that depends on a few of them (and noise), fixed by its seed."""
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.standard_normal((plan.xgb_rows, plan.xgb_features), dtype=np.float32)
    k = min(5, plan.xgb_features)
    score = X[:, :k].sum(axis=1) + 0.5 * X[:, k - 1] ** 2 + rng.standard_normal(plan.xgb_rows)
    return X, (score > 0.5).astype(np.int32)


def fit_xgboost(X: Any, y: Any, plan: Plan, device: str) -> dict[str, Any]:
    """One timed XGBClassifier fit (``hist``) on ``device``, after a small untimed
    warm-up fit there (CUDA context and kernels), with the device it really used."""
    import numpy as np
    from xgboost import XGBClassifier

    from highpeaks_ml.serving.providers import usable_cores

    threads = usable_cores()

    def model(trees: int) -> Any:
        return XGBClassifier(
            n_estimators=trees,
            max_depth=plan.xgb_depth,
            tree_method="hist",
            device=device,
            n_jobs=threads,
            random_state=0,
        )

    t = time.monotonic()
    model(2).fit(X[:1000], y[:1000])
    warm_s = time.monotonic() - t
    est = model(plan.xgb_trees)
    t = time.monotonic()
    est.fit(X, y)
    fit_s = time.monotonic() - t
    config = json.loads(est.get_booster().save_config())
    used = config.get("learner", {}).get("generic_param", {}).get("device", "?")
    est.set_params(device="cpu")  # predict on the host's copy of the data
    check = slice(0, min(len(y), 100_000))
    accuracy = float(np.mean(est.predict(X[check]) == y[check]))
    return {
        "device": device,
        "device_used": used,
        "rows": int(X.shape[0]),
        "features": int(X.shape[1]),
        "trees": plan.xgb_trees,
        "depth": plan.xgb_depth,
        "cpu_threads": threads,
        "warmup_s": round(warm_s, 3),
        "fit_s": round(fit_s, 3),
        "train_accuracy": round(accuracy, 4),
    }


def _session(
    onnx: bytes,
    device: str,
    cuda_options: dict[str, str] | None = None,
    profile_prefix: str | None = None,
) -> Any:
    """An in-process session with the server's own session options and providers."""
    import onnxruntime as ort

    from highpeaks_ml.config import Settings
    from highpeaks_ml.serving.providers import provider_list, session_options

    options = session_options(Settings.load({"device": device}))
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    providers = provider_list(CUDA if device == "cuda" else CPU)
    if cuda_options:
        providers[0] = (CUDA, {**providers[0][1], **cuda_options})
    return ort.InferenceSession(onnx, options, providers=providers)


def agreement(model: Model, labels: Any, proba: Any, rows: slice = slice(None)) -> dict[str, Any]:
    """Served outputs against the in-process CPU reference (docs/training.md tolerances)."""
    import numpy as np

    from highpeaks_ml.training.pipeline import PROBA_TOLERANCE, TIE_TOLERANCE

    ref_labels, ref_proba = model.labels[rows], model.probabilities[rows]
    if proba is None or labels is None or np.shape(proba) != np.shape(ref_proba):
        return {"rows": len(ref_labels), "agree": False, "error": "missing or misshaped outputs"}
    diff = np.abs(np.asarray(proba, np.float64) - ref_proba)
    top2 = np.sort(ref_proba.astype(np.float64), axis=1)[:, -2:]
    ties = (top2[:, 1] - top2[:, 0]) <= TIE_TOLERANCE * (1 + np.abs(top2[:, 1]))
    mismatch = np.asarray(labels).astype(str) != np.asarray(ref_labels).astype(str)
    max_diff = float(diff.max()) if diff.size else 0.0
    return {
        "rows": len(ref_labels),
        "max_abs_diff": max_diff,
        "tolerance": PROBA_TOLERANCE,
        "label_mismatches": int(mismatch.sum()),
        "tie_rows": int(ties.sum()),
        "label_mismatches_outside_ties": int((mismatch & ~ties).sum()),
        "agree": bool(max_diff <= PROBA_TOLERANCE and not (mismatch & ~ties).any()),
    }


def placement(model: Model, device: str) -> dict[str, Any]:
    """Which provider runs each node: an onnxruntime profile of one 256-row run."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = _session(model.onnx, device, profile_prefix=str(Path(tmp) / "profile"))
        for _ in range(2):
            sess.run(None, {"input": model.X[:256]})
        events = json.loads(Path(sess.end_profiling()).read_text())
    by_provider: dict[str, dict[str, Any]] = {}
    for ev in events:
        args = ev.get("args") or {}
        if ev.get("cat") != "Node" or "provider" not in args:
            continue
        slot = by_provider.setdefault(args["provider"], {"ops": set(), "kernel_us": 0})
        slot["ops"].add(args.get("op_name", "?"))
        slot["kernel_us"] += int(ev.get("dur", 0))
    result: dict[str, Any] = {
        "session_providers": list(sess.get_providers()),
        "nodes": {
            p: {"ops": sorted(v["ops"]), "kernel_us": v["kernel_us"]}
            for p, v in by_provider.items()
        },
    }
    if device == "cuda":
        result["cuda_options"] = sess.get_provider_options().get(CUDA, {})
        # In-process CUDA against the CPU reference, with the serving options and
        # with TF32 matrix maths off: tells a precision gap from a serving bug.
        for label, extra in (("serving options", None), ("use_tf32=0", {"use_tf32": "0"})):
            key = f"inprocess_vs_cpu ({label})"
            try:
                labels, proba = _session(model.onnx, "cuda", extra).run(None, {"input": model.X})
                result[key] = agreement(model, labels, proba)
            except Exception as exc:  # a diagnostic: reported, never fatal
                result[key] = {"agree": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return result


# --- measurements ----------------------------------------------------------------


def _timed(calls: list[Any], window: float, min_rounds: int, left: float) -> list[list[float]]:
    """Latencies of each of ``calls``, taking turns, over ``window`` seconds, after a warm-up.

    Taking turns (served, then in-process, then served ...) makes drift on a
    shared machine hit both alike. At least ``min_rounds`` rounds; stops after
    one round once ``left`` seconds (the time budget) have passed.
    """
    hard = time.perf_counter() + left
    for call in calls:
        call()
    out: list[list[float]] = [[] for _ in calls]
    end = time.perf_counter() + window
    while len(out[0]) < min_rounds or time.perf_counter() < end:
        for call, lat in zip(calls, out, strict=True):
            t = time.perf_counter()
            call()
            lat.append(time.perf_counter() - t)
        if time.perf_counter() > hard:
            break
    return out


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


async def _batched_predictions(target: str, name: str, X: Any) -> tuple[Any, Any, set[str]]:
    """Predict each row of ``X`` as its own concurrent request (so batching can merge them)."""
    import asyncio

    import numpy as np
    from grpc import aio

    from highpeaks_ml.client import PredictResult, build_request
    from highpeaks_ml.v1 import predict_pb2_grpc

    async with aio.insecure_channel(target) as ch:
        stub = predict_pb2_grpc.PredictServiceStub(ch)
        answers = await asyncio.gather(
            *(stub.Predict(build_request(name, X[i : i + 1]), timeout=60) for i in range(len(X)))
        )
    results = [PredictResult(a) for a in answers]
    labels = np.concatenate([r.labels for r in results])
    proba = np.concatenate([r.probabilities for r in results])
    return labels, proba, {r.execution_provider for r in results}


class Run:
    """One run: its plan, budget, results and the servers it has started."""

    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args = args
        self.out = out
        self.plan = TINY if args.tiny else FULL
        if args.batch_sizes:
            sizes = tuple(int(b) for b in args.batch_sizes.split(","))
            self.plan = replace(self.plan, batch_sizes=sizes)
        self.budget = Budget(args.budget_s)
        self.devices = ["cuda", "cpu"] if args.device == "cuda" else ["cpu"]
        self.tmp = Path(tempfile.mkdtemp(prefix="hp-gpu-check-"))
        self.home = self.tmp / "home"
        self.home.mkdir()
        self.servers: list[Any] = []
        self.imported = False
        self.results: dict[str, Any] = {
            "schema": 1,
            "mode": {"device": args.device, "tiny": bool(args.tiny), "budget_s": args.budget_s},
            "plan": asdict(self.plan),
            "environment": {},
            "models": {},
            "checks": [],
            "placement": [],
            "unary": [],
            "concurrent": [],
            "training": [],
            "ratios": [],
            "errors": [],
            "skipped": [],
            "passed": False,
            "elapsed_s": 0.0,
        }

    # --- bookkeeping ---

    def write(self) -> None:
        """Write results.json and results.txt (after every step: a cut-off run keeps its data)."""
        self.results["elapsed_s"] = round(self.budget.elapsed(), 1)
        self.results["ratios"] = ratios(self.results)
        self.results["passed"] = passed(self.results)
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=2, default=str) + "\n")
        tmp.replace(self.out / "results.json")
        (self.out / "results.txt").write_text(text_report(self.results) + "\n")

    def skip(self, what: str, until: float | None, need: float) -> bool:
        """True (and recorded) when ``what`` would not fit in the time left."""
        left = self.budget.left(until)
        if left >= need:
            return False
        self.results["skipped"].append(f"{what}: {left:.0f} s left, needs about {need:.0f} s")
        log.info("skipped %s (time budget)", what)
        return True

    def error(self, what: str, exc: BaseException | str) -> None:
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        self.results["errors"].append(f"{what}: {text}")
        log.error("%s: %s", what, text)

    def start_server(self, device: str, *extra: str) -> Any:
        """A server on this run's home, without the log line per RPC; it
        inherits this process's environment (the re-executed run's PYTHONPATH and
        LD_LIBRARY_PATH with the installed wheels)."""
        from highpeaks_ml.launcher import ServerProcess

        server = ServerProcess(self.home, "--rpc-log", "off", *extra, device=device)
        self.servers.append(server)
        return server

    def stop_server(self, server: Any, label: str) -> None:
        with contextlib.suppress(Exception):
            server.stop(grace_s=20)
        if server in self.servers:
            self.servers.remove(server)
        self._append_log(server.log_path, label)

    def _append_log(self, path: Path, label: str) -> None:
        """Move a server's log into ours (a failed start's log says why)."""
        text = path.read_text(errors="replace") if path.is_file() else "(no log)\n"
        with open(self.out / "log", "a") as f:
            f.write(f"\n---- server log: {label} ----\n{text}---- end of server log ----\n")
        path.unlink(missing_ok=True)

    def abort(self) -> None:
        """Time is up: stop the servers, keep what was measured, exit."""
        log.error("time budget exceeded: stopping")
        self.results["errors"].append("time budget exceeded: the run was cut off")
        for server in list(self.servers):
            with contextlib.suppress(Exception):
                server.proc.kill()
        with contextlib.suppress(Exception):
            self.write()
        logging.shutdown()
        os._exit(1)

    # --- the run ---

    def main(self) -> int:
        watchdog = threading.Timer(max(1.0, self.budget.left() + 15), self.abort)
        watchdog.daemon = True
        watchdog.start()
        try:
            self.results["environment"] = environment(self.args.device)
            log.info("environment: %s", json.dumps(self.results["environment"]))
            self.write()
            if self.skip("everything after the environment report", None, 60):
                return self.finish()
            models = build_models(self.plan)
            self.results["models"] = {m.name: m.info for m in models.values()}
            self.write()
            self.training_phase()
            self.write()
            requests = self.requests(models)
            for i, device in enumerate(self.devices):
                # The CUDA phase may take at most ~55% of what is left, so the CPU
                # baseline always gets its turn.
                last = i == len(self.devices) - 1
                until = None if last else time.time() + 0.55 * self.budget.left()
                self.device_phase(device, models, requests, until)
        except Exception as exc:
            self.error("run", exc)
        finally:
            for server in list(self.servers):
                self.stop_server(server, "left running")
            watchdog.cancel()
        return self.finish()

    def finish(self) -> int:
        self.write()
        log.info("results:\n%s", text_report(self.results))
        return 0 if self.results["passed"] else 1

    def training_phase(self) -> None:
        """XGBoost ``hist`` fit seconds, CUDA (``--device cuda``) then CPU, in this process."""
        plan = self.plan
        try:
            import xgboost
        except ImportError:
            self.results["skipped"].append("training: XGBoost is not installed")
            return
        cuda_build = bool(xgboost.build_info().get("USE_CUDA", False))
        self.results["environment"]["versions"]["xgboost"] = xgboost.__version__
        self.results["environment"]["xgboost_cuda_build"] = cuda_build
        X, y = training_data(plan)
        for device in self.devices:
            if device == "cuda" and not cuda_build:
                self.results["skipped"].append(
                    "training on cuda: this XGBoost build has no CUDA (carry the xgboost wheel)"
                )
                continue
            # Rough need: the CPU fit of the full size takes ~20 s on 16 cores.
            if self.skip(f"training on {device}", None, 5 if self.args.tiny else 30):
                continue
            try:
                row = fit_xgboost(X, y, plan, device)
            except Exception as exc:
                self.error(f"training on {device}", exc)
                continue
            self.results["training"].append(row)
            log.info("training: %s", row)
            self.write()

    def requests(self, models: dict[str, Model]) -> dict[str, dict[int, bytes]]:
        """Serialised raw requests per model and batch size (the same bytes for every server)."""
        import numpy as np
        from bench_serving import _request

        sizes = sorted({1, *self.plan.batch_sizes})  # 1: the concurrent callers' request
        return {
            name: {
                b: _request(name, np.resize(m.X, (b, self.plan.features)).astype(np.float32))
                for b in sizes
            }
            for name, m in models.items()
        }

    def device_phase(
        self,
        device: str,
        models: dict[str, Model],
        requests: dict[str, dict[int, bytes]],
        until: float | None,
    ) -> None:
        """Checks and measurements of one device: batching off, then each batching delay."""
        env = self.results["environment"]
        if device == "cuda" and not env.get("cuda_probe", {}).get("usable"):
            self.error("cuda", f"CUDA is not usable here: {env.get('cuda_probe')}")
        else:
            for m in models.values():
                if self.skip(f"{device} node placement of {m.name}", until, 5):
                    continue
                try:
                    self.results["placement"].append(
                        {"device": device, "model": m.name, **placement(m, device)}
                    )
                except Exception as exc:
                    self.error(f"{device} placement {m.name}", exc)
            self.write()
        configs: list[tuple[str, tuple[str, ...]]] = [("off", ("--no-batching",))]
        for delay in self.plan.delays_us:
            configs.append(
                (
                    f"on, delay {delay} us",
                    (
                        "--batching",
                        "--max-batch-size",
                        str(max(64, self.plan.clients)),
                        "--max-batch-delay-us",
                        str(delay),
                    ),
                )
            )
        for label, flags in configs:
            if self.skip(f"{device} server, batching {label}", until, 20):
                continue
            log.info("starting the %s server, batching %s", device, label)
            try:
                server = self.start_server(device, *flags)
            except Exception as exc:
                from highpeaks_ml.launcher import ServerStartError

                # The error says what happened; the server's whole log goes into ours.
                why = exc.reason if isinstance(exc, ServerStartError) else exc
                self.error(f"{device} server (batching {label}) did not start", why)
                for path in sorted(self.tmp.glob("server-*.log")):
                    self._append_log(path, f"failed start, device={device}, batching {label}")
                return  # the same device fails the same way with other flags
            try:
                if not self.imported:
                    from bench_serving import _import

                    _import(server.target, {m.name: (m.onnx, None, None) for m in models.values()})
                    self.imported = True
                if label == "off":
                    self.provider_checks(server.target, device, models)
                    self.unary(server.target, device, models, requests, until)
                else:
                    self.batched_checks(server.target, device, models, label)
                self.concurrent(server.target, device, models, requests, label, until)
            except Exception as exc:
                self.error(f"{device} batching {label}", exc)
            finally:
                self.stop_server(server, f"device={device}, batching {label}")
                self.write()

    def provider_checks(self, target: str, device: str, models: dict[str, Model]) -> None:
        """Each version's provider (metadata and response) and its predictions vs the reference."""
        from highpeaks_ml.client import Client
        from highpeaks_ml.v1 import registry_pb2

        expected = CUDA if device == "cuda" else CPU
        with Client(target, timeout=120) as c:
            for m in models.values():
                res = c.predict(m.name, m.X)
                ver = c.get_version(m.name)
                check = {
                    "device": device,
                    "model": m.name,
                    "version": ver.version,
                    "request": f"one request of {len(m.X)} rows",
                    "provider_expected": expected,
                    "provider_in_metadata": ver.execution_provider,
                    "provider_in_response": res.execution_provider,
                    "load_state": registry_pb2.LoadState.Name(ver.load_state),
                    "load_error": ver.load_error,
                    **agreement(m, res.labels, res.probabilities),
                }
                check["provider_ok"] = (
                    ver.execution_provider == expected and res.execution_provider == expected
                )
                check["passed"] = bool(check["provider_ok"] and check["agree"])
                self.results["checks"].append(check)
                log.info("check: %s", check)

    def batched_checks(
        self, target: str, device: str, models: dict[str, Model], label: str
    ) -> None:
        """Concurrent batch-1 requests (merged by dynamic batching) against the reference."""
        import asyncio

        expected = CUDA if device == "cuda" else CPU
        n = min(self.plan.batched_rows, self.plan.check_rows)
        for m in models.values():
            labels, proba, providers = asyncio.run(_batched_predictions(target, m.name, m.X[:n]))
            check = {
                "device": device,
                "model": m.name,
                "request": f"{n} concurrent batch-1 requests, batching {label}",
                "provider_expected": expected,
                "provider_in_response": ",".join(sorted(providers)),
                **agreement(m, labels, proba, slice(0, n)),
            }
            check["provider_ok"] = providers == {expected}
            check["passed"] = bool(check["provider_ok"] and check["agree"])
            self.results["checks"].append(check)
            log.info("check: %s", check)

    def unary(
        self,
        target: str,
        device: str,
        models: dict[str, Model],
        requests: dict[str, dict[int, bytes]],
        until: float | None,
    ) -> None:
        """Rows/s of one caller per batch size, served and in-process, on ``device``."""
        import numpy as np
        from bench_serving import PREDICT, _unary

        plan = self.plan
        ch, call = _unary(target, PREDICT)
        try:
            for m in models.values():
                sess = None
                try:
                    sess = _session(m.onnx, device)
                except Exception as exc:  # the served numbers still count
                    self.results["skipped"].append(f"{device} in-process {m.name}: {exc}"[:300])
                for b in plan.batch_sizes:
                    if self.skip(f"{device} unary {m.name} batch {b}", until, 2 * plan.unary_s + 2):
                        continue
                    req = requests[m.name][b]
                    calls = [lambda r=req: call(r)]
                    if sess is not None:
                        x = np.resize(m.X, (b, plan.features)).astype(np.float32)
                        calls.append(lambda x=x, s=sess: s.run(None, {"input": x}))
                    served, *local = _timed(
                        calls, plan.unary_s, plan.min_calls, self.budget.left(until)
                    )
                    row: dict[str, Any] = {
                        "device": device,
                        "model": m.name,
                        "batch": b,
                        "calls": len(served),
                        "p50_ms": round(_median(served) * 1e3, 3),
                        "rows_per_s": round(b / _median(served), 1),
                        "request_bytes": len(req),
                    }
                    if local:
                        row["inprocess_rows_per_s"] = round(b / _median(local[0]), 1)
                        row["served_share_of_inprocess"] = round(
                            row["rows_per_s"] / row["inprocess_rows_per_s"], 3
                        )
                    self.results["unary"].append(row)
                    log.info("unary: %s", row)
                    self.write()
        finally:
            ch.close()

    def concurrent(
        self,
        target: str,
        device: str,
        models: dict[str, Model],
        requests: dict[str, dict[int, bytes]],
        label: str,
        until: float | None,
    ) -> None:
        """Rows/s of ``clients`` concurrent batch-1 unary callers on this server."""
        import asyncio

        from bench_serving import PREDICT, _rate

        plan = self.plan
        for m in models.values():
            what = f"{device} {plan.clients} clients {m.name} batching {label}"
            if self.skip(what, until, plan.rate_s + 2):
                continue
            rate = asyncio.run(
                _rate(target, PREDICT, requests[m.name][1], plan.rate_s, False, plan.clients)
            )
            row = {
                "device": device,
                "model": m.name,
                "clients": plan.clients,
                "batch": 1,
                "batching": label,
                "rows_per_s": round(rate, 1),
            }
            self.results["concurrent"].append(row)
            log.info("concurrent: %s", row)
            self.write()


# --- summary ---------------------------------------------------------------------


def ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    """CUDA/CPU rows/s for every measurement made on both devices."""
    out = []
    for kind, key in (("unary", "batch"), ("concurrent", "batching")):
        by = {(r["device"], r["model"], r[key]): r["rows_per_s"] for r in results[kind]}
        for (device, model, k), cuda in by.items():
            cpu = by.get(("cpu", model, k))
            if device == "cuda" and cpu:
                what = (
                    f"unary batch {k}"
                    if kind == "unary"
                    else f"{results['plan']['clients']} batch-1 clients, batching {k}"
                )
                out.append(
                    {
                        "model": model,
                        "measure": what,
                        "cuda_rows_per_s": cuda,
                        "cpu_rows_per_s": cpu,
                        "cuda_over_cpu": round(cuda / cpu, 2),
                    }
                )
    fits = {r["device"]: r["fit_s"] for r in results.get("training", [])}
    if fits.get("cuda") and fits.get("cpu"):
        out.append(
            {
                "model": "xgboost hist",
                "measure": "training fit seconds (CPU / CUDA: how many times faster on CUDA)",
                "cuda_fit_s": fits["cuda"],
                "cpu_fit_s": fits["cpu"],
                "cpu_over_cuda": round(fits["cpu"] / fits["cuda"], 2),
            }
        )
    return out


def passed(results: dict[str, Any]) -> bool:
    """Every check ran and passed, on every device of the mode, without errors."""
    checks = results["checks"]
    devices = ["cuda", "cpu"] if results["mode"]["device"] == "cuda" else ["cpu"]
    ran = {c["device"] for c in checks}
    return bool(
        checks
        and all(c["passed"] for c in checks)
        and set(devices) <= ran
        and not results["errors"]
    )


def _table(rows: list[tuple[str, ...]], head: str) -> str:
    """bench_serving's markdown table; ``head`` is the column names joined by " | "."""
    from bench_serving import _table as table

    return table(rows, tuple(head.split(" | "))) if rows else "(none)"


def _num(x: Any) -> str:
    return f"{x:,.0f}" if isinstance(x, int | float) else "-"


def text_report(results: dict[str, Any]) -> str:
    """The results as text tables."""
    env = results.get("environment") or {}
    v = env.get("versions", {})
    smi = env.get("nvidia_smi", {})
    lines = [
        f"mode: device={results['mode']['device']} tiny={results['mode']['tiny']};"
        f" passed: {results['passed']}; elapsed {results['elapsed_s']} s",
        f"gpu: {smi.get('name') or smi.get('error', '-')}; driver {smi.get('driver', '-')};"
        f" CUDA (driver) {smi.get('cuda', '-')}",
        f"python {env.get('python', '-')}; onnxruntime {v.get('onnxruntime', '-')}"
        f" ({v.get('onnxruntime_package', '-')},"
        f" CUDA build {v.get('onnxruntime_cuda_build', '-')});"
        f" numpy {v.get('numpy', '-')}; scikit-learn {v.get('scikit-learn', '-')};"
        f" skl2onnx {v.get('skl2onnx', '-')}; onnx {v.get('onnx', '-')};"
        f" grpcio {v.get('grpcio', '-')}; protobuf {v.get('protobuf', '-')}",
        f"available providers: {', '.join(env.get('available_providers', [])) or '-'};"
        f" usable cores: {env.get('cpu_cores_usable', '-')}",
    ]
    if "cuda_probe" in env:
        lines.append(f"server's CUDA probe: {env['cuda_probe']}")
    lines += ["", "Checks (served vs in-process onnxruntime CPU on the same ONNX bytes):"]
    lines.append(
        _table(
            [
                (
                    c["device"],
                    c["model"],
                    c["request"],
                    f"{c.get('provider_in_metadata', '-')} / {c['provider_in_response']}",
                    f"{c.get('max_abs_diff', float('nan')):.2g} (tol {c.get('tolerance', '-')})",
                    f"{c.get('label_mismatches', '-')} ({c.get('tie_rows', '-')} tie rows)",
                    "PASS" if c["passed"] else "FAIL",
                )
                for c in results["checks"]
            ],
            "device | model | request | provider: metadata / response | max abs diff"
            " | label diffs | result",
        )
    )
    unary: dict[tuple[str, int], dict[str, Any]] = {}
    for r in results["unary"]:
        unary.setdefault((r["model"], r["batch"]), {})[r["device"]] = r
    rows = []
    for (model, b), d in unary.items():
        cuda, cpu = d.get("cuda", {}), d.get("cpu", {})
        ratio = f"{cuda['rows_per_s'] / cpu['rows_per_s']:.2f}x" if cuda and cpu else "-"
        rows.append(
            (
                model,
                f"{b:,}",
                _num(cuda.get("rows_per_s")),
                _num(cuda.get("inprocess_rows_per_s")),
                _num(cpu.get("rows_per_s")),
                _num(cpu.get("inprocess_rows_per_s")),
                ratio,
            )
        )
    lines += ["", "Rows/s, one caller, unary, batching off (served; in-process onnxruntime):"]
    lines.append(
        _table(
            rows,
            "model | batch | CUDA served | CUDA in-process | CPU served | CPU in-process"
            " | CUDA/CPU served",
        )
    )
    conc: dict[tuple[str, str], dict[str, float]] = {}
    for r in results["concurrent"]:
        conc.setdefault((r["model"], r["batching"]), {})[r["device"]] = r["rows_per_s"]
    clients = results["plan"]["clients"]
    rows = [
        (
            model,
            label,
            _num(d.get("cuda")),
            _num(d.get("cpu")),
            f"{d['cuda'] / d['cpu']:.2f}x" if d.get("cuda") and d.get("cpu") else "-",
        )
        for (model, label), d in conc.items()
    ]
    lines += ["", f"Rows/s, {clients} concurrent batch-1 unary clients:"]
    lines.append(_table(rows, "model | dynamic batching | CUDA | CPU | CUDA/CPU"))
    lines += ["", "Node placement (onnxruntime profile of a 256-row run):"]
    lines.append(
        _table(
            [
                (
                    p["device"],
                    p["model"],
                    "; ".join(
                        f"{prov}: {', '.join(n['ops'])} ({n['kernel_us']} us)"
                        for prov, n in p["nodes"].items()
                    ),
                )
                for p in results["placement"]
            ],
            "device | model | nodes per provider (kernel time)",
        )
    )
    diagnostics = [
        (
            p["model"],
            key.split("(", 1)[1].rstrip(")"),
            f"{v.get('max_abs_diff', float('nan')):.2g}",
            str(v.get("label_mismatches", "-")),
            "yes" if v.get("agree") else "no",
        )
        for p in results["placement"]
        for key, v in p.items()
        if key.startswith("inprocess_vs_cpu")
    ]
    if diagnostics:
        lines += ["", "In-process CUDA vs in-process CPU (check rows):"]
        head = "model | CUDA options | max abs diff | label diffs | within tolerance"
        lines.append(_table(diagnostics, head))
    plan = results["plan"]
    lines += [
        "",
        f"XGBoost training, hist, {plan.get('xgb_rows', 0):,} rows x"
        f" {plan.get('xgb_features', 0)} features, {plan.get('xgb_trees', 0)} trees of depth"
        f" {plan.get('xgb_depth', 0)} (in-process fit; warm-up fit not counted):",
    ]
    lines.append(
        _table(
            [
                (
                    r["device"],
                    r["device_used"],
                    f"{r['fit_s']:.2f}",
                    f"{r['warmup_s']:.2f}",
                    str(r["cpu_threads"]),
                    f"{r['train_accuracy']:.4f}",
                )
                for r in results.get("training", [])
            ],
            "device | device used | fit s | warm-up s | CPU threads | training accuracy",
        )
    )
    for r in results["ratios"]:
        if "cpu_over_cuda" in r:
            lines.append(f"CPU / CUDA fit time: {r['cpu_over_cuda']:.2f}x")
    for key in ("errors", "skipped"):
        if results[key]:
            lines += ["", f"{key}:", *(f"- {e}" for e in results[key])]
    return "\n".join(lines)


# --- entry point -----------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda",
        help="cuda: CUDA and the CPU baseline; cpu: the CPU alone (default cuda)",
    )
    p.add_argument(
        "--tiny", action="store_true", help="few rows, few trees, short windows: the CI size"
    )
    p.add_argument("--out", help="folder for results.json, results.txt and log (default $OUT)")
    p.add_argument("--wheels", help="install the wheels (and joined parts) of this folder first")
    p.add_argument(
        "--site",
        default="/tmp/highpeaks-site",
        help="where --wheels installs to (default /tmp/highpeaks-site)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=330.0,
        help="wall-clock budget of the whole run, installation included (default 330)",
    )
    p.add_argument("--batch-sizes", help="comma-separated batch sizes instead of the plan's")
    p.add_argument(
        "--prepare-carry",
        metavar="SRC",
        help="(here) split the wheels of SRC into per-call folders under --into",
    )
    p.add_argument("--into", default=".whl", help="with --prepare-carry (default .whl)")
    p.add_argument(
        "--xz",
        action="store_true",
        help="with --prepare-carry: repack split wheels as .tar.xz first (fewer calls)",
    )
    return p


def _logging(out: Path) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(out / "log")):
        handler.setFormatter(fmt)
        log.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault(T0_ENV, str(time.time()))
    if args.prepare_carry:
        plan = prepare_carry(Path(args.prepare_carry), Path(args.into), xz=args.xz)
        for i, files in enumerate(plan, start=1):
            size = sum((Path(args.into) / str(i) / f).stat().st_size for f in files) / MIB
            print(f"call {i}: carry {args.into}/{i} ({size:.1f} MiB): {' '.join(files)}")
        return 0
    out_dir = args.out or os.environ.get("OUT")
    if not out_dir:
        print("error: give --out DIR (or set OUT)", file=sys.stderr)
        return 2
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    _logging(out)
    if args.wheels:
        return install_and_reexec(args, out)
    # bench_serving's helpers (raw requests, concurrent callers, tables).
    sys.path.insert(0, str(ROOT / "scripts"))
    sys.path.insert(0, str(ROOT))
    log.info("gpu_check %s", " ".join(sys.argv[1:]))
    run = Run(args, out)
    try:
        return run.main()
    finally:
        shutil.rmtree(run.tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
