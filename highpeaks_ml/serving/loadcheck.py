"""Proof, before a version is published, that the serving runtime loads and runs it.

``onnx.checker`` accepts graphs that onnxruntime cannot load (a node of an
operator domain it does not know, say), and a version that cannot load would
become a model's latest and could take aliases. ``LoadCheck`` is installed
on the registry store (``ModelStore.set_publish_check``), so every publish
through the server (ImportModel, a training job's result) runs it on the
version's file before the version exists:

1. an ``onnxruntime.InferenceSession`` with the session options serving uses
   (``providers.session_options``), on the CPU provider;
2. the serving input plan for the version's metadata (``InputPlan.build``,
   as serving does at load);
3. one run of every served output on a one-row input built from the
   declared inputs (``InputPlan.warmup_feeds``: zeros, ``False``, the first
   known category of a categorical feature, ``""`` for other strings).

The check runs in a short-lived child process (``python -m
highpeaks_ml.serving.loadcheck``), because a hostile or merely huge model
must not hang or exhaust the server: the child's private memory is capped
with ``RLIMIT_DATA`` (its own baseline after importing onnxruntime plus
``load_check_memory_mb``; malloc then fails inside the child, which
onnxruntime reports as a failed load), the parent kills it after
``load_check_timeout_s`` (and the child arms ``alarm(2)`` for itself, in
case the parent dies first), and a crash of the child (a segfault in a
kernel) is only a refused version. At most ``MAX_CONCURRENT`` checks run at
once. Starting the child costs about 0.4 s (Python, numpy, onnxruntime) on
a small VM, once per published version.

A refusal is ``InvalidArgument`` in our words: the category of the failure
(``explain``), never onnxruntime's own text, which goes to the log.
``open_session``, ``probe_run`` and ``explain`` are shared with the serving
manager, so the check and serving load a version the same way.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from highpeaks_ml import metrics
from highpeaks_ml.config import Settings
from highpeaks_ml.errors import InvalidArgument, Unavailable
from highpeaks_ml.registry.base import VersionMeta
from highpeaks_ml.serving import providers
from highpeaks_ml.serving.inputs import InputPlan

log = logging.getLogger("highpeaks_ml.serving")

#: Checks allowed at once; more wait (up to the time limit) for a turn.
MAX_CONCURRENT = 2
#: Seconds the child gives itself beyond the parent's limit before alarm(2) ends it.
_ALARM_SLACK_S = 5
#: Operator domains onnxruntime implements besides the ONNX standard ones.
_RUNTIME_DOMAINS = ("com.microsoft",)
_MAX_NAMED_OPS = 5
_MAX_DETAIL = 4000

# onnxruntime's exception classes (onnxruntime.capi.onnxruntime_pybind11_state)
# -> what they mean, in our words.
_CATEGORIES = {
    "NotImplemented": "a node has no implementation in this onnxruntime for its operator,"
    " opset version or element types",
    "InvalidGraph": "onnxruntime finds the graph invalid (types or shapes do not fit together)",
    "InvalidProtobuf": "the file does not parse as an ONNX model",
    "NoModel": "the file holds no model",
}
_MEMORY_WORDS = ("bad_alloc", "bad allocation", "failed to allocate", "cannot allocate")


# --- shared with serving/manager.py ------------------------------------------------


def open_session(
    data: bytes, meta: VersionMeta, options: Any, provider_list: Sequence[Any]
) -> tuple[Any, InputPlan]:
    """An onnxruntime session on ``data`` and the serving input plan for ``meta``.

    onnxruntime's exceptions pass through; ``InputPlan.build`` raises
    ``ValueError`` (our words) when the graph does not fit the metadata.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(data, options, providers=list(provider_list))
    plan = InputPlan.build(
        meta,
        [(i.name, i.type, i.shape) for i in session.get_inputs()],
        [(o.name, o.type, o.shape) for o in session.get_outputs()],
    )
    return session, plan


