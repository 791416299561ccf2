"""Servicer of inference.GRPCInferenceService (the KServe Open Inference Protocol v2).

A second front door to the same serving core as PredictService: each method
converts the request (``api/converters/oip.py``), calls the ModelManager and
converts back. Domain errors are raised and mapped by the interceptor like
everywhere else; auth scopes and metrics come from the same interceptors.

The message classes live in a private descriptor pool (``api/oip_messages.py``),
so the service is registered with a generic handler built from them instead
of a generated ``add_..._to_server``; each method gets the handler kind its
descriptor declares (ModelStreamInfer: stream-stream).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio

from highpeaks_ml import __version__
from highpeaks_ml.api import fastpath
from highpeaks_ml.api import oip_messages as msgs
from highpeaks_ml.api.converters import oip as conv
from highpeaks_ml.api.servicers._streams import pipelined
from highpeaks_ml.serving.inputs import served_outputs

if TYPE_CHECKING:
    from highpeaks_ml.api.server import App
    from highpeaks_ml.serving.manager import ModelManager


class InferenceServicer:
    """GRPCInferenceService: convert, call the ModelManager, convert back."""

    def __init__(self, app: App) -> None:
        self.app = app

    @property
    def models(self) -> ModelManager:
        return self.app.components["models"]  # type: ignore[no-any-return]

    async def ServerLive(self, request: Any, context: aio.ServicerContext) -> Any:
        """Live whenever it answers."""
        return msgs.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: aio.ServicerContext) -> Any:
        """Ready when grpc.health.v1 says SERVING (start-up done, not shutting down)."""
        return msgs.ServerReadyResponse(ready=self.app.ready)

    async def ModelReady(self, request: Any, context: aio.ServicerContext) -> Any:
        """Whether the version named is loaded (False for an unknown model or version)."""
        name = conv.required(request.name, "name")
        version, alias = conv.version_selector(request.version, "version")
        ready = await self.models.model_ready(name, version, alias)
        return msgs.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: Any, context: aio.ServicerContext) -> Any:
        """Server name, version and the implemented extensions."""
        return conv.server_metadata(__version__)

    async def ModelMetadata(self, request: Any, context: aio.ServicerContext) -> Any:
        """Versions, platform, inputs and outputs of the version named (latest by default)."""
        name = conv.required(request.name, "name")
        version, alias = conv.version_selector(request.version, "version")
        info, meta = await self.models.describe(name, version, alias)
        return conv.model_metadata(info, meta, served_outputs(meta))

    async def ModelInfer(self, request: Any, context: aio.ServicerContext) -> Any:
        """One inference through the serving core the native Predict uses."""
        models = self.models
        fast = fastpath.infer(models, request, context)  # None: the general path
        if fast is not None:
            return fast
        query, raw = conv.query_from_infer(request)
        pred = await models.predict(query, time_limit=context.time_remaining())
        return conv.infer_response(pred, request.id, raw)

    async def _stream_one(self, request: Any, context: aio.ServicerContext) -> Any:
        try:
            models = self.models
            fast = fastpath.infer(models, request, context)
            if fast is not None:
                return conv.stream_response_of(fast)
            query, raw = conv.query_from_infer(request)
            pred = await models.predict(query, time_limit=context.time_remaining())
            return conv.stream_infer_response(pred, request.id, raw)
        except Exception as exc:  # answered in-stream; the stream goes on
            return conv.stream_error(exc, request.id)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """ModelInfer over a stream: each request answered in order, errors in-stream,
        up to STREAM_WINDOW requests worked on at once (as PredictStream)."""
        answers = pipelined(request_iterator, lambda r: self._stream_one(r, context))
        async with contextlib.aclosing(answers):  # a cancelled call stops the work at once
            async for response in answers:
                yield response

    async def ModelStatistics(self, request: Any, context: aio.ServicerContext) -> Any:
        """Statistics of every model, every version of one model, or one version."""
        version, alias = conv.version_selector(request.version, "version")
        if not request.name and (version is not None or alias is not None):
            conv.required(request.name, "name")  # a version needs a model
        snaps = await self.models.statistics(request.name or None, version, alias)
        return conv.statistics(snaps)

    async def RepositoryIndex(self, request: Any, context: aio.ServicerContext) -> Any:
        """Every version in the store with its state here."""
        conv.repository_name(request.repository_name)
        states = await self.models.repository_index()
        return conv.repository_index(states, request.ready)

    async def RepositoryModelLoad(self, request: Any, context: aio.ServicerContext) -> Any:
        """Load the model's latest and aliased versions into memory."""
        conv.repository_name(request.repository_name)
        conv.check_repository_parameters(request.parameters)
        await self.models.load_model(conv.required(request.model_name, "model_name"))
        return msgs.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: aio.ServicerContext) -> Any:
        """Release the model's loaded versions from memory (the registry is untouched)."""
        conv.repository_name(request.repository_name)
        conv.check_repository_parameters(request.parameters)
        await self.models.unload_model(conv.required(request.model_name, "model_name"))
        return msgs.RepositoryModelUnloadResponse()


#: The handler factory of each (client streaming, server streaming) kind of method.
_HANDLER_KINDS: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def method_handlers(app: App) -> dict[str, grpc.RpcMethodHandler]:
    """The service's handlers by method name, every method declared in the protocol
    file served, each as the kind of RPC its descriptor declares."""
    servicer = InferenceServicer(app)
    handlers = {}
    for method in msgs.SERVICE.methods:
        request_cls, response_cls = msgs.method_types(method.name)
        make = _HANDLER_KINDS[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=request_cls.FromString,
            response_serializer=response_cls.SerializeToString,
        )
    return handlers


def generic_handler(app: App) -> grpc.GenericRpcHandler:
    """The service as one generic handler (for a plain grpc server)."""
    return grpc.method_handlers_generic_handler(msgs.SERVICE_NAME, method_handlers(app))
