from google.protobuf import struct_pb2 as _struct_pb2
from highpeaks_ml.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OutputKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_KIND_UNSPECIFIED: _ClassVar[OutputKind]
    OUTPUT_KIND_LABELS: _ClassVar[OutputKind]
    OUTPUT_KIND_PROBABILITIES: _ClassVar[OutputKind]
    OUTPUT_KIND_VALUES: _ClassVar[OutputKind]
OUTPUT_KIND_UNSPECIFIED: OutputKind
OUTPUT_KIND_LABELS: OutputKind
OUTPUT_KIND_PROBABILITIES: OutputKind
OUTPUT_KIND_VALUES: OutputKind

class FeatureRows(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    def __init__(self, rows: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model", "tensor", "rows", "outputs", "raw_output", "id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    RAW_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    tensor: _common_pb2.Tensor
    rows: FeatureRows
    outputs: _containers.RepeatedScalarFieldContainer[OutputKind]
    raw_output: bool
    id: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., tensor: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., rows: _Optional[_Union[FeatureRows, _Mapping]] = ..., outputs: _Optional[_Iterable[_Union[OutputKind, str]]] = ..., raw_output: _Optional[bool] = ..., id: _Optional[str] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "id", "labels", "probabilities", "class_labels", "values", "execution_provider")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    CLASS_LABELS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: int
    id: str
    labels: _common_pb2.Tensor
    probabilities: _common_pb2.Tensor
    class_labels: _containers.RepeatedScalarFieldContainer[str]
    values: _common_pb2.Tensor
    execution_provider: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., id: _Optional[str] = ..., labels: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., probabilities: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., class_labels: _Optional[_Iterable[str]] = ..., values: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., execution_provider: _Optional[str] = ...) -> None: ...

class PredictStreamResponse(_message.Message):
    __slots__ = ("response", "error", "id")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    response: PredictResponse
    error: _common_pb2.StreamError
    id: str
    def __init__(self, response: _Optional[_Union[PredictResponse, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.StreamError, _Mapping]] = ..., id: _Optional[str] = ...) -> None: ...
