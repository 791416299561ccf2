"""Our Open Inference Protocol file against tritonclient's, and the descriptor-pool choice.

Wire compatibility rests on names, numbers, labels and types, so every message
reachable from our service is compared field by field (recursively) with the
message of the same full name in tritonclient's ``grpc_service.proto``, and
every method's request/response types with Triton's.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from highpeaks_ml.api import oip_messages
from tests.conftest import ROOT

# tritonclient's generated module registers inference.* in the default pool; it
# is imported here, in the same process as highpeaks_ml.api.oip_messages.
service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")

TRITON = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
OURS = oip_messages.SERVICE

IMPLEMENTED = {
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelStreamInfer",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
}


#: Fields of the Open Inference Protocol's own gRPC file (open-inference-protocol,
#: specification/protocol/open_inference_grpc.proto) that Triton's lacks:
#: (message, number) -> name. tritonclient skips them as unknown fields.
OIP_ONLY = {("inference.ModelMetadataResponse", 6): "properties"}


def _label(f: FieldDescriptor) -> str:
    return "repeated" if f.is_repeated else "optional"


def _compare(ours: Descriptor, theirs: Descriptor, seen: set[str]) -> int:
    """Assert ``ours`` matches ``theirs`` field by field; the number of messages compared."""
    if ours.full_name in seen:
        return 0
    seen.add(ours.full_name)
    assert ours.full_name == theirs.full_name
    assert ours.GetOptions().map_entry == theirs.GetOptions().map_entry, ours.full_name
    mine = {f.number: f for f in ours.fields}
    for (message, number), name in OIP_ONLY.items():
        if message == ours.full_name:
            extra = mine.pop(number)
            assert extra.name == name and extra.message_type.GetOptions().map_entry, name
            seen.add(extra.message_type.full_name)  # map<string, string>: nothing to compare
    ref = {f.number: f for f in theirs.fields}
    assert mine.keys() == ref.keys(), (ours.full_name, sorted(mine), sorted(ref))
    count = 1
    for number, f in mine.items():
        t = ref[number]
        where = f"{ours.full_name}.{f.name}"
        assert f.name == t.name, where
        assert f.type == t.type, where
        assert _label(f) == _label(t), where
        assert (f.containing_oneof and f.containing_oneof.name) == (
            t.containing_oneof and t.containing_oneof.name
        ), where
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            assert f.message_type.full_name == t.message_type.full_name, where
            count += _compare(f.message_type, t.message_type, seen)
        if f.type == FieldDescriptor.TYPE_ENUM:
            assert f.enum_type.full_name == t.enum_type.full_name, where
    return count


def test_service_and_package_names():
    assert OURS.full_name == TRITON.full_name == "inference.GRPCInferenceService"
    assert OURS.file.package == "inference"
    assert {m.name for m in OURS.methods} == IMPLEMENTED


def test_every_method_has_tritons_request_and_response_types():
    for m in OURS.methods:
        t = TRITON.methods_by_name[m.name]
        assert m.input_type.full_name == t.input_type.full_name, m.name
        assert m.output_type.full_name == t.output_type.full_name, m.name
        assert (m.client_streaming, m.server_streaming) == (
            t.client_streaming,
            t.server_streaming,
        ), m.name


def test_every_message_matches_tritons_field_by_field():
    seen: set[str] = set()
    compared = 0
    for m in OURS.methods:
        t = TRITON.methods_by_name[m.name]
        compared += _compare(m.input_type, t.input_type, seen)
        compared += _compare(m.output_type, t.output_type, seen)
    # Every message in our file is reachable from the service, so none escapes.
    declared = set()

    def walk(d: Descriptor) -> None:
        declared.add(d.full_name)
        for nested in d.nested_types:
            walk(nested)

    for d in OURS.file.message_types_by_name.values():
        walk(d)
    assert declared == seen
    assert compared == len(seen) - len(OIP_ONLY) >= 30


def test_messages_interoperate_on_the_wire():
    req = service_pb2.ModelInferRequest(model_name="m", model_version="2", id="x")
    inp = req.inputs.add(name="input", datatype="FP32", shape=[1, 2])
    inp.contents.fp32_contents.extend([1.5, 2.5])
    req.parameters["binary_data_output"].bool_param = True
    req.raw_input_contents.append(b"\x00\x01")
    ours = oip_messages.ModelInferRequest.FromString(req.SerializeToString())
    assert ours.inputs[0].contents.fp32_contents == [1.5, 2.5]
    assert ours.parameters["binary_data_output"].bool_param is True
    back = service_pb2.ModelInferRequest.FromString(ours.SerializeToString())
    assert back == req


def test_stream_responses_interoperate_on_the_wire():
    """ModelStreamInfer's answers, as the server builds them, read by tritonclient."""
    from highpeaks_ml.api.converters import oip as conv
    from highpeaks_ml.errors import NotFound

    assert OURS.methods_by_name["ModelStreamInfer"].output_type.full_name == (
        "inference.ModelStreamInferResponse"
    )
    ok = oip_messages.ModelStreamInferResponse()
    ok.infer_response.model_name = "m"
    ok.infer_response.id = "r1"
    ok.infer_response.raw_output_contents.append(b"\x01\x02")
    theirs = service_pb2.ModelStreamInferResponse.FromString(ok.SerializeToString())
    assert theirs.error_message == ""
    assert (theirs.infer_response.model_name, theirs.infer_response.id) == ("m", "r1")
    assert list(theirs.infer_response.raw_output_contents) == [b"\x01\x02"]

    err = conv.stream_error(NotFound("model 'nope' not found"), "r2")
    theirs = service_pb2.ModelStreamInferResponse.FromString(err.SerializeToString())
    assert theirs.error_message == "model 'nope' not found"
    assert theirs.infer_response.id == "r2"  # as Triton: names the request that failed
    assert theirs.infer_response.parameters["triton_final_response"].bool_param is True
    # an unexpected error: the generic message (never empty: tritonclient would
    # take an empty error_message for a success)
    err = conv.stream_error(RuntimeError("/secret/path"), "")
    assert err.error_message == "internal error; see the server log for this request id"


