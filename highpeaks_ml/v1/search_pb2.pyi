from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SearchStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_STRATEGY_UNSPECIFIED: _ClassVar[SearchStrategy]
    SEARCH_STRATEGY_GRID: _ClassVar[SearchStrategy]
    SEARCH_STRATEGY_RANDOM: _ClassVar[SearchStrategy]
    SEARCH_STRATEGY_TPE: _ClassVar[SearchStrategy]

class TrialState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRIAL_STATE_UNSPECIFIED: _ClassVar[TrialState]
    TRIAL_STATE_SUCCEEDED: _ClassVar[TrialState]
    TRIAL_STATE_FAILED: _ClassVar[TrialState]
    TRIAL_STATE_CANCELLED: _ClassVar[TrialState]
SEARCH_STRATEGY_UNSPECIFIED: SearchStrategy
SEARCH_STRATEGY_GRID: SearchStrategy
SEARCH_STRATEGY_RANDOM: SearchStrategy
SEARCH_STRATEGY_TPE: SearchStrategy
TRIAL_STATE_UNSPECIFIED: TrialState
TRIAL_STATE_SUCCEEDED: TrialState
TRIAL_STATE_FAILED: TrialState
TRIAL_STATE_CANCELLED: TrialState

class ParamValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Value]
    def __init__(self, values: _Optional[_Iterable[_Union[_struct_pb2.Value, _Mapping]]] = ...) -> None: ...

class ParamRange(_message.Message):
    __slots__ = ("low", "high", "log")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    low: float
    high: float
    log: bool
    def __init__(self, low: _Optional[float] = ..., high: _Optional[float] = ..., log: _Optional[bool] = ...) -> None: ...

class ParamSpace(_message.Message):
    __slots__ = ("name", "choice", "range")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CHOICE_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    choice: ParamValues
    range: ParamRange
    def __init__(self, name: _Optional[str] = ..., choice: _Optional[_Union[ParamValues, _Mapping]] = ..., range: _Optional[_Union[ParamRange, _Mapping]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("strategy", "space", "folds", "metric", "max_trials", "parallelism", "time_budget_seconds", "seed")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    FOLDS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MAX_TRIALS_FIELD_NUMBER: _ClassVar[int]
    PARALLELISM_FIELD_NUMBER: _ClassVar[int]
    TIME_BUDGET_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    strategy: SearchStrategy
    space: _containers.RepeatedCompositeFieldContainer[ParamSpace]
    folds: int
    metric: str
    max_trials: int
    parallelism: int
    time_budget_seconds: float
    seed: int
    def __init__(self, strategy: _Optional[_Union[SearchStrategy, str]] = ..., space: _Optional[_Iterable[_Union[ParamSpace, _Mapping]]] = ..., folds: _Optional[int] = ..., metric: _Optional[str] = ..., max_trials: _Optional[int] = ..., parallelism: _Optional[int] = ..., time_budget_seconds: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class Trial(_message.Message):
    __slots__ = ("number", "params", "fold_scores", "mean", "std", "seconds", "state", "error")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    FOLD_SCORES_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    number: int
    params: _struct_pb2.Struct
    fold_scores: _containers.RepeatedScalarFieldContainer[float]
    mean: float
    std: float
    seconds: float
    state: TrialState
    error: str
    def __init__(self, number: _Optional[int] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., fold_scores: _Optional[_Iterable[float]] = ..., mean: _Optional[float] = ..., std: _Optional[float] = ..., seconds: _Optional[float] = ..., state: _Optional[_Union[TrialState, str]] = ..., error: _Optional[str] = ...) -> None: ...

class SearchProgress(_message.Message):
    __slots__ = ("trials_total", "trials_done", "trials_failed", "trials_running", "metric", "greater_is_better", "best_score", "best_trial", "best_params")
    TRIALS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TRIALS_DONE_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FAILED_FIELD_NUMBER: _ClassVar[int]
    TRIALS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    GREATER_IS_BETTER_FIELD_NUMBER: _ClassVar[int]
    BEST_SCORE_FIELD_NUMBER: _ClassVar[int]
    BEST_TRIAL_FIELD_NUMBER: _ClassVar[int]
    BEST_PARAMS_FIELD_NUMBER: _ClassVar[int]
    trials_total: int
    trials_done: int
    trials_failed: int
    trials_running: int
    metric: str
    greater_is_better: bool
    best_score: float
    best_trial: int
    best_params: _struct_pb2.Struct
    def __init__(self, trials_total: _Optional[int] = ..., trials_done: _Optional[int] = ..., trials_failed: _Optional[int] = ..., trials_running: _Optional[int] = ..., metric: _Optional[str] = ..., greater_is_better: _Optional[bool] = ..., best_score: _Optional[float] = ..., best_trial: _Optional[int] = ..., best_params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("strategy", "space", "folds", "metric", "greater_is_better", "seed", "trials", "best_trial", "best_score", "best_params", "stopped_by_budget")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    FOLDS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    GREATER_IS_BETTER_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    BEST_TRIAL_FIELD_NUMBER: _ClassVar[int]
    BEST_SCORE_FIELD_NUMBER: _ClassVar[int]
    BEST_PARAMS_FIELD_NUMBER: _ClassVar[int]
    STOPPED_BY_BUDGET_FIELD_NUMBER: _ClassVar[int]
    strategy: SearchStrategy
    space: _containers.RepeatedCompositeFieldContainer[ParamSpace]
    folds: int
    metric: str
    greater_is_better: bool
    seed: int
    trials: _containers.RepeatedCompositeFieldContainer[Trial]
    best_trial: int
    best_score: float
    best_params: _struct_pb2.Struct
    stopped_by_budget: bool
    def __init__(self, strategy: _Optional[_Union[SearchStrategy, str]] = ..., space: _Optional[_Iterable[_Union[ParamSpace, _Mapping]]] = ..., folds: _Optional[int] = ..., metric: _Optional[str] = ..., greater_is_better: _Optional[bool] = ..., seed: _Optional[int] = ..., trials: _Optional[_Iterable[_Union[Trial, _Mapping]]] = ..., best_trial: _Optional[int] = ..., best_score: _Optional[float] = ..., best_params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., stopped_by_budget: _Optional[bool] = ...) -> None: ...

class Promotion(_message.Message):
    __slots__ = ("alias", "metric", "greater_is_better", "new_score", "current_version", "current_score", "promoted", "reason")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    GREATER_IS_BETTER_FIELD_NUMBER: _ClassVar[int]
    NEW_SCORE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CURRENT_SCORE_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    alias: str
    metric: str
    greater_is_better: bool
    new_score: float
    current_version: int
    current_score: float
    promoted: bool
    reason: str
    def __init__(self, alias: _Optional[str] = ..., metric: _Optional[str] = ..., greater_is_better: _Optional[bool] = ..., new_score: _Optional[float] = ..., current_version: _Optional[int] = ..., current_score: _Optional[float] = ..., promoted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...
