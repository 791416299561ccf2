"""Open Inference Protocol messages, built in a private descriptor pool.

tritonclient (and any generated ``grpc_service_pb2``) registers the
``inference.*`` messages in protobuf's default descriptor pool; a generated
``_pb2.py`` of our own would register the same full names there, and a
process importing both would fail with "duplicate symbol". So nothing of the
protocol is registered in the default pool: ``scripts/gen_protos.py`` compiles
``protos/highpeaks_ml/oip/v2/open_inference.proto`` to a serialized
FileDescriptorSet (``highpeaks_ml/oip/v2/open_inference.binpb``), this module
loads it into its own ``DescriptorPool`` and builds the message classes from
it. The wire format does not depend on the pool, so the classes speak
exactly what tritonclient's do.

``reflection_pool`` builds the pool server reflection answers from: the
files of the highpeaks_ml, health and reflection services (copied from the
default pool, with their dependencies) plus the protocol's file, so grpcurl
lists and describes ``inference.GRPCInferenceService`` too.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor

#: The serialized FileDescriptorSet generated from the protocol's .proto.
DESCRIPTOR_SET_PATH = Path(__file__).resolve().parent.parent / "oip" / "v2" / "open_inference.binpb"
#: The protocol's package (fixed by the protocol: wire compatibility).
PACKAGE = "inference"
#: Full name of the protocol's service.
SERVICE_NAME = "inference.GRPCInferenceService"


def _load() -> tuple[descriptor_pool.DescriptorPool, list[descriptor_pb2.FileDescriptorProto]]:
    data = DESCRIPTOR_SET_PATH.read_bytes()
    files = list(descriptor_pb2.FileDescriptorSet.FromString(data).file)
    pool = descriptor_pool.DescriptorPool()
    for f in files:  # protoc writes dependencies first
        pool.AddSerializedFile(f.SerializeToString())
    return pool, files


POOL, _FILES = _load()
#: The protocol's service descriptor (from the private pool).
SERVICE: ServiceDescriptor = POOL.FindServiceByName(SERVICE_NAME)


def message_class(name: str) -> Any:
    """The message class of ``inference.<name>`` (nested names with dots)."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


# The classes the server uses. They are typed Any: they are built at run time,
# so no stubs describe their fields.
ServerLiveRequest = message_class("ServerLiveRequest")
ServerLiveResponse = message_class("ServerLiveResponse")
ServerReadyRequest = message_class("ServerReadyRequest")
ServerReadyResponse = message_class("ServerReadyResponse")
ModelReadyRequest = message_class("ModelReadyRequest")
ModelReadyResponse = message_class("ModelReadyResponse")
ServerMetadataRequest = message_class("ServerMetadataRequest")
ServerMetadataResponse = message_class("ServerMetadataResponse")
ModelMetadataRequest = message_class("ModelMetadataRequest")
ModelMetadataResponse = message_class("ModelMetadataResponse")
ModelInferRequest = message_class("ModelInferRequest")
ModelInferResponse = message_class("ModelInferResponse")
ModelStreamInferResponse = message_class("ModelStreamInferResponse")
ModelStatisticsRequest = message_class("ModelStatisticsRequest")
ModelStatisticsResponse = message_class("ModelStatisticsResponse")
RepositoryIndexRequest = message_class("RepositoryIndexRequest")
RepositoryIndexResponse = message_class("RepositoryIndexResponse")
RepositoryModelLoadRequest = message_class("RepositoryModelLoadRequest")
RepositoryModelLoadResponse = message_class("RepositoryModelLoadResponse")
RepositoryModelUnloadRequest = message_class("RepositoryModelUnloadRequest")
RepositoryModelUnloadResponse = message_class("RepositoryModelUnloadResponse")


def method_types(method: str) -> tuple[Any, Any]:
    """(request class, response class) of one RPC of the service."""
    m = SERVICE.methods_by_name[method]
    return (
        message_factory.GetMessageClass(m.input_type),
        message_factory.GetMessageClass(m.output_type),
    )


def reflection_pool(service_names: Iterable[str]) -> descriptor_pool.DescriptorPool:
    """A pool with the file of every service in ``service_names`` and its dependencies.

    The protocol's service comes from the private pool, every other service
    from protobuf's default pool (where the generated modules registered them).
    """
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(fd: FileDescriptor) -> None:
        if fd.name in added:
            return
        for dep in fd.dependencies:
            add(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        pool.AddSerializedFile(proto.SerializeToString())
        added.add(fd.name)

    default = descriptor_pool.Default()
    for name in service_names:
        source = POOL if name.startswith(PACKAGE + ".") else default
        add(source.FindFileContainingSymbol(name))
    return pool


__all__ = [
    "DESCRIPTOR_SET_PATH",
    "POOL",
    "SERVICE",
    "SERVICE_NAME",
    "message_class",
    "method_types",
    "reflection_pool",
]
