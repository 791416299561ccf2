import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from highpeaks_ml.v1 import common_pb2 as _common_pb2
from highpeaks_ml.v1 import search_pb2 as _search_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VersionSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERSION_SOURCE_UNSPECIFIED: _ClassVar[VersionSource]
    VERSION_SOURCE_TRAINED: _ClassVar[VersionSource]
    VERSION_SOURCE_IMPORTED: _ClassVar[VersionSource]

class LoadState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOAD_STATE_UNSPECIFIED: _ClassVar[LoadState]
    LOAD_STATE_UNLOADED: _ClassVar[LoadState]
    LOAD_STATE_LOADING: _ClassVar[LoadState]
    LOAD_STATE_READY: _ClassVar[LoadState]
    LOAD_STATE_FAILED: _ClassVar[LoadState]

class ReportFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPORT_FORMAT_UNSPECIFIED: _ClassVar[ReportFormat]
    REPORT_FORMAT_HTML: _ClassVar[ReportFormat]
    REPORT_FORMAT_JSON: _ClassVar[ReportFormat]
    REPORT_FORMAT_FIGURE: _ClassVar[ReportFormat]
VERSION_SOURCE_UNSPECIFIED: VersionSource
VERSION_SOURCE_TRAINED: VersionSource
VERSION_SOURCE_IMPORTED: VersionSource
LOAD_STATE_UNSPECIFIED: LoadState
LOAD_STATE_UNLOADED: LoadState
LOAD_STATE_LOADING: LoadState
LOAD_STATE_READY: LoadState
LOAD_STATE_FAILED: LoadState
REPORT_FORMAT_UNSPECIFIED: ReportFormat
REPORT_FORMAT_HTML: ReportFormat
REPORT_FORMAT_JSON: ReportFormat
REPORT_FORMAT_FIGURE: ReportFormat

class DatasetFingerprint(_message.Message):
    __slots__ = ("source", "sha256", "rows", "train_rows", "test_rows", "target_column")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ROWS_FIELD_NUMBER: _ClassVar[int]
    TEST_ROWS_FIELD_NUMBER: _ClassVar[int]
    TARGET_COLUMN_FIELD_NUMBER: _ClassVar[int]
    source: str
    sha256: str
    rows: int
    train_rows: int
    test_rows: int
    target_column: str
    def __init__(self, source: _Optional[str] = ..., sha256: _Optional[str] = ..., rows: _Optional[int] = ..., train_rows: _Optional[int] = ..., test_rows: _Optional[int] = ..., target_column: _Optional[str] = ...) -> None: ...

class Verification(_message.Message):
    __slots__ = ("rows", "label_mismatch_rate", "max_abs_diff", "tolerance", "passed", "rows_with_missing")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    LABEL_MISMATCH_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    ROWS_WITH_MISSING_FIELD_NUMBER: _ClassVar[int]
    rows: int
    label_mismatch_rate: float
    max_abs_diff: float
    tolerance: float
    passed: bool
    rows_with_missing: int
    def __init__(self, rows: _Optional[int] = ..., label_mismatch_rate: _Optional[float] = ..., max_abs_diff: _Optional[float] = ..., tolerance: _Optional[float] = ..., passed: _Optional[bool] = ..., rows_with_missing: _Optional[int] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("model_name", "version", "created_at", "source", "task", "algorithm", "hyperparameters", "metrics", "features", "inputs", "outputs", "class_labels", "dataset", "sha256", "size_bytes", "library_versions", "verification", "aliases", "job_id", "created_by", "description", "load_state", "load_error", "execution_provider", "held_targets", "training_device", "search", "promotion", "artifacts")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class LibraryVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    CLASS_LABELS_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LIBRARY_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    LOAD_STATE_FIELD_NUMBER: _ClassVar[int]
    LOAD_ERROR_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    HELD_TARGETS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_DEVICE_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    PROMOTION_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: int
    created_at: _timestamp_pb2.Timestamp
    source: VersionSource
    task: _common_pb2.Task
    algorithm: str
    hyperparameters: _struct_pb2.Struct
    metrics: _containers.ScalarMap[str, float]
    features: _containers.RepeatedCompositeFieldContainer[_common_pb2.Feature]
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TensorSpec]
    class_labels: _containers.RepeatedScalarFieldContainer[str]
    dataset: DatasetFingerprint
    sha256: str
    size_bytes: int
    library_versions: _containers.ScalarMap[str, str]
    verification: Verification
    aliases: _containers.RepeatedScalarFieldContainer[str]
    job_id: str
    created_by: str
    description: str
    load_state: LoadState
    load_error: str
    execution_provider: str
    held_targets: _containers.RepeatedScalarFieldContainer[str]
    training_device: str
    search: _search_pb2.SearchResult
    promotion: _search_pb2.Promotion
    artifacts: _containers.RepeatedCompositeFieldContainer[Artifact]
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[_Union[VersionSource, str]] = ..., task: _Optional[_Union[_common_pb2.Task, str]] = ..., algorithm: _Optional[str] = ..., hyperparameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., features: _Optional[_Iterable[_Union[_common_pb2.Feature, _Mapping]]] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[_common_pb2.TensorSpec, _Mapping]]] = ..., class_labels: _Optional[_Iterable[str]] = ..., dataset: _Optional[_Union[DatasetFingerprint, _Mapping]] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., library_versions: _Optional[_Mapping[str, str]] = ..., verification: _Optional[_Union[Verification, _Mapping]] = ..., aliases: _Optional[_Iterable[str]] = ..., job_id: _Optional[str] = ..., created_by: _Optional[str] = ..., description: _Optional[str] = ..., load_state: _Optional[_Union[LoadState, str]] = ..., load_error: _Optional[str] = ..., execution_provider: _Optional[str] = ..., held_targets: _Optional[_Iterable[str]] = ..., training_device: _Optional[str] = ..., search: _Optional[_Union[_search_pb2.SearchResult, _Mapping]] = ..., promotion: _Optional[_Union[_search_pb2.Promotion, _Mapping]] = ..., artifacts: _Optional[_Iterable[_Union[Artifact, _Mapping]]] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "latest_version", "aliases", "versions", "created_at", "updated_at")
    class AliasesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    latest_version: int
    aliases: _containers.ScalarMap[str, int]
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., latest_version: _Optional[int] = ..., aliases: _Optional[_Mapping[str, int]] = ..., versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetModelVersionRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class SetAliasRequest(_message.Message):
    __slots__ = ("model_name", "alias", "version", "force")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    alias: str
    version: int
    force: bool
    def __init__(self, model_name: _Optional[str] = ..., alias: _Optional[str] = ..., version: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class DeleteAliasRequest(_message.Message):
    __slots__ = ("model_name", "alias")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    alias: str
    def __init__(self, model_name: _Optional[str] = ..., alias: _Optional[str] = ...) -> None: ...

class DeleteModelVersionRequest(_message.Message):
    __slots__ = ("model_name", "version", "force")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: int
    force: bool
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class DeleteModelVersionResponse(_message.Message):
    __slots__ = ("model", "removed_aliases")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REMOVED_ALIASES_FIELD_NUMBER: _ClassVar[int]
    model: Model
    removed_aliases: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ..., removed_aliases: _Optional[_Iterable[str]] = ...) -> None: ...

