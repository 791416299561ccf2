"""Servicer of highpeaks_ml.v1.PredictService."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from grpc import aio

from highpeaks_ml.api import fastpath
from highpeaks_ml.api.converters import predict as conv
from highpeaks_ml.api.servicers._streams import pipelined
from highpeaks_ml.v1 import predict_pb2, predict_pb2_grpc

if TYPE_CHECKING:
    from highpeaks_ml.api.server import App
    from highpeaks_ml.serving.manager import ModelManager


class PredictServicer(predict_pb2_grpc.PredictServiceServicer):
    """PredictService: convert, call the ModelManager, convert back."""

    def __init__(self, app: App) -> None:
        self.app = app

    @property
    def models(self) -> ModelManager:
        return self.app.components["models"]  # type: ignore[no-any-return]

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        """Predicts for one batch of rows."""
        models = self.models
        fast = fastpath.native(models, request, context)  # None: the general path
        if fast is not None:
            return fast
        query = conv.query_from_proto(request)
        pred = await models.predict(query, time_limit=context.time_remaining())
        return conv.response_from_prediction(pred, request.id, request.raw_output)

    async def _one(
        self, request: predict_pb2.PredictRequest, context: aio.ServicerContext
    ) -> predict_pb2.PredictStreamResponse:
        try:
            models = self.models
            resp = fastpath.native(models, request, context)
            if resp is None:
                query = conv.query_from_proto(request)
                pred = await models.predict(query, time_limit=context.time_remaining())
                resp = conv.response_from_prediction(pred, request.id, request.raw_output)
        except Exception as exc:  # answered in-stream; the stream goes on
            return conv.stream_error(exc, request.id)
        return predict_pb2.PredictStreamResponse(response=resp, id=request.id)

    async def PredictStream(
        self,
        request_iterator: AsyncIterator[predict_pb2.PredictRequest],
        context: aio.ServicerContext,
    ) -> AsyncIterator[predict_pb2.PredictStreamResponse]:
        """Answers each request in order, errors in-stream, requests pipelined."""
        answers = pipelined(request_iterator, lambda r: self._one(r, context))
        async with contextlib.aclosing(answers):  # a cancelled call stops the work at once
            async for response in answers:
                yield response
