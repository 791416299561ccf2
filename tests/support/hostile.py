"""Helpers of the hostile-input suite and the fuzz test (tests/integration/test_hostile.py,
test_fuzz.py): data-directory snapshots, raw calls to any method, the still-serving
check, the seeded home and the table of every served method."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from highpeaks_ml.registry.local import LocalModelStore
from highpeaks_ml.v1 import (
    common_pb2,
    predict_pb2,
    predict_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    train_pb2_grpc,
)
from tests.conftest import ROOT, ServerProcess
from tests.support import serving_models as sm

SERVING = health_pb2.HealthCheckResponse.SERVING
OK = grpc.StatusCode.OK
NOT_FOUND = grpc.StatusCode.NOT_FOUND
#: Codes bad input must never get.
NEVER = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
F32 = common_pb2.DATA_TYPE_FLOAT32


def snapshot(home: Path) -> dict[str, Any]:
    """Every file's (size, mtime, inode, sha256 below 1 MiB) and every directory's presence.

    Directory mtimes are left out on purpose: an accepted-then-refused upload
    may create and remove a staging entry, which touches its parent's mtime
    and nothing else.
    """
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(home):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), home) + "/"] = None
        for f in filenames:
            path = os.path.join(dirpath, f)
            try:
                st = os.stat(path)
                digest = None
                if st.st_size < 1 << 20:
                    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            except FileNotFoundError:
                continue  # removed while we walked: absent, as far as we can tell
            out[os.path.relpath(path, home)] = (st.st_size, st.st_mtime_ns, st.st_ino, digest)
    return out


def _diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    keys = sorted(set(before) | set(after))
    return [
        f"{k}: {before.get(k)} -> {after.get(k)}" for k in keys if before.get(k) != after.get(k)
    ]


@contextlib.contextmanager
def unchanged(home: Path, settle_s: float = 0.0) -> Iterator[None]:
    """Assert the data directory is the same after the block.

    ``settle_s`` > 0 allows the server that long to finish cleaning up after a
    call the CLIENT ended (a cancel, a transport-level refusal), which the
    server learns about asynchronously; refusals the server sends itself are
    checked at once (its handler has finished before the status goes out).
    """
    before = snapshot(home)
    yield
    deadline = time.monotonic() + settle_s
    while (after := snapshot(home)) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert after == before, _diff(before, after)


def status_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    """Run ``call``; its status code and details (OK, "" when it succeeds)."""
    try:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return OK, ""


def call_raw(
    channel: grpc.Channel,
    method: str,
    kind: tuple[bool, bool],
    messages: list[bytes],
    metadata: tuple[tuple[str, str], ...] = (),
    responses: list[bytes] | None = None,
) -> tuple[grpc.StatusCode, str]:
    """Send ``messages`` as raw bytes (no serializer) to ``method``.

    For a response stream one answer is enough (a health Watch never ends):
    the first message means OK and the call is cancelled. The response
    messages (bytes) are appended to ``responses`` when given.
    """
    client_streaming, server_streaming = kind
    kw: dict[str, Any] = {"timeout": 15, "metadata": metadata}
    got: list[bytes] = [] if responses is None else responses
    try:
        if client_streaming and server_streaming:
            it = channel.stream_stream(method)(iter(messages), **kw)
            got.extend(it)
        elif client_streaming:
            got.append(channel.stream_unary(method)(iter(messages), **kw))
        elif server_streaming:
            it = channel.unary_stream(method)(messages[0], **kw)
            first = next(it, None)
            if first is not None:
                got.append(first)
            it.cancel()
        else:
            got.append(channel.unary_unary(method)(messages[0], **kw))
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return OK, ""


@dataclass
class Stubs:
    channel: grpc.Channel
    predict: predict_pb2_grpc.PredictServiceStub
    registry: registry_pb2_grpc.ModelRegistryServiceStub
    train: train_pb2_grpc.TrainServiceStub
    health: health_pb2_grpc.HealthStub

    @classmethod
    def of(cls, channel: grpc.Channel) -> Stubs:
        return cls(
            channel,
            predict_pb2_grpc.PredictServiceStub(channel),
            registry_pb2_grpc.ModelRegistryServiceStub(channel),
            train_pb2_grpc.TrainServiceStub(channel),
            health_pb2_grpc.HealthStub(channel),
        )


def good_predict(name: str = "iris", version: int = 1, rows: int = 5) -> predict_pb2.PredictRequest:
    x = sm.iris_logreg().X[:rows]
    return predict_pb2.PredictRequest(
        model=common_pb2.ModelRef(name=name, version=version),
        tensor=common_pb2.Tensor(data_type=F32, shape=list(x.shape), raw_data=x.tobytes()),
    )


def assert_serves(stubs: Stubs, metadata: tuple[tuple[str, str], ...] = ()) -> None:
    """Health SERVING and a Predict that gives scikit-learn's labels, on this channel."""
    health = stubs.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert health.status == SERVING
    resp = stubs.predict.Predict(good_predict(), timeout=30, metadata=metadata)
    exp = sm.iris_logreg()
    assert resp.model_version == 1
    labels = np.frombuffer(resp.labels.raw_data, "<i8") if resp.labels.raw_data else None
    if labels is None:
        labels = np.array(resp.labels.int64_values)
    np.testing.assert_array_equal(labels, exp.estimator.predict(exp.X[:5]))


