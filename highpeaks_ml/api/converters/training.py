"""Training domain types <-> highpeaks_ml.v1 TrainService messages."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from highpeaks_ml.api.converters import search as search_conv
from highpeaks_ml.api.converters.registry import TASK_FROM_PROTO, TASK_TO_PROTO
from highpeaks_ml.api.errors import bounded
from highpeaks_ml.errors import InvalidArgument
from highpeaks_ml.training.catalogue import Algorithm, Param
from highpeaks_ml.training.datasets import CATEGORICAL, NUMERIC, DatasetInfo
from highpeaks_ml.training.jobs import STATES, Job, TrainRequest
from highpeaks_ml.training.spec import (
    BuiltinDataset,
    DatasetSource,
    InlineDataset,
    UploadedDataset,
)
from highpeaks_ml.v1 import common_pb2, train_pb2

_PARAM_TYPES = {
    "int": train_pb2.PARAM_TYPE_INT,
    "float": train_pb2.PARAM_TYPE_FLOAT,
    "string": train_pb2.PARAM_TYPE_STRING,
    "bool": train_pb2.PARAM_TYPE_BOOL,
}
_COLUMN_TYPES = {
    NUMERIC: train_pb2.COLUMN_TYPE_NUMERIC,
    CATEGORICAL: train_pb2.COLUMN_TYPE_CATEGORICAL,
}
_FORMATS = {"csv": train_pb2.DATASET_FORMAT_CSV}
BUILTIN_PREFIX = "builtin:"


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """A Timestamp from seconds since the epoch."""
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(round(seconds * 1e9))
    return ts


def _value(value: Any) -> struct_pb2.Value:
    v = struct_pb2.Value()
    if value is None:
        v.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        v.bool_value = value
    elif isinstance(value, (int, float)):
        v.number_value = float(value)
    else:
        v.string_value = str(value)
    return v


def _struct(data: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    for key, value in data.items():
        s.fields[key].CopyFrom(_value(value))
    return s


def _from_struct(s: struct_pb2.Struct, where: str) -> dict[str, Any]:
    try:
        return dict(json_format.MessageToDict(s))
    except ValueError:
        # NaN and infinity have no JSON form (json_format raises): bad input,
        # named by its path, not an internal error.
        path = f"{where}{_non_finite(s) or ''}"[:200]
        raise InvalidArgument(
            f"{path}: not a finite number; NaN and infinity are refused"
        ) from None


def _non_finite(value: Any) -> str | None:
    """Path (".key", "[i]") of the first NaN/infinite number inside a Struct or Value."""
    if isinstance(value, struct_pb2.Struct):
        for key, item in value.fields.items():
            if (path := _non_finite(item)) is not None:
                return f".{key}{path}"
        return None
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return None if math.isfinite(value.number_value) else ""
    if kind == "struct_value":
        return _non_finite(value.struct_value)
    if kind == "list_value":
        for i, item in enumerate(value.list_value.values):
            if (path := _non_finite(item)) is not None:
                return f"[{i}]{path}"
    return None


# --- datasets --------------------------------------------------------------------


def upload_info_from_proto(info: train_pb2.DatasetUploadInfo) -> dict[str, str]:
    """Keyword arguments of ``DatasetStore.begin_upload`` from the first upload message."""
    if info.format not in (train_pb2.DATASET_FORMAT_UNSPECIFIED, train_pb2.DATASET_FORMAT_CSV):
        raise InvalidArgument(f"info.format {info.format} is not supported; use CSV")
    return {
        "name": info.name,
        "expected_sha256": info.sha256,
        "target_column": info.target_column,
    }


def dataset_to_proto(info: DatasetInfo) -> train_pb2.Dataset:
    """A stored dataset as a Dataset message."""
    out = train_pb2.Dataset(
        id=info.id,
        name=info.name,
        format=_FORMATS.get(info.format, train_pb2.DATASET_FORMAT_UNSPECIFIED),
        size_bytes=info.size_bytes,
        rows=info.rows,
        created_by=info.created_by,
        target_column=info.target_column,
        columns=[
            train_pb2.Column(
                name=c.name,
                type=_COLUMN_TYPES.get(c.type, train_pb2.COLUMN_TYPE_UNSPECIFIED),
                distinct_values=c.distinct_values,
            )
            for c in info.columns
        ],
    )
    if info.created_at:
        out.created_at.CopyFrom(timestamp(info.created_at))
    return out


# --- the catalogue ---------------------------------------------------------------


def _param_to_proto(p: Param) -> train_pb2.Hyperparameter:
    out = train_pb2.Hyperparameter(
        name=p.name,
        type=_PARAM_TYPES[p.type],
        choices=list(p.choices),
        nullable=p.nullable,
        description=p.description,
    )
    out.default.CopyFrom(_value(p.default))
    if p.minimum is not None:
        out.minimum = float(p.minimum)
    if p.maximum is not None:
        out.maximum = float(p.maximum)
    return out


def algorithm_to_proto(algo: Algorithm) -> train_pb2.Algorithm:
    """One catalogue entry."""
    return train_pb2.Algorithm(
        name=algo.name,
        description=algo.description,
        tasks=[TASK_TO_PROTO[t] for t in algo.tasks],
        hyperparameters=[_param_to_proto(p) for p in algo.params],
        scales_numeric_features=algo.scales_numeric,
    )


# --- jobs ------------------------------------------------------------------------


def task_from_proto(value: int, field: str = "task") -> str:
    """The domain task for a Task enum value; InvalidArgument when unknown."""
    task = TASK_FROM_PROTO.get(int(value))
    if task is None:
        raise InvalidArgument(f"{field}: unknown task {value}")
    return task


def _dataset_from_proto(ref: train_pb2.DatasetRef) -> DatasetSource:
    which = ref.WhichOneof("source")
    if which == "dataset_id":
        return UploadedDataset(ref.dataset_id)
    if which == "builtin":
        return BuiltinDataset(ref.builtin.removeprefix(BUILTIN_PREFIX))
    if which == "inline":
        rows = [_from_struct(r, f"dataset.inline.rows[{i}]") for i, r in enumerate(ref.inline.rows)]
        return InlineDataset(rows=tuple(rows), row_count=len(rows))
    raise InvalidArgument("dataset: give a dataset_id, a builtin name or inline rows")


def train_request_from_proto(req: train_pb2.StartTrainingRequest) -> TrainRequest:
    """The domain request of StartTraining."""
    if not math.isfinite(req.test_size) or not math.isfinite(req.time_limit_seconds):
        raise InvalidArgument("test_size and time_limit_seconds must be finite numbers")
    return TrainRequest(
        model_name=req.model_name,
        algorithm=req.algorithm,
        dataset=_dataset_from_proto(req.dataset),
        hyperparameters=_from_struct(req.hyperparameters, "hyperparameters"),
        target_column=req.target_column,
        task=task_from_proto(req.task),
        test_size=req.test_size,
        seed=req.seed if req.HasField("seed") else None,
        idempotency_key=req.idempotency_key,
        aliases=list(req.aliases),
        time_limit_s=req.time_limit_seconds,
        description=req.description,
        feature_columns=list(req.feature_columns),
        cpus=req.resources.cpus,
        memory_mb=req.resources.memory_mb,
        search=search_conv.search_request_from_proto(req.search)
        if req.HasField("search")
        else None,
        promote_if_better=req.promote_if_better,
    )


def _request_to_proto(req: TrainRequest) -> train_pb2.StartTrainingRequest:
    src = req.dataset
    if isinstance(src, UploadedDataset):
        dataset = train_pb2.DatasetRef(dataset_id=src.dataset_id)
    elif isinstance(src, BuiltinDataset):
        dataset = train_pb2.DatasetRef(builtin=src.name)
    else:
        # The rows themselves are not echoed back (they can be megabytes).
        dataset = train_pb2.DatasetRef(inline=train_pb2.InlineDataset())
    out = train_pb2.StartTrainingRequest(
        model_name=req.model_name,
        algorithm=req.algorithm,
        hyperparameters=_struct(req.hyperparameters),
        dataset=dataset,
        target_column=req.target_column,
        task=TASK_TO_PROTO.get(req.task, common_pb2.TASK_UNSPECIFIED),
        test_size=req.test_size,
        idempotency_key=req.idempotency_key,
        aliases=req.aliases,
        time_limit_seconds=req.time_limit_s,
        description=req.description,
        feature_columns=req.feature_columns,
        resources=train_pb2.JobResources(cpus=req.cpus, memory_mb=req.memory_mb),
        promote_if_better=req.promote_if_better,
    )
    if req.seed is not None:
        out.seed = req.seed
    if req.search is not None:
        out.search.CopyFrom(search_conv.search_request_to_proto(req.search))
    return out


def job_to_proto(job: Job) -> train_pb2.TrainingJob:
    """A job as a TrainingJob message."""
    out = train_pb2.TrainingJob(
        id=job.id,
        model_name=job.model_name,
        algorithm=job.algorithm,
        state=f"JOB_STATE_{job.state}",
        stage=f"JOB_STAGE_{job.stage}" if job.stage else "JOB_STAGE_UNSPECIFIED",
        error=bounded(job.error),  # as small as any status message (api/errors.py)
        model_version=job.model_version,
        metrics=job.metrics,
        request=_request_to_proto(job.request),
        created_by=job.created_by,
        task=TASK_TO_PROTO.get(job.task, common_pb2.TASK_UNSPECIFIED),
        resources=train_pb2.JobResources(cpus=job.cpus, memory_mb=job.memory_mb),
        placement=train_pb2.JobPlacement(backend=job.backend, node=job.node, worker=job.worker),
    )
    if job.search:
        out.search.CopyFrom(search_conv.progress_to_proto(job.search))
    if job.promotion:
        out.promotion.CopyFrom(search_conv.promotion_to_proto(job.promotion))
    for name, seconds in (
        ("created_at", job.created_at),
        ("started_at", job.started_at),
        ("finished_at", job.finished_at),
    ):
        if seconds:
            getattr(out, name).CopyFrom(timestamp(seconds))
    return out


def states_from_proto(values: Iterable[int]) -> list[str]:
    """Domain job states from JobState values; InvalidArgument for unknown or unspecified."""
    out = []
    for v in values:
        name = train_pb2.JobState.Name(v) if v in train_pb2.JobState.values() else ""
        state = name.removeprefix("JOB_STATE_")
        if state not in STATES:
            raise InvalidArgument(f"states: {v} is not a job state")
        out.append(state)
    return out


__all__ = [
    "algorithm_to_proto",
    "dataset_to_proto",
    "job_to_proto",
    "states_from_proto",
    "task_from_proto",
    "timestamp",
    "train_request_from_proto",
    "upload_info_from_proto",
]