def served_outputs(plan: InputPlan) -> list[str]:
    """Every output serving runs (``LoadedVersion.all_outputs``)."""
    return plan.outputs.names(frozenset(), plan.label)


def probe_run(session: Any, plan: InputPlan) -> None:
    """One run of every served output on one plausible row (``InputPlan.warmup_feeds``)."""
    session.run(served_outputs(plan), plan.warmup_feeds())


def explain(exc: BaseException, data: bytes | None = None) -> str:
    """Why onnxruntime refused a model, in our words (its own text goes to the log only).

    With the model's bytes, names (up to five) the operators in domains that
    neither ONNX nor onnxruntime define, the usual cause of a load failure
    that passed ``onnx.checker``.
    """
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or any(w in text for w in _MEMORY_WORDS):
        why = "it needs more memory than allowed"
    else:
        why = _CATEGORIES.get(type(exc).__name__, "onnxruntime refused it")
    unknown = unknown_operators(data) if data else []
    if unknown:
        shown = ", ".join(unknown[:_MAX_NAMED_OPS])
        more = f" and {len(unknown) - _MAX_NAMED_OPS} more" if len(unknown) > _MAX_NAMED_OPS else ""
        why += f"; it uses operators of domains onnxruntime does not know: {shown}{more}"
    return why


def unknown_operators(data: bytes) -> list[str]:
    """``domain:op`` of the graph's nodes (subgraphs included) that neither the ONNX
    standard nor onnxruntime's own domains define ([] when the bytes do not parse)."""
    try:
        import onnx
        from onnx import defs

        model = onnx.load_from_string(data)
    except Exception:
        return []
    local = {(f.domain, f.name) for f in model.functions}
    found: dict[str, None] = {}

    def walk(graph: Any) -> None:
        for node in graph.node:
            domain = node.domain or ""
            if (domain, node.op_type) in local:
                continue
            known = domain.startswith(_RUNTIME_DOMAINS) or defs.has(node.op_type, domain)
            if not known:
                found[f"{domain}:{node.op_type}" if domain else node.op_type] = None
            for attr in node.attribute:
                for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    walk(g)

    walk(model.graph)
    return list(found)


# --- the check, run by the store before a publish --------------------------------------


class LoadCheck:
    """``ModelStore`` publish check: refuses versions the serving runtime cannot load and run.

    Called with the staged model file and its metadata, in a worker thread
    (it blocks for the child process). Raises ``InvalidArgument`` (in our
    words) to refuse the version, ``Unavailable`` when other checks held
    every slot for the whole time limit.
    """

    def __init__(self, settings: Settings) -> None:
        self.timeout_s = settings.load_check_timeout_s
        self.memory_bytes = settings.load_check_memory_mb * 1024 * 1024
        self._request = {
            "graph_optimization": str(settings.graph_optimization.value),
            "intra_op_threads": providers.intra_op_threads(settings),
            "memory_bytes": self.memory_bytes,
            "alarm_s": int(self.timeout_s) + _ALARM_SLACK_S,
        }
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT)

    def __call__(self, path: Path, meta: VersionMeta) -> None:
        if not self._slots.acquire(timeout=self.timeout_s):
            raise Unavailable("the server is busy checking other new model versions; try again")
        started = time.perf_counter()
        try:
            outcome = self._run_child(path, meta)
        finally:
            self._slots.release()
        elapsed = time.perf_counter() - started
        if outcome is None:
            metrics.record_load_check(True, "", elapsed)
            return
        stage, reason, detail = outcome
        metrics.record_load_check(False, stage, elapsed)
        log.warning(
            "refused model %s: the serving runtime check failed (%s): %s",
            meta.model_name,
            stage,
            reason,
            extra={"model": meta.model_name, "stage": stage, "detail": detail[:_MAX_DETAIL]},
        )
        raise InvalidArgument(f"the model cannot be served: {reason}; nothing was stored")

    def _run_child(self, path: Path, meta: VersionMeta) -> tuple[str, str, str] | None:
        """None when the child proved the version; else (stage, reason, detail)."""
        request = dict(self._request, path=str(path), meta=meta.to_dict())
        env = dict(os.environ)
        # glibc reserves an arena per thread; a couple bound what the intra-op
        # threads map, so the memory cap measures the model, not the arenas.
        env["MALLOC_ARENA_MAX"] = "2"
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "highpeaks_ml.serving.loadcheck"],
                input=json.dumps(request, default=str).encode(),
                capture_output=True,
                timeout=self.timeout_s,
                env=env,
                check=False,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            return (
                "timeout",
                f"loading and running it took longer than {self.timeout_s:g} s"
                " (load_check_timeout_s)",
                "",
            )
        stderr = proc.stderr.decode("utf-8", "replace")
        result = _last_json(proc.stdout.decode("utf-8", "replace"))
        if result is None:
            if proc.returncode < 0 or proc.returncode in (137, 139):
                reason = "the serving runtime crashed while loading or running it"
            else:
                reason = "the serving runtime could not check it"
            return (
                "crash",
                reason,
                f"exit code {proc.returncode}; stderr: {stderr[-_MAX_DETAIL:]}",
            )
        if result.get("ok"):
            return None
        stage = str(result.get("stage", "load"))
        reason = str(result.get("reason", "onnxruntime refused it"))
        if result.get("memory"):
            stage = "memory"
            reason += f" (load_check_memory_mb={self.memory_bytes // (1024 * 1024)})"
        return stage, reason, str(result.get("detail", ""))


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None


