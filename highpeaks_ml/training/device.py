"""Where training runs: the ``training_device`` setting, decided once at start-up.

Only XGBoost trains on a GPU here (``device="cuda"``, with the ``hist``
tree method); scikit-learn cannot, and LightGBM stays on the CPU (its PyPI
wheel's GPU support is OpenCL, not CUDA; docs/training.md says why).

``choose_training_device(settings)``:

- ``cpu``: CPU, no probing.
- ``auto``: CUDA when (1) XGBoost is installed, (2) the NVIDIA driver
  library loads, ``cuInit`` succeeds and it reports at least one device, and
  (3) the installed XGBoost was built with CUDA (the ``xgboost`` wheel; the
  ``xgboost-cpu`` wheel is not); otherwise CPU. Checks (1) and (2) are cheap
  and silent and need no CUDA context; (3) imports XGBoost, and only runs
  when (1) and (2) pass.
- ``cuda``: the same checks; when one fails, start-up fails with
  ``errors.Unavailable`` naming the reason (as ``device=cuda`` does for serving).

One log line says which device training uses and why. The choice is recorded
with every trained version (``VersionMeta.training_device``): ``cuda`` only
for XGBoost versions trained on the GPU, ``cpu`` for everything else.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
from dataclasses import dataclass

from highpeaks_ml.config import Device, Settings
from highpeaks_ml.errors import Unavailable

log = logging.getLogger("highpeaks_ml.training")

CPU = "cpu"
CUDA = "cuda"


@dataclass(frozen=True)
class TrainingDeviceChoice:
    """The device GPU-capable algorithms train on, and why."""

    device: str
    reason: str


def cuda_devices() -> tuple[int, str]:
    """(number of CUDA devices the driver reports, why none when 0); silent, no context."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "no NVIDIA driver (libcuda.so.1 not found)"
    try:
        status = libcuda.cuInit(0)
        if status != 0:
            return 0, f"the NVIDIA driver did not initialise (cuInit error {status})"
        count = ctypes.c_int(0)
        status = libcuda.cuDeviceGetCount(ctypes.byref(count))
    except AttributeError:  # pragma: no cover - a library that is not the CUDA driver
        return 0, "libcuda.so.1 is not a CUDA driver library"
    if status != 0:
        return 0, f"the NVIDIA driver could not count devices (error {status})"
    if count.value < 1:
        return 0, "the NVIDIA driver sees no GPU"
    return count.value, ""


def xgboost_has_cuda() -> tuple[bool, str]:
    """Whether the installed XGBoost was built with CUDA, and why not when it was not."""
    if importlib.util.find_spec("xgboost") is None:
        return False, "XGBoost is not installed"
    import xgboost

    if not xgboost.build_info().get("USE_CUDA", False):
        return False, "this XGBoost build has no CUDA support (the xgboost-cpu wheel)"
    return True, ""


def probe_cuda_training() -> tuple[bool, str]:
    """Whether XGBoost can train on a GPU here, with the reason either way."""
    if importlib.util.find_spec("xgboost") is None:
        return False, "XGBoost is not installed"
    count, why = cuda_devices()
    if count == 0:
        return False, why
    ok, why = xgboost_has_cuda()
    if not ok:
        return False, why
    return True, f"{count} CUDA device(s) and a CUDA build of XGBoost"


def choose_training_device(settings: Settings) -> TrainingDeviceChoice:
    """Decide the training device for ``settings.training_device`` and log it in one line.

    Raises ``Unavailable`` for ``training_device=cuda`` when CUDA training is not usable.
    """
    wanted = Device(settings.training_device)
    if wanted == Device.CPU:
        choice = TrainingDeviceChoice(CPU, "training_device=cpu")
    else:
        ok, why = probe_cuda_training()
        if ok:
            choice = TrainingDeviceChoice(CUDA, f"training_device={wanted.value}: {why}")
        elif wanted == Device.CUDA:
            raise Unavailable(f"training_device=cuda but CUDA training is not usable: {why}")
        else:
            choice = TrainingDeviceChoice(CPU, f"training_device=auto: CUDA not usable ({why})")
    log.info(
        "training device %s (%s); only XGBoost uses a GPU",
        choice.device,
        choice.reason,
        extra={"training_device": choice.device},
    )
    return choice


__all__ = [
    "CPU",
    "CUDA",
    "TrainingDeviceChoice",
    "choose_training_device",
    "cuda_devices",
    "probe_cuda_training",
    "xgboost_has_cuda",
]
