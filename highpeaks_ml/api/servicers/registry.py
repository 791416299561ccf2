"""Servicer of highpeaks_ml.v1.ModelRegistryService.

Thin: each method converts the request, calls the registry store (in a
worker thread, since it touches the disk) and converts the result back.
Errors are the domain's (``highpeaks_ml.errors``); the interceptor maps them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from grpc import aio

from highpeaks_ml.api.context import ANONYMOUS, NO_SUBJECT, current_subject
from highpeaks_ml.api.converters import registry as conv
from highpeaks_ml.api.servicers._threads import acquire_in_thread, release_in_thread
from highpeaks_ml.errors import InvalidArgument
from highpeaks_ml.registry.base import ModelInfo, ModelStore, VersionMeta
from highpeaks_ml.registry.importer import ImportInfo, Upload, import_file
from highpeaks_ml.v1 import registry_pb2, registry_pb2_grpc

if TYPE_CHECKING:
    from highpeaks_ml.api.server import App

log = logging.getLogger("highpeaks_ml.registry")

#: Bytes per DownloadModelVersion message.
DOWNLOAD_CHUNK = 1024 * 1024


def _creator() -> str:
    """The caller's subject for ``created_by`` ("" when auth is off)."""
    subject = current_subject()
    return "" if subject in (ANONYMOUS, NO_SUBJECT) else subject


class RegistryServicer(registry_pb2_grpc.ModelRegistryServiceServicer):
    """ModelRegistryService over ``app.components["registry"]``."""

    def __init__(self, app: App) -> None:
        self.app = app

    @property
    def store(self) -> ModelStore:
        store: ModelStore = self.app.components["registry"]
        return store

    def _status(self, name: str, version: int) -> conv.LoadStatus:
        """Load state of a version in this server, from the serving component when present."""
        models = self.app.components.get("models")
        if models is None:
            return conv.UNLOADED
        try:
            state, error, provider = models.version_status(name, version)
        except Exception:
            # A status display must not fail a registry call.
            log.exception("could not read the load state of %s version %d", name, version)
            return conv.UNLOADED
        return str(state), str(error), str(provider)

    def _version(self, meta: VersionMeta, info: ModelInfo) -> registry_pb2.ModelVersion:
        return conv.version_to_proto(
            meta, info.aliases_of(meta.version), self._status(meta.model_name, meta.version)
        )

    async def ListModels(
        self, request: registry_pb2.ListModelsRequest, context: aio.ServicerContext
    ) -> registry_pb2.ListModelsResponse:
        models = await asyncio.to_thread(self.store.list_models)
        return registry_pb2.ListModelsResponse(models=[conv.model_to_proto(m) for m in models])

    async def GetModel(
        self, request: registry_pb2.GetModelRequest, context: aio.ServicerContext
    ) -> registry_pb2.Model:
        info = await asyncio.to_thread(self.store.get_model, request.name)
        return conv.model_to_proto(info, with_versions=True, status=self._status)

    def _resolve(self, ref: Any) -> tuple[VersionMeta, ModelInfo]:
        name, version, alias = conv.ref_from_proto(ref)
        meta = self.store.resolve(name, version, alias)
        return meta, self.store.get_model(name)

    async def GetModelVersion(
        self, request: registry_pb2.GetModelVersionRequest, context: aio.ServicerContext
    ) -> registry_pb2.ModelVersion:
        meta, info = await asyncio.to_thread(self._resolve, request.model)
        return self._version(meta, info)

    async def SetAlias(
        self, request: registry_pb2.SetAliasRequest, context: aio.ServicerContext
    ) -> registry_pb2.Model:
        info = await asyncio.to_thread(
            self.store.set_alias, request.model_name, request.alias, request.version
        )
        return conv.model_to_proto(info)

    async def DeleteAlias(
        self, request: registry_pb2.DeleteAliasRequest, context: aio.ServicerContext
    ) -> registry_pb2.Model:
        info = await asyncio.to_thread(self.store.delete_alias, request.model_name, request.alias)
        return conv.model_to_proto(info)

    async def DeleteModelVersion(
        self, request: registry_pb2.DeleteModelVersionRequest, context: aio.ServicerContext
    ) -> registry_pb2.DeleteModelVersionResponse:
        info, removed = await asyncio.to_thread(
            self.store.delete_version, request.model_name, request.version, request.force
        )
        return registry_pb2.DeleteModelVersionResponse(
            model=conv.model_to_proto(info) if info is not None else registry_pb2.Model(),
            removed_aliases=removed,
        )

    async def ImportModel(
        self,
        request_iterator: AsyncIterable[registry_pb2.ImportModelRequest],
        context: aio.ServicerContext,
    ) -> registry_pb2.ModelVersion:
        info: ImportInfo | None = None
        upload: Upload | None = None
        try:
            async for request in request_iterator:
                part = request.WhichOneof("part")
                if part == "info":
                    if info is not None:
                        raise InvalidArgument("ImportModel: info must be sent once, first")
                    # Validate before storing a byte: a bad name touches nothing.
                    info = replace(
                        conv.import_info_from_proto(request.info).validated(),
                        created_by=_creator(),
                    )
                    upload = await acquire_in_thread(
                        partial(Upload, self.store, self.app.settings.max_model_bytes),
                        Upload.discard,
                    )
                elif part == "chunk":
                    if upload is None:
                        raise InvalidArgument("ImportModel: the first message must carry info")
                    await asyncio.to_thread(upload.write, request.chunk)
                else:
                    raise InvalidArgument("ImportModel: a message carries neither info nor chunk")
            if info is None or upload is None:
                raise InvalidArgument("ImportModel: no info message was sent")
            if upload.size == 0:
                raise InvalidArgument("ImportModel: no model bytes were sent")
            path = await asyncio.to_thread(upload.finish)
            meta = await asyncio.to_thread(
                import_file, self.store, info, path, self.app.settings.max_model_bytes
            )
        finally:
            if upload is not None:
                await release_in_thread(upload.discard)
        info_after = await asyncio.to_thread(self.store.get_model, meta.model_name)
        return self._version(meta, info_after)

    async def DownloadModelVersion(
        self, request: registry_pb2.DownloadModelVersionRequest, context: aio.ServicerContext
    ) -> AsyncIterator[registry_pb2.DownloadModelVersionResponse]:
        def prepare() -> tuple[VersionMeta, ModelInfo, Any]:
            meta, info = self._resolve(request.model)
            # The sha256 is checked here, before anything is sent: a tampered
            # version fails the call with UNAVAILABLE instead of sending bytes.
            chunks = self.store.iter_model_chunks(meta.model_name, meta.version, DOWNLOAD_CHUNK)
            return meta, info, chunks

        meta, info, chunks = await asyncio.to_thread(prepare)
        try:
            yield registry_pb2.DownloadModelVersionResponse(version=self._version(meta, info))
            while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                yield registry_pb2.DownloadModelVersionResponse(chunk=chunk)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