class ImportModelInfo(_message.Message):
    __slots__ = ("model_name", "task", "class_labels", "aliases", "description", "sha256")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    CLASS_LABELS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    task: _common_pb2.Task
    class_labels: _containers.RepeatedScalarFieldContainer[str]
    aliases: _containers.RepeatedScalarFieldContainer[str]
    description: str
    sha256: str
    def __init__(self, model_name: _Optional[str] = ..., task: _Optional[_Union[_common_pb2.Task, str]] = ..., class_labels: _Optional[_Iterable[str]] = ..., aliases: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class ImportModelRequest(_message.Message):
    __slots__ = ("info", "chunk")
    INFO_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    info: ImportModelInfo
    chunk: bytes
    def __init__(self, info: _Optional[_Union[ImportModelInfo, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class DownloadModelVersionRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class DownloadModelVersionResponse(_message.Message):
    __slots__ = ("version", "chunk")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    version: ModelVersion
    chunk: bytes
    def __init__(self, version: _Optional[_Union[ModelVersion, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("name", "sha256", "size_bytes", "media_type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: str
    size_bytes: int
    media_type: str
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., media_type: _Optional[str] = ...) -> None: ...

class GetVersionReportRequest(_message.Message):
    __slots__ = ("model", "format", "figure")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    FIGURE_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    format: ReportFormat
    figure: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., format: _Optional[_Union[ReportFormat, str]] = ..., figure: _Optional[str] = ...) -> None: ...

class ReportInfo(_message.Message):
    __slots__ = ("model_name", "version", "artifact", "figures", "stored", "served_rows", "served_features")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    FIGURES_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    SERVED_ROWS_FIELD_NUMBER: _ClassVar[int]
    SERVED_FEATURES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: int
    artifact: Artifact
    figures: _containers.RepeatedScalarFieldContainer[str]
    stored: Artifact
    served_rows: int
    served_features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[int] = ..., artifact: _Optional[_Union[Artifact, _Mapping]] = ..., figures: _Optional[_Iterable[str]] = ..., stored: _Optional[_Union[Artifact, _Mapping]] = ..., served_rows: _Optional[int] = ..., served_features: _Optional[_Iterable[str]] = ...) -> None: ...

class GetVersionReportResponse(_message.Message):
    __slots__ = ("info", "chunk")
    INFO_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    info: ReportInfo
    chunk: bytes
    def __init__(self, info: _Optional[_Union[ReportInfo, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class GetDriftReportRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class FeatureDrift(_message.Message):
    __slots__ = ("name", "type", "psi", "rows", "level", "bins", "training", "served")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PSI_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    BINS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    psi: float
    rows: int
    level: str
    bins: _containers.RepeatedScalarFieldContainer[str]
    training: _containers.RepeatedScalarFieldContainer[float]
    served: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., psi: _Optional[float] = ..., rows: _Optional[int] = ..., level: _Optional[str] = ..., bins: _Optional[_Iterable[str]] = ..., training: _Optional[_Iterable[float]] = ..., served: _Optional[_Iterable[float]] = ...) -> None: ...

class DriftReport(_message.Message):
    __slots__ = ("model_name", "version", "enabled", "window_seconds", "rows", "training_rows", "features")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_ROWS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: int
    enabled: bool
    window_seconds: float
    rows: int
    training_rows: int
    features: _containers.RepeatedCompositeFieldContainer[FeatureDrift]
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[int] = ..., enabled: _Optional[bool] = ..., window_seconds: _Optional[float] = ..., rows: _Optional[int] = ..., training_rows: _Optional[int] = ..., features: _Optional[_Iterable[_Union[FeatureDrift, _Mapping]]] = ...) -> None: ...
