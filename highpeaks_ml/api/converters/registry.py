"""Registry domain types <-> highpeaks_ml.v1 protobuf messages."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from highpeaks_ml.api.converters import search as search_conv
from highpeaks_ml.errors import InvalidArgument
from highpeaks_ml.registry.base import FeatureSpec, ModelInfo, TensorSpec, VersionMeta
from highpeaks_ml.registry.importer import ImportInfo
from highpeaks_ml.tensors import ELEMENT_TYPES
from highpeaks_ml.v1 import common_pb2, registry_pb2

#: (load_state, load_error, execution_provider, held_targets) of a version in this server.
LoadStatus = tuple[str, str, str, tuple[str, ...]]
StatusFn = Callable[[str, int], LoadStatus]

UNLOADED: LoadStatus = ("unloaded", "", "", ())

#: Domain task name ("" = not given) <-> the Task enum; shared by every converter.
TASK_TO_PROTO = {
    "classification": common_pb2.TASK_CLASSIFICATION,
    "regression": common_pb2.TASK_REGRESSION,
    "": common_pb2.TASK_UNSPECIFIED,
}
TASK_FROM_PROTO: dict[int, str] = {int(v): k for k, v in TASK_TO_PROTO.items()}

#: Element type name -> the DataType enum (numbers from highpeaks_ml/tensors.py).
DTYPE_TO_PROTO: dict[str, Any] = {e.name: e.proto for e in ELEMENT_TYPES}

FEATURE_TO_PROTO = {
    "numeric": common_pb2.FEATURE_TYPE_NUMERIC,
    "categorical": common_pb2.FEATURE_TYPE_CATEGORICAL,
}

SOURCE_TO_PROTO = {
    "trained": registry_pb2.VERSION_SOURCE_TRAINED,
    "imported": registry_pb2.VERSION_SOURCE_IMPORTED,
}

LOAD_STATE_TO_PROTO = {
    "unloaded": registry_pb2.LOAD_STATE_UNLOADED,
    "loading": registry_pb2.LOAD_STATE_LOADING,
    "ready": registry_pb2.LOAD_STATE_READY,
    "failed": registry_pb2.LOAD_STATE_FAILED,
}

# Keys of VersionMeta.dataset / .verification and the type of their proto field.
_DATASET_FIELDS: dict[str, type] = {
    "source": str,
    "sha256": str,
    "rows": int,
    "train_rows": int,
    "test_rows": int,
    "target_column": str,
}
_VERIFICATION_FIELDS: dict[str, type] = {
    "rows": int,
    "label_mismatch_rate": float,
    "max_abs_diff": float,
    "tolerance": float,
    "passed": bool,
    "rows_with_missing": int,
}


def _pick(data: dict[str, Any], fields: dict[str, type]) -> dict[str, Any]:
    return {k: kind(data[k]) for k, kind in fields.items() if data.get(k) is not None}


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """A Timestamp from seconds since the epoch."""
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(round(seconds * 1e9))
    return ts


def tensor_spec_to_proto(spec: TensorSpec) -> common_pb2.TensorSpec:
    """TensorSpec -> common_pb2.TensorSpec."""
    return common_pb2.TensorSpec(
        name=spec.name,
        data_type=DTYPE_TO_PROTO.get(spec.dtype, common_pb2.DATA_TYPE_UNSPECIFIED),
        shape=list(spec.shape),
    )


def feature_to_proto(feature: FeatureSpec) -> common_pb2.Feature:
    """FeatureSpec -> common_pb2.Feature."""
    return common_pb2.Feature(
        name=feature.name,
        type=FEATURE_TO_PROTO.get(feature.type, common_pb2.FEATURE_TYPE_UNSPECIFIED),
        categories=list(feature.categories),
        allows_missing=feature.allows_missing,
    )


def _struct(data: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    # A JSON round trip turns tuples into lists and anything exotic into text,
    # which is what Struct can hold.
    s.update(json.loads(json.dumps(data, default=str)))
    return s


def version_to_proto(
    meta: VersionMeta, aliases: Iterable[str] = (), status: LoadStatus = UNLOADED
) -> registry_pb2.ModelVersion:
    """VersionMeta (+ its aliases and load status in this server) -> ModelVersion."""
    state, error, provider, held = status
    msg = registry_pb2.ModelVersion(
        model_name=meta.model_name,
        version=meta.version,
        created_at=timestamp(meta.created_at),
        source=SOURCE_TO_PROTO.get(meta.source, registry_pb2.VERSION_SOURCE_UNSPECIFIED),
        task=TASK_TO_PROTO.get(meta.task, common_pb2.TASK_UNSPECIFIED),
        algorithm=meta.algorithm,
        hyperparameters=_struct(meta.hyperparameters),
        metrics={k: float(v) for k, v in meta.metrics.items()},
        features=[feature_to_proto(f) for f in meta.features],
        inputs=[tensor_spec_to_proto(t) for t in meta.inputs],
        outputs=[tensor_spec_to_proto(t) for t in meta.outputs],
        class_labels=list(meta.class_labels),
        sha256=meta.sha256,
        size_bytes=meta.size_bytes,
        library_versions={k: str(v) for k, v in meta.library_versions.items()},
        aliases=sorted(aliases),
        job_id=meta.job_id,
        created_by=meta.created_by,
        description=meta.description,
        load_state=LOAD_STATE_TO_PROTO.get(state, registry_pb2.LOAD_STATE_UNSPECIFIED),
        load_error=error,
        execution_provider=provider,
        held_targets=list(held),
        training_device=meta.training_device,
        artifacts=[
            registry_pb2.Artifact(
                name=a.name, sha256=a.sha256, size_bytes=a.size_bytes, media_type=a.media_type
            )
            for a in meta.artifacts
        ],
    )
    if meta.dataset:
        msg.dataset.CopyFrom(
            registry_pb2.DatasetFingerprint(**_pick(meta.dataset, _DATASET_FIELDS))
        )
    if meta.verification:
        msg.verification.CopyFrom(
            registry_pb2.Verification(**_pick(meta.verification, _VERIFICATION_FIELDS))
        )
    if meta.search:
        msg.search.CopyFrom(search_conv.result_to_proto(meta.search))
    if meta.promotion:
        msg.promotion.CopyFrom(search_conv.promotion_to_proto(meta.promotion))
    return msg


def model_to_proto(
    info: ModelInfo, with_versions: bool = False, status: StatusFn | None = None
) -> registry_pb2.Model:
    """ModelInfo -> Model (versions only when ``with_versions``, as GetModel does)."""
    msg = registry_pb2.Model(
        name=info.name,
        latest_version=info.latest.version,
        aliases=dict(info.aliases),
        created_at=timestamp(info.versions[0].created_at),
        updated_at=timestamp(info.latest.created_at),
    )
    if with_versions:
        msg.versions.extend(
            version_to_proto(
                m,
                info.aliases_of(m.version),
                status(m.model_name, m.version) if status else UNLOADED,
            )
            for m in info.versions
        )
    return msg


def ref_from_proto(ref: common_pb2.ModelRef) -> tuple[str, int | None, str | None]:
    """ModelRef -> (name, version or None, alias or None); latest when neither is set."""
    which = ref.WhichOneof("selector")
    if which == "version":
        if ref.version < 1:
            raise InvalidArgument("model.version: versions start at 1")
        return ref.name, int(ref.version), None
    if which == "alias":
        return ref.name, None, ref.alias
    return ref.name, None, None


def import_info_from_proto(info: registry_pb2.ImportModelInfo) -> ImportInfo:
    """ImportModelInfo -> ImportInfo (not yet validated)."""
    if info.task not in TASK_FROM_PROTO:
        raise InvalidArgument(f"info.task: unknown value {info.task}")
    return ImportInfo(
        model_name=info.model_name,
        task=TASK_FROM_PROTO[info.task],
        class_labels=tuple(info.class_labels),
        aliases=tuple(info.aliases),
        description=info.description,
        sha256=info.sha256,
    )