@dataclass
class Live:
    """A running server with its home, a channel and stubs on it."""

    proc: ServerProcess
    home: Path
    stubs: Stubs

    def refused(
        self,
        call: Callable[[Stubs], Any],
        code: grpc.StatusCode,
        *needles: str,
        settle_s: float = 0.0,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> str:
        """``call`` fails with ``code`` (details containing ``needles``), leaves the
        home unchanged, and the server still serves afterwards."""
        with unchanged(self.home, settle_s):
            got, details = status_of(lambda: call(self.stubs))
        assert got == code, (got, details)
        for needle in needles:
            assert needle in details, details
        assert str(self.home) not in details and "Traceback" not in details
        assert_serves(self.stubs, metadata)
        return details


def seed(home: Path) -> None:
    """iris v1 (production) and v2, mixed, prices, a tampered 'broken' model, a 4 MB
    forest 'slow', and 'race' v1 (production) for the race test."""
    store = LocalModelStore(home)
    store.start()
    iris, iris2 = sm.iris_logreg(), sm.iris_logreg(c=0.01)
    store.publish("iris", iris.onnx, iris.meta, ("production",))
    store.publish("iris", iris2.onnx, iris2.meta)
    for exp in (sm.mixed_classifier(), sm.linear_regressor()):
        store.publish(exp.meta.model_name, exp.onnx, exp.meta)
    slow = sm.deep_forest()
    store.publish("slow", slow.onnx, slow.meta)
    store.publish("race", iris.onnx, iris.meta, ("production",))
    sm.publish_broken(store, home)


def open_fds(proc: ServerProcess) -> int:
    return len(os.listdir(f"/proc/{proc.proc.pid}/fd"))


def method_table() -> dict[str, tuple[bool, bool]]:
    """Every method of every service in the generated code of the package (``_pb2``
    modules and ``.binpb`` descriptor sets, so a new service or method is covered
    without touching this file), plus health and reflection: full path ->
    (client streaming, server streaming)."""
    modules: list[Any] = [health_pb2, reflection_pb2]
    package = ROOT / "highpeaks_ml"
    for path in sorted(package.rglob("*_pb2.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        modules.append(importlib.import_module(".".join(rel.parts)))
    out = {}
    for module in modules:
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                out[f"/{service.full_name}/{m.name}"] = (m.client_streaming, m.server_streaming)
    # Services kept out of protobuf's default pool ship as serialized descriptor sets.
    for path in sorted(package.rglob("*.binpb")):
        for fd in descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()).file:
            for svc in fd.service:
                full = f"{fd.package}.{svc.name}" if fd.package else svc.name
                for mp in svc.method:
                    out[f"/{full}/{mp.name}"] = (mp.client_streaming, mp.server_streaming)
    return out


def log_errors(proc: ServerProcess) -> list[str]:
    return [
        line
        for line in proc.output().splitlines()
        if "unexpected error" in line or "Traceback" in line or "never retrieved" in line
    ]


def versions_of(stubs: Stubs, name: str) -> list[int]:
    code, _ = status_of(lambda: stubs.registry.GetModel(registry_pb2.GetModelRequest(name=name)))
    if code == NOT_FOUND:
        return []
    model = stubs.registry.GetModel(registry_pb2.GetModelRequest(name=name))
    return [v.version for v in model.versions]


def _reflected(
    channel: grpc.Channel,
) -> tuple[list[str], dict[str, descriptor_pb2.FileDescriptorProto]]:
    """The service names the server lists through reflection, and every file
    (with its dependencies) reflection gives for them, by file name."""
    from grpc_reflection.v1alpha import reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    (listing,) = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    names = [svc.name for svc in listing.list_services_response.service]
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for name in names:
        req = reflection_pb2.ServerReflectionRequest(file_containing_symbol=name)
        (resp,) = stub.ServerReflectionInfo(iter([req]), timeout=10)
        for raw in resp.file_descriptor_response.file_descriptor_proto:
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
            files.setdefault(fd.name, fd)
    return names, files


def served_methods(channel: grpc.Channel) -> set[str]:
    """Every method path (``/package.Service/Method``) the server lists through reflection."""
    return set(served_request_types(channel))


def served_request_types(channel: grpc.Channel) -> dict[str, Descriptor]:
    """Every served method path -> its request message's descriptor, both built
    from what the server gives through reflection (as grpcurl sees them)."""
    names, files = _reflected(channel)
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file_name: str) -> None:
        if file_name in added:
            return
        added.add(file_name)
        for dep in files[file_name].dependency:
            add(dep)
        pool.Add(files[file_name])

    for file_name in files:
        add(file_name)
    out = {}
    for name in names:
        service = pool.FindServiceByName(name)
        for m in service.methods:
            out[f"/{service.full_name}/{m.name}"] = m.input_type
    return out


def text_fields(message: Descriptor, prefix: str = "") -> list[str]:
    """Paths of every field of ``message`` a caller fills with text: string fields
    (``model.name``, repeated ones too), and maps and ``google.protobuf.Struct``
    fields, whose keys are text (marked ``{}``: ``hyperparameters{}``). Nested
    messages are walked; other well-known types are not (they hold no names)."""
    out = []
    for f in message.fields:
        path = prefix + f.name
        if f.type == FieldDescriptor.TYPE_STRING:
            out.append(path)
        elif f.type == FieldDescriptor.TYPE_MESSAGE:
            sub: Any = f.message_type
            if sub.full_name == "google.protobuf.Struct" or sub.GetOptions().map_entry:
                out.append(path + "{}")
            elif not sub.full_name.startswith("google.protobuf."):
                out.extend(text_fields(sub, path + "."))
    return out


def put_text(message: Any, path: str, text: str) -> None:
    """Put ``text`` at ``path`` (a ``text_fields`` path) of ``message``, in place:
    a string field is set (a repeated one gets it appended), a map or Struct gets
    it as a key (of the value its existing entries have, or a true/1.0 value).
    Repeated messages on the way get the text in their first element (one is
    added when there is none)."""
    *parents, last = path.split(".")
    target = message
    for part in parents:
        field = getattr(target, part)
        if hasattr(field, "add"):  # repeated message
            field = field[0] if len(field) else field.add()
        target = field
    if last.endswith("{}"):
        holder = getattr(target, last[:-2])
        if hasattr(holder, "add"):  # repeated Struct (rows)
            holder = holder[0] if len(holder) else holder.add()
        if hasattr(holder, "fields"):  # google.protobuf.Struct
            holder[text] = 1.0
        elif hasattr(holder, "get_or_create"):  # map of messages (OIP parameters)
            holder[text].bool_param = True
        else:
            holder[text] = holder[next(iter(holder))] if holder else True
        return
    field = getattr(target, last)
    if hasattr(field, "append"):
        field.append(text)
    else:
        setattr(target, last, text)
