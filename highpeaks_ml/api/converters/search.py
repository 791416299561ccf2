"""Hyperparameter search types <-> highpeaks_ml.v1 search.proto messages.

Used by the training converters (StartTrainingRequest.search, TrainingJob.search
and .promotion) and the registry converters (ModelVersion.search and .promotion).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2

from highpeaks_ml.errors import InvalidArgument, quote
from highpeaks_ml.training.search import (
    GRID,
    RANDOM,
    TPE,
    TRIAL_CANCELLED,
    TRIAL_FAILED,
    TRIAL_SUCCEEDED,
    Choice,
    Dimension,
    Range,
    SearchRequest,
)
from highpeaks_ml.v1 import search_pb2

STRATEGY_TO_PROTO = {
    GRID: search_pb2.SEARCH_STRATEGY_GRID,
    RANDOM: search_pb2.SEARCH_STRATEGY_RANDOM,
    TPE: search_pb2.SEARCH_STRATEGY_TPE,
}
STRATEGY_FROM_PROTO = {v: k for k, v in STRATEGY_TO_PROTO.items()}
_TRIAL_STATES = {
    TRIAL_SUCCEEDED: search_pb2.TRIAL_STATE_SUCCEEDED,
    TRIAL_FAILED: search_pb2.TRIAL_STATE_FAILED,
    TRIAL_CANCELLED: search_pb2.TRIAL_STATE_CANCELLED,
}


def _struct(data: Mapping[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(dict(data))
    return s


def _value(value: Any) -> struct_pb2.Value:
    return json_format.ParseDict(value, struct_pb2.Value())


def _from_value(value: struct_pb2.Value, where: str) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value" and not math.isfinite(value.number_value):
        raise InvalidArgument(f"{where}: not a finite number; NaN and infinity are refused")
    if kind in ("struct_value", "list_value"):
        raise InvalidArgument(f"{where}: a value must be a number, text, true/false or null")
    return json_format.MessageToDict(value)


def search_request_from_proto(msg: search_pb2.SearchRequest) -> SearchRequest:
    """The domain search request; InvalidArgument for malformed messages."""
    if msg.strategy not in (search_pb2.SEARCH_STRATEGY_UNSPECIFIED, *STRATEGY_FROM_PROTO):
        raise InvalidArgument(f"search.strategy: unknown strategy {msg.strategy}")
    space: list[tuple[str, Dimension]] = []
    for i, dim in enumerate(msg.space):
        where = f"search.space[{i}]"
        if not dim.name:
            raise InvalidArgument(f"{where}.name is empty")
        which = dim.WhichOneof("values")
        if which == "choice":
            values = tuple(
                _from_value(v, f"{where}.choice.values[{j}]")
                for j, v in enumerate(dim.choice.values)
            )
            space.append((dim.name, Choice(values)))
        elif which == "range":
            space.append((dim.name, Range(dim.range.low, dim.range.high, dim.range.log)))
        else:
            raise InvalidArgument(f"{where} ({quote(dim.name)}): give a choice or a range")
    if not math.isfinite(msg.time_budget_seconds):
        raise InvalidArgument("search.time_budget_seconds must be a finite number")
    return SearchRequest(
        strategy=STRATEGY_FROM_PROTO.get(msg.strategy, ""),
        space=tuple(space),
        folds=msg.folds,
        metric=msg.metric,
        max_trials=msg.max_trials,
        parallelism=msg.parallelism,
        time_budget_s=msg.time_budget_seconds,
        seed=msg.seed if msg.HasField("seed") else None,
    )


def _space_to_proto(space: Any) -> list[search_pb2.ParamSpace]:
    out = []
    for item in space:
        if isinstance(item, tuple):
            name, dim = item
        else:  # the stored form: {"name", "values"} or {"name", "low", "high", "log"}
            name = item["name"]
            dim = (
                Choice(tuple(item["values"]))
                if "values" in item
                else Range(float(item["low"]), float(item["high"]), bool(item.get("log")))
            )
        if isinstance(dim, Choice):
            out.append(
                search_pb2.ParamSpace(
                    name=name,
                    choice=search_pb2.ParamValues(values=[_value(v) for v in dim.values]),
                )
            )
        else:
            out.append(
                search_pb2.ParamSpace(
                    name=name, range=search_pb2.ParamRange(low=dim.low, high=dim.high, log=dim.log)
                )
            )
    return out


def search_request_to_proto(req: SearchRequest) -> search_pb2.SearchRequest:
    """A stored request, echoed in TrainingJob.request."""
    out = search_pb2.SearchRequest(
        strategy=STRATEGY_TO_PROTO.get(req.strategy, search_pb2.SEARCH_STRATEGY_UNSPECIFIED),
        space=_space_to_proto(req.space),
        folds=req.folds,
        metric=req.metric,
        max_trials=req.max_trials,
        parallelism=req.parallelism,
        time_budget_seconds=req.time_budget_s,
    )
    if req.seed is not None:
        out.seed = req.seed
    return out


def _trial_to_proto(t: Mapping[str, Any]) -> search_pb2.Trial:
    return search_pb2.Trial(
        number=int(t["number"]),
        params=_struct(t.get("params", {})),
        fold_scores=[float(x) for x in t.get("fold_scores", ())],
        mean=float(t.get("mean") or 0.0),
        std=float(t.get("std") or 0.0),
        seconds=float(t.get("seconds", 0.0)),
        state=_TRIAL_STATES.get(str(t.get("state")), search_pb2.TRIAL_STATE_UNSPECIFIED),
        error=str(t.get("error", "")),
    )


def progress_to_proto(d: Mapping[str, Any]) -> search_pb2.SearchProgress:
    """A job's search progress (Job.search) as TrainingJob.search."""
    out = search_pb2.SearchProgress(
        trials_total=int(d.get("total", 0)),
        trials_done=int(d.get("done", 0)),
        trials_failed=int(d.get("failed", 0)),
        trials_running=int(d.get("running", 0)),
        metric=str(d.get("metric", "")),
        greater_is_better=bool(d.get("greater_is_better", True)),
        best_trial=max(0, int(d.get("best_trial", -1))),
        best_params=_struct(d.get("best_params", {})),
    )
    if d.get("best_score") is not None:
        out.best_score = float(d["best_score"])
    return out


