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

class DatasetFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATASET_FORMAT_UNSPECIFIED: _ClassVar[DatasetFormat]
    DATASET_FORMAT_CSV: _ClassVar[DatasetFormat]

class ColumnType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COLUMN_TYPE_UNSPECIFIED: _ClassVar[ColumnType]
    COLUMN_TYPE_NUMERIC: _ClassVar[ColumnType]
    COLUMN_TYPE_CATEGORICAL: _ClassVar[ColumnType]

class ParamType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PARAM_TYPE_UNSPECIFIED: _ClassVar[ParamType]
    PARAM_TYPE_INT: _ClassVar[ParamType]
    PARAM_TYPE_FLOAT: _ClassVar[ParamType]
    PARAM_TYPE_STRING: _ClassVar[ParamType]
    PARAM_TYPE_BOOL: _ClassVar[ParamType]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class JobStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STAGE_UNSPECIFIED: _ClassVar[JobStage]
    JOB_STAGE_LOADING_DATA: _ClassVar[JobStage]
    JOB_STAGE_FITTING: _ClassVar[JobStage]
    JOB_STAGE_EVALUATING: _ClassVar[JobStage]
    JOB_STAGE_EXPORTING: _ClassVar[JobStage]
    JOB_STAGE_VERIFYING: _ClassVar[JobStage]
    JOB_STAGE_REGISTERING: _ClassVar[JobStage]
    JOB_STAGE_SEARCHING: _ClassVar[JobStage]
DATASET_FORMAT_UNSPECIFIED: DatasetFormat
DATASET_FORMAT_CSV: DatasetFormat
COLUMN_TYPE_UNSPECIFIED: ColumnType
COLUMN_TYPE_NUMERIC: ColumnType
COLUMN_TYPE_CATEGORICAL: ColumnType
PARAM_TYPE_UNSPECIFIED: ParamType
PARAM_TYPE_INT: ParamType
PARAM_TYPE_FLOAT: ParamType
PARAM_TYPE_STRING: ParamType
PARAM_TYPE_BOOL: ParamType
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
JOB_STAGE_UNSPECIFIED: JobStage
JOB_STAGE_LOADING_DATA: JobStage
JOB_STAGE_FITTING: JobStage
JOB_STAGE_EVALUATING: JobStage
JOB_STAGE_EXPORTING: JobStage
JOB_STAGE_VERIFYING: JobStage
JOB_STAGE_REGISTERING: JobStage
JOB_STAGE_SEARCHING: JobStage

class DatasetUploadInfo(_message.Message):
    __slots__ = ("name", "format", "sha256", "target_column")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TARGET_COLUMN_FIELD_NUMBER: _ClassVar[int]
    name: str
    format: DatasetFormat
    sha256: str
    target_column: str
    def __init__(self, name: _Optional[str] = ..., format: _Optional[_Union[DatasetFormat, str]] = ..., sha256: _Optional[str] = ..., target_column: _Optional[str] = ...) -> None: ...

class UploadDatasetRequest(_message.Message):
    __slots__ = ("info", "chunk")
    INFO_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    info: DatasetUploadInfo
    chunk: bytes
    def __init__(self, info: _Optional[_Union[DatasetUploadInfo, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class Column(_message.Message):
    __slots__ = ("name", "type", "distinct_values")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DISTINCT_VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: ColumnType
    distinct_values: int
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[ColumnType, str]] = ..., distinct_values: _Optional[int] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("id", "name", "format", "size_bytes", "rows", "columns", "created_at", "created_by", "target_column")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    TARGET_COLUMN_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    format: DatasetFormat
    size_bytes: int
    rows: int
    columns: _containers.RepeatedCompositeFieldContainer[Column]
    created_at: _timestamp_pb2.Timestamp
    created_by: str
    target_column: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., format: _Optional[_Union[DatasetFormat, str]] = ..., size_bytes: _Optional[int] = ..., rows: _Optional[int] = ..., columns: _Optional[_Iterable[_Union[Column, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_by: _Optional[str] = ..., target_column: _Optional[str] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets",)
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ...) -> None: ...

class Hyperparameter(_message.Message):
    __slots__ = ("name", "type", "default", "minimum", "maximum", "choices", "nullable", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    NULLABLE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: ParamType
    default: _struct_pb2.Value
    minimum: float
    maximum: float
    choices: _containers.RepeatedScalarFieldContainer[str]
    nullable: bool
    description: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[ParamType, str]] = ..., default: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., minimum: _Optional[float] = ..., maximum: _Optional[float] = ..., choices: _Optional[_Iterable[str]] = ..., nullable: _Optional[bool] = ..., description: _Optional[str] = ...) -> None: ...

class Algorithm(_message.Message):
    __slots__ = ("name", "description", "tasks", "hyperparameters", "scales_numeric_features")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    SCALES_NUMERIC_FEATURES_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    tasks: _containers.RepeatedScalarFieldContainer[_common_pb2.Task]
    hyperparameters: _containers.RepeatedCompositeFieldContainer[Hyperparameter]
    scales_numeric_features: bool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[_common_pb2.Task, str]]] = ..., hyperparameters: _Optional[_Iterable[_Union[Hyperparameter, _Mapping]]] = ..., scales_numeric_features: _Optional[bool] = ...) -> None: ...

class ListAlgorithmsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAlgorithmsResponse(_message.Message):
    __slots__ = ("algorithms",)
    ALGORITHMS_FIELD_NUMBER: _ClassVar[int]
    algorithms: _containers.RepeatedCompositeFieldContainer[Algorithm]
    def __init__(self, algorithms: _Optional[_Iterable[_Union[Algorithm, _Mapping]]] = ...) -> None: ...

class InlineDataset(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    def __init__(self, rows: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ...) -> None: ...

class DatasetRef(_message.Message):
    __slots__ = ("dataset_id", "builtin", "inline")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    INLINE_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    builtin: str
    inline: InlineDataset
    def __init__(self, dataset_id: _Optional[str] = ..., builtin: _Optional[str] = ..., inline: _Optional[_Union[InlineDataset, _Mapping]] = ...) -> None: ...

class StartTrainingRequest(_message.Message):
    __slots__ = ("model_name", "algorithm", "hyperparameters", "dataset", "target_column", "task", "test_size", "seed", "idempotency_key", "aliases", "time_limit_seconds", "description", "feature_columns", "resources", "search", "promote_if_better")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    TARGET_COLUMN_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    TEST_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    TIME_LIMIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    PROMOTE_IF_BETTER_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    algorithm: str
    hyperparameters: _struct_pb2.Struct
    dataset: DatasetRef
    target_column: str
    task: _common_pb2.Task
    test_size: float
    seed: int
    idempotency_key: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    time_limit_seconds: float
    description: str
    feature_columns: _containers.RepeatedScalarFieldContainer[str]
    resources: JobResources
    search: _search_pb2.SearchRequest
    promote_if_better: str
    def __init__(self, model_name: _Optional[str] = ..., algorithm: _Optional[str] = ..., hyperparameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., dataset: _Optional[_Union[DatasetRef, _Mapping]] = ..., target_column: _Optional[str] = ..., task: _Optional[_Union[_common_pb2.Task, str]] = ..., test_size: _Optional[float] = ..., seed: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., time_limit_seconds: _Optional[float] = ..., description: _Optional[str] = ..., feature_columns: _Optional[_Iterable[str]] = ..., resources: _Optional[_Union[JobResources, _Mapping]] = ..., search: _Optional[_Union[_search_pb2.SearchRequest, _Mapping]] = ..., promote_if_better: _Optional[str] = ...) -> None: ...

class JobResources(_message.Message):
    __slots__ = ("cpus", "memory_mb")
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    cpus: int
    memory_mb: int
    def __init__(self, cpus: _Optional[int] = ..., memory_mb: _Optional[int] = ...) -> None: ...

class JobPlacement(_message.Message):
    __slots__ = ("backend", "node", "worker")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    backend: str
    node: str
    worker: str
    def __init__(self, backend: _Optional[str] = ..., node: _Optional[str] = ..., worker: _Optional[str] = ...) -> None: ...

class TrainingJob(_message.Message):
    __slots__ = ("id", "model_name", "algorithm", "state", "stage", "error", "model_version", "metrics", "request", "created_at", "started_at", "finished_at", "created_by", "task", "resources", "placement", "search", "promotion")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    PROMOTION_FIELD_NUMBER: _ClassVar[int]
    id: str
    model_name: str
    algorithm: str
    state: JobState
    stage: JobStage
    error: str
    model_version: int
    metrics: _containers.ScalarMap[str, float]
    request: StartTrainingRequest
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    created_by: str
    task: _common_pb2.Task
    resources: JobResources
    placement: JobPlacement
    search: _search_pb2.SearchProgress
    promotion: _search_pb2.Promotion
    def __init__(self, id: _Optional[str] = ..., model_name: _Optional[str] = ..., algorithm: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., stage: _Optional[_Union[JobStage, str]] = ..., error: _Optional[str] = ..., model_version: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., request: _Optional[_Union[StartTrainingRequest, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_by: _Optional[str] = ..., task: _Optional[_Union[_common_pb2.Task, str]] = ..., resources: _Optional[_Union[JobResources, _Mapping]] = ..., placement: _Optional[_Union[JobPlacement, _Mapping]] = ..., search: _Optional[_Union[_search_pb2.SearchProgress, _Mapping]] = ..., promotion: _Optional[_Union[_search_pb2.Promotion, _Mapping]] = ...) -> None: ...

class GetTrainingJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListTrainingJobsRequest(_message.Message):
    __slots__ = ("model_name", "states", "limit")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    states: _containers.RepeatedScalarFieldContainer[JobState]
    limit: int
    def __init__(self, model_name: _Optional[str] = ..., states: _Optional[_Iterable[_Union[JobState, str]]] = ..., limit: _Optional[int] = ...) -> None: ...

class ListTrainingJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[TrainingJob]
    def __init__(self, jobs: _Optional[_Iterable[_Union[TrainingJob, _Mapping]]] = ...) -> None: ...

class CancelTrainingJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class WatchTrainingJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...