# --- the child process ---------------------------------------------------------------


def _limit_memory(extra_bytes: int) -> None:
    """Cap this process's private data at what it uses now plus ``extra_bytes``."""
    import resource

    base = 0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmData:"):
                base = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError):  # pragma: no cover - not Linux
        return
    limit = base + extra_bytes
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _check(request: dict[str, Any]) -> dict[str, Any]:
    import signal

    signal.alarm(int(request["alarm_s"]))
    import numpy  # noqa: F401 - imported before the memory cap, with onnxruntime
    import onnxruntime  # noqa: F401

    settings = Settings.model_construct(
        graph_optimization=request["graph_optimization"],
        intra_op_threads=int(request["intra_op_threads"]),
    )
    options = providers.session_options(settings)
    meta = VersionMeta.from_dict(request["meta"])
    _limit_memory(int(request["memory_bytes"]))
    data = Path(request["path"]).read_bytes()
    try:
        session, plan = open_session(data, meta, options, providers.provider_list(providers.CPU))
    except ValueError as exc:
        if type(exc).__module__.startswith("onnxruntime"):
            return _refused("load", exc, data)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unusable inputs"
        return {"ok": False, "stage": "inputs", "reason": first[:300], "detail": str(exc)}
    except Exception as exc:  # onnxruntime's exceptions, MemoryError
        return _refused("load", exc, data)
    try:
        probe_run(session, plan)
    except Exception as exc:
        out = _refused("run", exc, data)
        out["reason"] = (
            "it loads, but a run on a one-row input built from its declared inputs"
            f" failed: {out['reason']}"
        )
        return out
    return {"ok": True}


def _refused(stage: str, exc: BaseException, data: bytes) -> dict[str, Any]:
    text = str(exc)
    memory = isinstance(exc, MemoryError) or any(w in text.lower() for w in _MEMORY_WORDS)
    return {
        "ok": False,
        "stage": stage,
        "reason": explain(exc, data),
        "memory": memory,
        "detail": f"{type(exc).__name__}: {text[:_MAX_DETAIL]}",
    }


def main() -> int:
    """Child entry point: a JSON request on stdin, one JSON result line on stdout."""
    request = json.loads(sys.stdin.buffer.read())
    try:
        result = _check(request)
    except MemoryError:
        result = {
            "ok": False,
            "stage": "load",
            "reason": "it needs more memory than allowed",
            "memory": True,
            "detail": "MemoryError",
        }
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "MAX_CONCURRENT",
    "LoadCheck",
    "explain",
    "open_session",
    "probe_run",
    "served_outputs",
    "unknown_operators",
]
