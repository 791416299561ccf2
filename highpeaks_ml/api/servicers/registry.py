"""Servicer of highpeaks_ml.v1.ModelRegistryService.

Thin: each method converts the request, calls the registry store (in a
worker thread, since it touches the disk) and converts the result back.
Errors are the domain's (``highpeaks_ml.errors``); the interceptor maps them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from grpc import aio

from highpeaks_ml.api.context import ANONYMOUS, NO_SUBJECT, current_subject
from highpeaks_ml.api.converters import insight
from highpeaks_ml.api.converters import registry as conv
from highpeaks_ml.api.servicers._threads import acquire_in_thread, release_in_thread
from highpeaks_ml.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    quote,
)
from highpeaks_ml.registry.base import (
    ArtifactInfo,
    ModelInfo,
    ModelStore,
    VersionMeta,
    validate_alias,
    validate_name,
)
from highpeaks_ml.registry.importer import ImportInfo, Upload, import_file
from highpeaks_ml.serving import drift_figures
from highpeaks_ml.serving.drift import PROFILE_ARTIFACT
from highpeaks_ml.v1 import registry_pb2, registry_pb2_grpc

if TYPE_CHECKING:
    from highpeaks_ml.api.server import App

log = logging.getLogger("highpeaks_ml.registry")


def _sent(name: str, media_type: str, data: bytes) -> registry_pb2.Artifact:
    """The Artifact describing bytes made for this response (not a stored artifact)."""
    digest = hashlib.sha256(data).hexdigest()
    return insight.artifact_to_proto(ArtifactInfo(name, digest, len(data), media_type))


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
        #: Live served-vs-training figures drawn at a time (matplotlib in a worker
        #: thread holds the GIL much of the time: a burst of report calls must not
        #: crowd out the server's other threads).
        self._drawing = asyncio.Semaphore(1)

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
            held = tuple(models.held_targets(name, version))
        except Exception:
            # A status display must not fail a registry call.
            log.exception("could not read the load state of %s version %d", name, version)
            return conv.UNLOADED
        return str(state), str(error), str(provider), held

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
        validate_name(request.model_name)
        validate_alias(request.alias)
        if request.version < 1:
            raise InvalidArgument(f"invalid version {request.version}: versions start at 1")
        models = self.app.components.get("models")
        if models is not None and not request.force:
            # Load the new target first: an alias only moves onto a version this
            # server can serve (its callers would get errors otherwise).
            try:
                await models.ensure_servable(request.model_name, int(request.version))
            except FailedPrecondition as exc:
                raise FailedPrecondition(
                    f"alias {request.alias!r} was not moved: {exc.message}; fix or delete"
                    " that version, or set the alias with force"
                ) from None
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

    async def GetVersionReport(
        self, request: registry_pb2.GetVersionReportRequest, context: aio.ServicerContext
    ) -> AsyncIterator[registry_pb2.GetVersionReportResponse]:
        artifact = insight.report_artifact(request.format, request.figure)
        # "served-<feature>": a live figure of this server's traffic, not a stored one.
        live_figure = request.format == registry_pb2.REPORT_FORMAT_FIGURE and (
            request.figure.startswith(drift_figures.FIGURE_PREFIX)
        )

        def prepare() -> tuple[VersionMeta, bytes]:
            meta, _info = self._resolve(request.model)
            label = f"model {meta.model_name!r} version {meta.version}"
            if not any(a.name == insight.REPORT_JSON for a in meta.artifacts):
                if meta.source == "imported":
                    raise NotFound(f"{label} was imported: imported versions have no report")
                raise NotFound(
                    f"{label} has no evaluation report (trained before reports existed, or"
                    " its report could not be made: see its job's warnings)"
                )
            if live_figure:
                return meta, b""
            if not any(a.name == artifact for a in meta.artifacts):
                figures = ", ".join(insight.figure_names(meta.artifacts))
                raise NotFound(
                    f"{label} has no figure {quote(request.figure)} (figures: {figures})"
                )
            # The sha256 is checked here, before anything is sent.
            return meta, self.store.read_artifact(meta.model_name, meta.version, artifact)

        meta, data = await asyncio.to_thread(prepare)
        info = registry_pb2.ReportInfo(
            model_name=meta.model_name,
            version=meta.version,
            figures=insight.figure_names(meta.artifacts),
        )
        if live_figure:
            # Drawn in a worker thread (matplotlib): the event loop keeps serving.
            async with self._drawing:
                data, rows = await asyncio.to_thread(self._served_figure, meta, request.figure)
            info.artifact.CopyFrom(_sent(artifact, "image/png", data))
            info.served_rows = rows
            info.served_features.append(request.figure[len(drift_figures.FIGURE_PREFIX) :])
        else:
            stored = meta.artifact(artifact)
            info.artifact.CopyFrom(insight.artifact_to_proto(stored))
            live = None
            if artifact == insight.REPORT_HTML:
                async with self._drawing:
                    live = await asyncio.to_thread(self._served_section, meta)
            if live is not None:
                # The stored page is immutable: the live section goes into the bytes
                # sent only, and `artifact` describes those (the client checks them).
                section, rows, features = live
                data = drift_figures.add_section(data, section)
                info.stored.CopyFrom(info.artifact)
                info.artifact.CopyFrom(_sent(artifact, stored.media_type, data))
                info.served_rows = rows
                info.served_features.extend(features)
        yield registry_pb2.GetVersionReportResponse(info=info)
        for i in range(0, len(data), DOWNLOAD_CHUNK):
            yield registry_pb2.GetVersionReportResponse(chunk=data[i : i + DOWNLOAD_CHUNK])

    def _served_section(self, meta: VersionMeta) -> tuple[str, int, list[str]] | None:
        """The "Served inputs vs training" section of a version's HTML page, its rows and
        features (blocking: matplotlib); None to send the stored page as it is (no
        serving on this server, no training profile, or drift failed: it is advisory)."""
        models = self.app.components.get("models")
        if models is None or not any(a.name == PROFILE_ARTIFACT for a in meta.artifacts):
            return None
        if not models.drift.enabled:
            note = "Drift profiling is off on this server (drift_enabled): no served inputs."
            return drift_figures.note_html(note), 0, []
        try:
            report = models.drift_report(meta)
            features = [f.name for f in drift_figures.shown(report)] if report.rows > 0 else []
            return drift_figures.section_html(report), report.rows, features
        except Exception:
            log.exception(
                "served-inputs section of model %s version %d failed",
                meta.model_name,
                meta.version,
            )
            return None

    def _served_figure(self, meta: VersionMeta, figure: str) -> tuple[bytes, int]:
        """A ``served-<feature>`` figure (PNG) and its rows (blocking: matplotlib)."""
        label = f"model {meta.model_name!r} version {meta.version}"
        models = self.app.components.get("models")
        if models is None:
            raise NotFound(f"this server does not serve models: no figure {quote(figure)}")
        report = models.drift_report(meta)  # NotFound without a training profile
        feature = drift_figures.figure_feature(figure, report)
        if feature is None:
            names = ", ".join(sorted(f.name for f in report.features))
            raise NotFound(f"{label} has no feature for figure {quote(figure)} (features: {names})")
        if feature.rows <= 0:
            raise NotFound(
                f"{label}: no served traffic was seen yet for {feature.name!r} on this server"
            )
        return drift_figures.feature_png(feature), feature.rows

    async def GetDriftReport(
        self, request: registry_pb2.GetDriftReportRequest, context: aio.ServicerContext
    ) -> registry_pb2.DriftReport:
        models = self.app.components.get("models")
        if models is None:
            raise Unavailable("this server does not serve models: it has no drift to report")
        meta, _info = await asyncio.to_thread(self._resolve, request.model)
        report = await asyncio.to_thread(models.drift_report, meta)
        return insight.drift_to_proto(report, models.drift.enabled)