def result_to_proto(d: Mapping[str, Any]) -> search_pb2.SearchResult:
    """A version's search record (VersionMeta.search) as ModelVersion.search."""
    return search_pb2.SearchResult(
        strategy=STRATEGY_TO_PROTO.get(
            str(d.get("strategy")), search_pb2.SEARCH_STRATEGY_UNSPECIFIED
        ),
        space=_space_to_proto(d.get("space", ())),
        folds=int(d.get("folds", 0)),
        metric=str(d.get("metric", "")),
        greater_is_better=bool(d.get("greater_is_better", True)),
        seed=int(d.get("seed", 0)),
        trials=[_trial_to_proto(t) for t in d.get("trials", ())],
        best_trial=max(0, int(d.get("best_trial", 0))),
        best_score=float(d.get("best_score") or 0.0),
        best_params=_struct(d.get("best_params", {})),
        stopped_by_budget=bool(d.get("stopped_by_budget", False)),
    )


def promotion_to_proto(d: Mapping[str, Any]) -> search_pb2.Promotion:
    """A promote-if-better decision (Job.promotion, VersionMeta.promotion)."""
    out = search_pb2.Promotion(
        alias=str(d.get("alias", "")),
        metric=str(d.get("metric", "")),
        greater_is_better=bool(d.get("greater_is_better", True)),
        new_score=float(d.get("new_score") or 0.0),
        current_version=int(d.get("current_version", 0) or 0),
        promoted=bool(d.get("promoted", False)),
        reason=str(d.get("reason", "")),
    )
    if d.get("current_score") is not None:
        out.current_score = float(d["current_score"])
    return out


__all__ = [
    "STRATEGY_FROM_PROTO",
    "STRATEGY_TO_PROTO",
    "progress_to_proto",
    "promotion_to_proto",
    "result_to_proto",
    "search_request_from_proto",
    "search_request_to_proto",
]
