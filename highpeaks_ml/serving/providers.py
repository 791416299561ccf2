"""Execution-provider choice and onnxruntime session options.

``choose_provider(settings)`` decides once, at start-up, where models run:

- ``cpu``: CPUExecutionProvider, no probing.
- ``auto``: CUDAExecutionProvider when (1) this onnxruntime build offers it,
  (2) an NVIDIA driver is present (``libcuda.so.1`` loads) and (3) a probe
  session on a one-node ONNX graph really runs on it
  (``session.get_providers()[0] == "CUDAExecutionProvider"``) and returns the
  right answer; otherwise CPU. Checks (1) and (2) are silent and cheap; (3)
  runs with onnxruntime's logger muted and the process's stdout/stderr file
  descriptors captured, so a machine with onnxruntime-gpu but without CUDA
  libraries does not print onnxruntime's wall of load errors. One log line
  says which provider is used and why.
- ``cuda``: the same probe; when it fails, start-up fails with
  ``errors.Unavailable`` naming the reason.

``session_options(settings)`` and ``provider_list(provider)`` give what every
serving session is created with.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from highpeaks_ml.config import Device, GraphOptimization, Settings
from highpeaks_ml.errors import Unavailable

log = logging.getLogger("highpeaks_ml.serving")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# onnxruntime logger severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal.
_ORT_DEFAULT_SEVERITY = 2
_ORT_QUIET = 4


@dataclass(frozen=True)
class ProviderChoice:
    """The execution provider in use and why it was chosen."""

    provider: str
    reason: str


def usable_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def _captured_output() -> Iterator[list[str]]:
    """Redirect fds 1 and 2 (C and Python writers alike) to a temporary file.

    Yields a list that holds the captured text once the block has ended. Only
    used during the start-up probe, before the server handles requests.
    """
    captured: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            os.dup2(tmp.fileno(), 1)
            os.dup2(tmp.fileno(), 2)
            yield captured
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            tmp.seek(0)
            captured.append(tmp.read().decode("utf-8", "replace"))


def _probe_model() -> bytes:
    """A one-node ONNX graph (y = x + x) for the probe session."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "highpeaks_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every onnxruntime >= 1.14
    return bytes(model.SerializeToString())


_NOISE = re.compile(r"\x1b\[[0-9;]*m")
_PATHISH = re.compile(r"(?:/[\w.+-]+){2,}/?")


def _first_reason(text: str) -> str:
    """The most telling line of onnxruntime's captured complaints, without paths."""
    lines = [_NOISE.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    for key in ("cannot open shared object", "Failed to load", "CUDA failure", "cuda", "CUDA"):
        for line in lines:
            if key in line:
                # Keep the part after the last "error:" or "] " marker: the cause.
                cause = re.split(r"with error: |\] ", line)[-1]
                return _PATHISH.sub("<path>", cause)[:200]
    return "the CUDA provider could not create a session"


def _driver_present() -> tuple[bool, str]:
    """Whether the NVIDIA driver library loads (cheap and silent)."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False, "no NVIDIA driver (libcuda.so.1 not found)"
    return True, ""


def probe_cuda(check_driver: bool = True) -> tuple[bool, str]:
    """Whether a session really runs on the CUDA provider, and why not when it does not.

    Quiet: onnxruntime's logger is muted and fds 1/2 are captured while the
    CUDA libraries are preloaded and the probe session is built.
    """
    import numpy as np
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return False, "this onnxruntime build has no CUDAExecutionProvider"
    if check_driver:
        ok, why = _driver_present()
        if not ok:
            return False, why
    ok = False
    error = ""
    with _captured_output() as captured:
        try:
            preload = getattr(ort, "preload_dlls", None)
            if preload is not None:
                # Loads CUDA/cuDNN from the nvidia-* pip wheels when present;
                # missing ones are reported by the probe below.
                with contextlib.suppress(Exception):
                    preload()
            ort.set_default_logger_severity(_ORT_QUIET)
            options = ort.SessionOptions()
            options.log_severity_level = _ORT_QUIET
            session = ort.InferenceSession(_probe_model(), options, providers=[CUDA, CPU])
            if session.get_providers()[0] == CUDA:
                x = np.arange(8, dtype=np.float32).reshape(2, 4)
                (y,) = session.run(None, {"x": x})
                ok = bool(np.array_equal(y, x + x))
                if not ok:
                    error = "the CUDA probe session returned a wrong result"
        except Exception as exc:  # the provider may raise instead of falling back
            error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        finally:
            ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)
    if ok:
        return True, "a probe session ran on CUDAExecutionProvider"
    return False, _PATHISH.sub("<path>", error)[:200] if error else _first_reason(captured[0])


def choose_provider(settings: Settings) -> ProviderChoice:
    """Decide the execution provider for ``settings.device`` and log it in one line.

    Raises ``Unavailable`` for ``device=cuda`` when CUDA is not usable.
    """
    device = Device(settings.device)
    if device == Device.CPU:
        choice = ProviderChoice(CPU, "device=cpu")
    else:
        ok, why = probe_cuda()
        if ok:
            choice = ProviderChoice(CUDA, f"device={device.value}: {why}")
        elif device == Device.CUDA:
            raise Unavailable(f"device=cuda but CUDA is not usable: {why}")
        else:
            choice = ProviderChoice(CPU, f"device=auto: CUDA not usable ({why})")
    log.info(
        "execution provider %s (%s)",
        choice.provider,
        choice.reason,
        extra={"provider": choice.provider},
    )
    return choice


_LEVELS = {
    GraphOptimization.DISABLED: "ORT_DISABLE_ALL",
    GraphOptimization.BASIC: "ORT_ENABLE_BASIC",
    GraphOptimization.EXTENDED: "ORT_ENABLE_EXTENDED",
    GraphOptimization.ALL: "ORT_ENABLE_ALL",
}


def intra_op_threads(settings: Settings) -> int:
    """Threads one inference may use: the setting, or (0) the usable cores, at most 8.

    Using every usable core lets one large batch use the machine; more than
    about 8 rarely speeds up the small tree/linear models served here and
    makes concurrent requests fight over cores.
    """
    if settings.intra_op_threads > 0:
        return settings.intra_op_threads
    return min(usable_cores(), 8)


def session_options(settings: Settings) -> Any:
    """``onnxruntime.SessionOptions`` for a serving session."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, _LEVELS[GraphOptimization(settings.graph_optimization)]
    )
    options.intra_op_num_threads = intra_op_threads(settings)
    # Requests run concurrently from the server's thread pool; parallelism
    # between graph nodes would only oversubscribe the cores.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle intra-op threads spinning for work would steal the cores the gRPC
    # event loop and the other requests need (measured in docs/serving.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Warnings such as "some nodes were not assigned to the preferred
    # execution provider" are expected for CPU-friendly ops on CUDA.
    options.log_severity_level = 3
    return options


def provider_list(provider: str) -> list[Any]:
    """The ``providers=`` argument for a session on ``provider``."""
    if provider == CUDA:
        cuda_options = {
            # Grow the arena only as needed, so several model versions can share a GPU.
            "arena_extend_strategy": "kSameAsRequested",
            # Pick convolution algorithms heuristically (no exhaustive search at load).
            "cudnn_conv_algo_search": "HEURISTIC",
            "do_copy_in_default_stream": "1",
        }
        return [(CUDA, cuda_options), CPU]
    return [CPU]
