"""Servicer of highpeaks_ml.v1.TrainService.

Thin: each method converts the request, calls the dataset store or the job
manager (disk work in a worker thread) and converts the result back. Errors
are the domain's (``highpeaks_ml.errors``); the interceptor maps them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from functools import partial
from typing import TYPE_CHECKING

from grpc import aio

from highpeaks_ml.api.context import ANONYMOUS, NO_SUBJECT, current_subject
from highpeaks_ml.api.converters import training as conv
from highpeaks_ml.api.servicers._threads import acquire_in_thread, release_in_thread
from highpeaks_ml.errors import InvalidArgument
from highpeaks_ml.training.catalogue import algorithms
from highpeaks_ml.training.datasets import DatasetStore
from highpeaks_ml.training.jobs import JobManager
from highpeaks_ml.v1 import train_pb2, train_pb2_grpc

if TYPE_CHECKING:
    from highpeaks_ml.api.server import App


def _creator() -> str:
    """The caller's subject for ``created_by`` ("" when auth is off)."""
    subject = current_subject()
    return "" if subject in (ANONYMOUS, NO_SUBJECT) else subject


class TrainServicer(train_pb2_grpc.TrainServiceServicer):
    """TrainService over ``app.components["datasets"]`` and ``app.components["jobs"]``."""

    def __init__(self, app: App) -> None:
        self.app = app

    @property
    def datasets(self) -> DatasetStore:
        store: DatasetStore = self.app.components["datasets"]
        return store

    @property
    def jobs(self) -> JobManager:
        manager: JobManager = self.app.components["jobs"]
        return manager

    # --- datasets ----------------------------------------------------------

    async def UploadDataset(
        self,
        request_iterator: AsyncIterable[train_pb2.UploadDatasetRequest],
        context: aio.ServicerContext,
    ) -> train_pb2.Dataset:
        stream = aiter(request_iterator)
        first = await anext(stream, None)
        if first is None or first.WhichOneof("part") != "info":
            raise InvalidArgument("the first UploadDataset message must carry info")
        kwargs = conv.upload_info_from_proto(first.info)
        upload = await acquire_in_thread(
            partial(self.datasets.begin_upload, **kwargs, created_by=_creator()),
            lambda u: u.discard(),
        )
        try:
            async for message in stream:
                if message.WhichOneof("part") != "chunk":
                    raise InvalidArgument("only the first UploadDataset message may carry info")
                await asyncio.to_thread(upload.write, message.chunk)
            info = await asyncio.to_thread(upload.finish)
        finally:
            await release_in_thread(upload.discard)
        return conv.dataset_to_proto(info)

    async def GetDataset(
        self, request: train_pb2.GetDatasetRequest, context: aio.ServicerContext
    ) -> train_pb2.Dataset:
        info = await asyncio.to_thread(self.datasets.get, request.id)
        return conv.dataset_to_proto(info)

    async def ListDatasets(
        self, request: train_pb2.ListDatasetsRequest, context: aio.ServicerContext
    ) -> train_pb2.ListDatasetsResponse:
        found = await asyncio.to_thread(self.datasets.list, request.limit)
        return train_pb2.ListDatasetsResponse(datasets=[conv.dataset_to_proto(d) for d in found])

    async def ListAlgorithms(
        self, request: train_pb2.ListAlgorithmsRequest, context: aio.ServicerContext
    ) -> train_pb2.ListAlgorithmsResponse:
        return train_pb2.ListAlgorithmsResponse(
            algorithms=[conv.algorithm_to_proto(a) for a in algorithms()]
        )

    # --- jobs --------------------------------------------------------------

    async def StartTraining(
        self, request: train_pb2.StartTrainingRequest, context: aio.ServicerContext
    ) -> train_pb2.TrainingJob:
        job = await self.jobs.start_training(
            conv.train_request_from_proto(request), created_by=_creator()
        )
        return conv.job_to_proto(job)

    async def GetTrainingJob(
        self, request: train_pb2.GetTrainingJobRequest, context: aio.ServicerContext
    ) -> train_pb2.TrainingJob:
        return conv.job_to_proto(self.jobs.get(request.id))

    async def ListTrainingJobs(
        self, request: train_pb2.ListTrainingJobsRequest, context: aio.ServicerContext
    ) -> train_pb2.ListTrainingJobsResponse:
        jobs = self.jobs.list(
            request.model_name, conv.states_from_proto(request.states), request.limit
        )
        return train_pb2.ListTrainingJobsResponse(jobs=[conv.job_to_proto(j) for j in jobs])

    async def CancelTrainingJob(
        self, request: train_pb2.CancelTrainingJobRequest, context: aio.ServicerContext
    ) -> train_pb2.TrainingJob:
        return conv.job_to_proto(await self.jobs.cancel(request.id))

    async def WatchTrainingJob(
        self, request: train_pb2.WatchTrainingJobRequest, context: aio.ServicerContext
    ) -> AsyncIterator[train_pb2.TrainingJob]:
        # Ends after a final state; a client that cancels ends the generator
        # (GeneratorExit/CancelledError), which unsubscribes the watcher.
        async for job in self.jobs.watch(request.id):
            yield conv.job_to_proto(job)