def test_generic_handler_serves_each_method_as_its_descriptor_declares():
    import grpc

    from highpeaks_ml.api.servicers.oip import generic_handler

    handler = generic_handler(None)  # the app is only stored, never used here

    class Details(grpc.HandlerCallDetails):
        def __init__(self, method: str) -> None:
            self.method = method
            self.invocation_metadata = ()

    for m in OURS.methods:
        h = handler.service(Details(f"/{oip_messages.SERVICE_NAME}/{m.name}"))
        assert (h.request_streaming, h.response_streaming) == (
            m.client_streaming,
            m.server_streaming,
        ), m.name
    stream = handler.service(Details(f"/{oip_messages.SERVICE_NAME}/ModelStreamInfer"))
    assert stream.stream_stream is not None


def test_nothing_of_the_protocol_is_in_the_default_pool_from_us():
    # tritonclient registered inference.* from "grpc_service.proto"; our file
    # name must not be in the default pool (it lives in the private pool only).
    default = descriptor_pool.Default()
    assert default.FindMessageTypeByName("inference.ModelInferRequest").file.name == (
        "grpc_service.proto"
    )
    with pytest.raises(KeyError):
        default.FindFileByName(OURS.file.name)
    assert oip_messages.ModelInferRequest.DESCRIPTOR.file.pool is oip_messages.POOL


@pytest.mark.parametrize(
    "first, second",
    [
        ("tritonclient.grpc", "highpeaks_ml.api.servicers"),
        ("highpeaks_ml.api.servicers", "tritonclient.grpc"),
    ],
)
def test_tritonclient_and_the_server_import_together(first, second):
    """In a fresh process, in both orders: no 'duplicate symbol'."""
    code = (
        f"import {first}, {second}\n"
        "import tritonclient.grpc.service_pb2 as t\n"
        "from highpeaks_ml.api import oip_messages as o\n"
        "r = o.ModelInferRequest(model_name='m')\n"
        "assert t.ModelInferRequest.FromString(r.SerializeToString()).model_name == 'm'\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_reflection_pool_has_every_service_file():
    from grpc_health.v1 import health_pb2

    from highpeaks_ml.v1 import predict_pb2

    names = (
        predict_pb2.DESCRIPTOR.services_by_name["PredictService"].full_name,
        oip_messages.SERVICE_NAME,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    )
    pool = oip_messages.reflection_pool(names)
    for name in names:
        assert pool.FindServiceByName(name).full_name == name
    # dependencies came along (predict.proto imports common.proto and struct.proto)
    assert pool.FindFileByName("google/protobuf/struct.proto")
    assert pool.FindMessageTypeByName("inference.ModelInferRequest").file.name == (
        "highpeaks_ml/oip/v2/open_inference.proto"
    )


def test_scope_table_has_exactly_the_served_methods():
    from highpeaks_ml.api.auth import ADMIN, METHOD_SCOPES, PREDICT

    prefix = f"/{oip_messages.SERVICE_NAME}/"
    table = {m: s for m, s in METHOD_SCOPES.items() if m.startswith(prefix)}
    assert set(table) == {prefix + m.name for m in OURS.methods}
    admin = {prefix + "RepositoryModelLoad", prefix + "RepositoryModelUnload"}
    assert all(s == (ADMIN if m in admin else PREDICT) for m, s in table.items())
