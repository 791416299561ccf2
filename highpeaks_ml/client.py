"""A Python client over the generated stubs.

>>> from highpeaks_ml.client import Client
>>> with Client("127.0.0.1:50051") as c:
...     c.health()
'SERVING'

Every method raises ``grpc.RpcError`` on a failed call (``.code()`` and
``.details()`` say why).

Calls that are safe to repeat (reads, predictions, health, setting an alias)
are retried by grpc itself when they fail UNAVAILABLE — a replica shutting
down, a connection refused while a rollout replaces a pod — up to 4 attempts
with exponential backoff (``RETRY_POLICY``), within the call's timeout.
Writes that could apply twice (imports, deletes, starting a job) are not;
``retries=False`` turns retrying off.

Against a server with ``auth_mode=jwt`` pass ``token=`` (sent as
``authorization: Bearer <token>`` metadata on every call); against a TLS
server pass ``tls_ca=`` (the CA that signed the server certificate) or
``tls=True`` for the system roots, and ``tls_cert=``/``tls_key=`` for mTLS.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from highpeaks_ml.v1 import (
    common_pb2,
    predict_pb2,
    predict_pb2_grpc,
    registry_pb2_grpc,
    search_pb2,
    train_pb2_grpc,
)

#: Methods safe to repeat: reading, predicting, health, and setting an alias
#: (the same version again changes nothing).
IDEMPOTENT_METHODS: dict[str, tuple[str, ...]] = {
    "grpc.health.v1.Health": ("Check",),
    "highpeaks_ml.v1.PredictService": ("Predict",),
    "highpeaks_ml.v1.ModelRegistryService": (
        "ListModels",
        "GetModel",
        "GetModelVersion",
        "SetAlias",
    ),
    "highpeaks_ml.v1.TrainService": (
        "GetDataset",
        "ListDatasets",
        "ListAlgorithms",
        "GetTrainingJob",
        "ListTrainingJobs",
    ),
}
#: grpc's retry policy for them (gRFC A6): UNAVAILABLE only, jittered backoff.
RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def service_config() -> str:
    """The channel's service config (JSON): ``RETRY_POLICY`` on ``IDEMPOTENT_METHODS``."""
    names = [
        {"service": service, "method": method}
        for service, methods in IDEMPOTENT_METHODS.items()
        for method in methods
    ]
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": RETRY_POLICY}]})


#: Task names the server knows -> the Task enum ("" = not given).
_TASKS = {
    "classification": common_pb2.TASK_CLASSIFICATION,
    "regression": common_pb2.TASK_REGRESSION,
    "": common_pb2.TASK_UNSPECIFIED,
}
#: Output kind names -> the OutputKind enum of PredictRequest.outputs.
OUTPUT_KINDS = {
    "labels": predict_pb2.OUTPUT_KIND_LABELS,
    "probabilities": predict_pb2.OUTPUT_KIND_PROBABILITIES,
    "values": predict_pb2.OUTPUT_KIND_VALUES,
}


def _task_enum(task: str | None) -> common_pb2.Task:
    """The Task enum of "classification", "regression" or None (not given)."""
    if task is not None and (not task or task not in _TASKS):
        raise ValueError(f"unknown task {task!r}: use classification or regression")
    return _TASKS[task or ""]


class Client:
    """Synchronous client of the High Peaks ML services."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        timeout: float | None = 30.0,
        channel: grpc.Channel | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
        options: list[tuple[str, Any]] | None = None,
        retries: bool = True,
        token: str | None = None,
        tls: bool = False,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        if token:
            metadata = (*metadata, ("authorization", f"Bearer {token}"))
        self.metadata = metadata
        self._own_channel = channel is None
        # The caller's options win over these defaults, key by key.
        merged: dict[str, Any] = {
            "grpc.max_receive_message_length": 256 * 1024 * 1024,
            "grpc.max_send_message_length": 256 * 1024 * 1024,
            "grpc.enable_retries": int(retries),
        }
        if retries:
            merged["grpc.service_config"] = service_config()
        merged.update(dict(options or ()))
        options = list(merged.items())
        if channel is None and (tls or tls_ca or tls_cert):
            if bool(tls_cert) != bool(tls_key):
                raise ValueError("tls_cert and tls_key go together")
            credentials = grpc.ssl_channel_credentials(
                root_certificates=Path(tls_ca).read_bytes() if tls_ca else None,
                private_key=Path(tls_key).read_bytes() if tls_key else None,
                certificate_chain=Path(tls_cert).read_bytes() if tls_cert else None,
            )
            channel = grpc.secure_channel(target, credentials, options=options)
        self.channel = channel or grpc.insecure_channel(target, options=options)
        self.train = train_pb2_grpc.TrainServiceStub(self.channel)
        self.predictor = predict_pb2_grpc.PredictServiceStub(self.channel)
        self.registry = registry_pb2_grpc.ModelRegistryServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        """Close the channel (when this client created it)."""
        if self._own_channel:
            self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _kw(self, timeout: float | None = None) -> dict[str, Any]:
        return {"timeout": timeout or self.timeout, "metadata": self.metadata}

    def health(self, service: str = "") -> str:
        """The grpc.health.v1 status name of ``service`` ('' = the whole server)."""
        resp = self._health.Check(health_pb2.HealthCheckRequest(service=service), **self._kw())
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))

    # --- registry ---
    # Methods return the protobuf messages of highpeaks_ml.v1 (registry_pb2):
    # Model, ModelVersion, DeleteModelVersionResponse; convert them with
    # google.protobuf.json_format.MessageToDict when plain dicts are wanted.

    def list_models(self) -> Any:
        """Every model with its latest version and aliases (``registry_pb2.Model`` list)."""
        from highpeaks_ml.v1 import registry_pb2

        resp = self.registry.ListModels(registry_pb2.ListModelsRequest(), **self._kw())
        return list(resp.models)

    def get_model(self, name: str) -> Any:
        """One model with all its versions (``registry_pb2.Model``)."""
        from highpeaks_ml.v1 import registry_pb2

        return self.registry.GetModel(registry_pb2.GetModelRequest(name=name), **self._kw())

    @staticmethod
    def _ref(name: str, version: int | None, alias: str | None) -> Any:
        if version is not None and alias is not None:
            raise ValueError("give a version or an alias, not both")
        if version is not None:
            return common_pb2.ModelRef(name=name, version=version)
        if alias is not None:
            return common_pb2.ModelRef(name=name, alias=alias)
        return common_pb2.ModelRef(name=name)

    def get_version(self, name: str, version: int | None = None, alias: str | None = None) -> Any:
        """One version by number, alias, or the latest (``registry_pb2.ModelVersion``)."""
        from highpeaks_ml.v1 import registry_pb2

        req = registry_pb2.GetModelVersionRequest(model=self._ref(name, version, alias))
        return self.registry.GetModelVersion(req, **self._kw())

    def set_alias(self, name: str, alias: str, version: int, force: bool = False) -> Any:
        """Point ``alias`` at ``version`` (create or move); returns the ``Model``.

        The server loads the version first and refuses (FAILED_PRECONDITION) when
        it does not load there; ``force`` moves the alias anyway.
        """
        from highpeaks_ml.v1 import registry_pb2

        req = registry_pb2.SetAliasRequest(
            model_name=name, alias=alias, version=version, force=force
        )
        return self.registry.SetAlias(req, **self._kw())

    def delete_alias(self, name: str, alias: str) -> Any:
        """Remove an alias; returns the ``Model``."""
        from highpeaks_ml.v1 import registry_pb2

        req = registry_pb2.DeleteAliasRequest(model_name=name, alias=alias)
        return self.registry.DeleteAlias(req, **self._kw())

    def delete_version(self, name: str, version: int, force: bool = False) -> Any:
        """Delete a version (``force`` also removes aliases pointing at it).

        Returns ``DeleteModelVersionResponse`` (the model afterwards and the
        removed aliases).
        """
        from highpeaks_ml.v1 import registry_pb2

        req = registry_pb2.DeleteModelVersionRequest(model_name=name, version=version, force=force)
        return self.registry.DeleteModelVersion(req, **self._kw())

    def import_model(
        self,
        name: str,
        path_or_bytes: str | Path | bytes,
        task: str | None = None,
        class_labels: Sequence[str] = (),
        aliases: Sequence[str] = (),
        description: str = "",
        chunk_size: int = 1024 * 1024,
    ) -> Any:
        """Register an ONNX file (a path or its bytes) as the next version of ``name``.

        ``task`` is "classification", "regression" or None. The file is
        streamed in ``chunk_size`` pieces with its sha256, which the server
        checks. Returns the new ``registry_pb2.ModelVersion``.
        """
        import hashlib

        from highpeaks_ml.v1 import registry_pb2

        task_enum = _task_enum(task)
        if isinstance(path_or_bytes, bytes):
            data = path_or_bytes
        else:
            with open(path_or_bytes, "rb") as f:
                data = f.read()
        info = registry_pb2.ImportModelInfo(
            model_name=name,
            task=task_enum,
            class_labels=list(class_labels),
            aliases=list(aliases),
            description=description,
            sha256=hashlib.sha256(data).hexdigest(),
        )

        def requests() -> Iterator[Any]:
            yield registry_pb2.ImportModelRequest(info=info)
            for start in range(0, len(data), chunk_size):
                yield registry_pb2.ImportModelRequest(chunk=data[start : start + chunk_size])

        return self.registry.ImportModel(requests(), **self._kw())

    def download_model(
        self, name: str, version: int | None = None, alias: str | None = None
    ) -> bytes:
        """The ONNX bytes of a version (latest by default), checked against its sha256.

        Raises ``ValueError`` when the bytes received do not match the
        version's sha256 or size.
        """
        from highpeaks_ml.v1 import registry_pb2

        req = registry_pb2.DownloadModelVersionRequest(model=self._ref(name, version, alias))
        stream = self.registry.DownloadModelVersion(req, **self._kw())
        meta, data = _head_and_chunks(stream, "version")
        if meta is None:
            raise ValueError("the server sent no version metadata")
        if not _matches(data, meta.size_bytes, meta.sha256):
            raise ValueError(f"download of {name} version {meta.version} does not match its sha256")
        return data

    def get_report(
        self,
        name: str,
        version: int | None = None,
        alias: str | None = None,
        fmt: str = "html",
        figure: str = "",
    ) -> tuple[Any, bytes]:
        """A trained version's evaluation report: ``fmt`` "html" (a self-contained page),
        "json" (the numbers) or "figure" (one PNG, named by ``figure``).

        Returns (``ReportInfo``, bytes); the bytes are checked against the sha256 the
        server announced (``ValueError`` on a mismatch). NOT_FOUND for imported versions.
        """
        from highpeaks_ml.v1 import registry_pb2

        formats = {
            "html": registry_pb2.REPORT_FORMAT_HTML,
            "json": registry_pb2.REPORT_FORMAT_JSON,
            "figure": registry_pb2.REPORT_FORMAT_FIGURE,
        }
        if fmt not in formats:
            raise ValueError(f"unknown report format {fmt!r}: use html, json or figure")
        req = registry_pb2.GetVersionReportRequest(
            model=self._ref(name, version, alias), format=formats[fmt], figure=figure
        )
        info, data = _head_and_chunks(self.registry.GetVersionReport(req, **self._kw()), "info")
        if info is None:
            raise ValueError("the server sent no report info")
        art = info.artifact
        if not _matches(data, art.size_bytes, art.sha256):
            raise ValueError(
                f"{art.name} of {name} version {info.version} does not match its sha256"
            )
        return info, data

    def get_drift(self, name: str, version: int | None = None, alias: str | None = None) -> Any:
        """The drift of a version's served inputs on this server (``DriftReport``)."""
        from highpeaks_ml.v1 import registry_pb2

        req = registry_pb2.GetDriftReportRequest(model=self._ref(name, version, alias))
        return self.registry.GetDriftReport(req, **self._kw())

    # --- predict ---
    # ``predict`` takes a numpy array (sent as a tensor of raw little-endian
    # bytes) or a list of dicts / a pandas DataFrame (sent as named rows) and
    # returns a ``PredictResult`` whose outputs are numpy arrays.

    @staticmethod
    def predict_request(
        name: str,
        X: Any,
        version: int | None = None,
        alias: str | None = None,
        raw: bool = True,
        outputs: Sequence[str] = (),
        request_id: str = "",
    ) -> Any:
        """A ``predict_pb2.PredictRequest`` for ``X`` (see ``predict``), e.g. for streams."""
        return build_request(name, X, version, alias, raw, outputs, request_id)

    def predict(
        self,
        name: str,
        X: Any,
        version: int | None = None,
        alias: str | None = None,
        raw: bool = True,
        outputs: Sequence[str] = (),
        timeout: float | None = None,
    ) -> Any:
        """Predict the rows of ``X`` with a version (by number, alias, or the latest).

        ``X``: a 2-D numpy array in the model's feature order (a 1-D array is
        one row), or a list of dicts / a pandas DataFrame keyed by feature
        name. ``raw`` sends and receives tensors as raw bytes (the fast path);
        ``outputs`` limits the outputs to some of "labels", "probabilities",
        "values". Returns a ``PredictResult`` with ``labels``,
        ``probabilities``, ``class_labels``, ``values`` (numpy arrays or None),
        ``model_name``, ``model_version`` and ``execution_provider``.
        """
        req = build_request(name, X, version, alias, raw, outputs)
        return PredictResult(self.predictor.Predict(req, **self._kw(timeout)))

    def predict_stream(
        self, requests: Iterable[Any], timeout: float | None = None
    ) -> Iterator[Any]:
        """Send ``requests`` (``predict_request(...)`` messages) over one PredictStream.

        Yields, in request order, a ``PredictResult`` or, for a request the
        server refused, a ``StreamFailure`` (``code``, ``message``, ``id``);
        the stream goes on after a failure.
        """
        for msg in self.predictor.PredictStream(iter(requests), **self._kw(timeout)):
            if msg.WhichOneof("result") == "error":
                yield StreamFailure(msg.error.code, msg.error.message, msg.id)
            else:
                yield PredictResult(msg.response)

    # --- training ---
    # Methods return the protobuf messages of highpeaks_ml.v1 (train_pb2):
    # Dataset, Algorithm, TrainingJob. Job states are train_pb2.JobState values
    # (train_pb2.JobState.Name(job.state) gives "JOB_STATE_SUCCEEDED" etc.).

    def upload_dataset(
        self,
        path: str | Path,
        name: str | None = None,
        target: str | None = None,
        chunk_size: int = 1024 * 1024,
        timeout: float | None = None,
    ) -> Any:
        """Upload a CSV file in ``chunk_size`` pieces; returns its ``train_pb2.Dataset``.

        The file's sha256 is sent along and checked by the server; with
        ``target`` the server also refuses a file whose target column is
        missing, constant or has missing values. The same bytes always get
        the same dataset id.
        """
        import hashlib

        from highpeaks_ml.v1 import train_pb2

        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(chunk_size):
                h.update(block)
        info = train_pb2.DatasetUploadInfo(
            name=name or "",
            format=train_pb2.DATASET_FORMAT_CSV,
            sha256=h.hexdigest(),
            target_column=target or "",
        )

        def requests() -> Iterator[Any]:
            yield train_pb2.UploadDatasetRequest(info=info)
            with open(path, "rb") as f:
                while block := f.read(chunk_size):
                    yield train_pb2.UploadDatasetRequest(chunk=block)

        kw = self._kw()
        kw["timeout"] = timeout
        return self.train.UploadDataset(requests(), **kw)

    def get_dataset(self, dataset_id: str) -> Any:
        """One uploaded dataset (``train_pb2.Dataset``)."""
        from highpeaks_ml.v1 import train_pb2

        return self.train.GetDataset(train_pb2.GetDatasetRequest(id=dataset_id), **self._kw())

    def list_datasets(self, limit: int = 0) -> list[Any]:
        """Uploaded datasets, newest first (``limit`` 0: the server default, 100)."""
        from highpeaks_ml.v1 import train_pb2

        resp = self.train.ListDatasets(train_pb2.ListDatasetsRequest(limit=limit), **self._kw())
        return list(resp.datasets)

    def list_algorithms(self) -> list[Any]:
        """The algorithm catalogue (``train_pb2.Algorithm``, with hyperparameters and bounds)."""
        from highpeaks_ml.v1 import train_pb2

        resp = self.train.ListAlgorithms(train_pb2.ListAlgorithmsRequest(), **self._kw())
        return list(resp.algorithms)

    @staticmethod
    def _dataset_ref(dataset: str | Sequence[dict[str, Any]]) -> Any:
        import re

        from google.protobuf import struct_pb2

        from highpeaks_ml.v1 import train_pb2

        if isinstance(dataset, str):
            if dataset.startswith("builtin:"):
                return train_pb2.DatasetRef(builtin=dataset.removeprefix("builtin:"))
            if re.fullmatch(r"[0-9a-f]{64}", dataset):
                return train_pb2.DatasetRef(dataset_id=dataset)
            raise ValueError(
                f"dataset {dataset[:80]!r}: use 'builtin:NAME', a dataset id, or a list of rows"
            )
        rows = []
        for row in dataset:
            s = struct_pb2.Struct()
            s.update(dict(row))
            rows.append(s)
        return train_pb2.DatasetRef(inline=train_pb2.InlineDataset(rows=rows))

    def start_training(
        self,
        model: str,
        algorithm: str,
        dataset: str | Sequence[dict[str, Any]] = "builtin:iris",
        params: dict[str, Any] | None = None,
        target: str | None = None,
        task: str | None = None,
        *,
        test_size: float = 0.0,
        seed: int | None = None,
        aliases: Sequence[str] = (),
        idempotency_key: str = "",
        time_limit_s: float = 0.0,
        description: str = "",
        features: Sequence[str] = (),
        cpus: int = 0,
        memory_mb: int = 0,
        search: Any = None,
        promote_if_better: str = "",
    ) -> Any:
        """Start a training job; returns it (``train_pb2.TrainingJob``, state QUEUED).

        ``dataset``: ``"builtin:iris"`` (or wine, breast_cancer, diabetes,
        digits), an uploaded dataset's id, or rows as a list of dicts.
        ``params``: hyperparameters from ``list_algorithms()``. ``task``:
        "classification", "regression" or None (inferred from the target).
        ``cpus``, ``memory_mb``: the job's resources (0 = the server's defaults).
        ``search``: a hyperparameter search instead of one fit, as a
        ``search_pb2.SearchRequest`` or a dict for :func:`search_request`.
        ``promote_if_better``: an alias moved to the new version only if it
        scores better than the alias's current version on the same held-out rows.
        """
        from google.protobuf import struct_pb2

        from highpeaks_ml.v1 import train_pb2

        task_enum = _task_enum(task)
        hyper = struct_pb2.Struct()
        hyper.update(dict(params or {}))
        req = train_pb2.StartTrainingRequest(
            model_name=model,
            algorithm=algorithm,
            hyperparameters=hyper,
            dataset=self._dataset_ref(dataset),
            target_column=target or "",
            task=task_enum,
            test_size=test_size,
            idempotency_key=idempotency_key,
            aliases=list(aliases),
            time_limit_seconds=time_limit_s,
            description=description,
            feature_columns=list(features),
            resources=train_pb2.JobResources(cpus=cpus, memory_mb=memory_mb),
            promote_if_better=promote_if_better,
        )
        if seed is not None:
            req.seed = seed
        if search is not None:
            req.search.CopyFrom(
                search if isinstance(search, search_pb2.SearchRequest) else search_request(search)
            )
        return self.train.StartTraining(req, **self._kw())

    def get_job(self, job_id: str) -> Any:
        """One training job (``train_pb2.TrainingJob``)."""
        from highpeaks_ml.v1 import train_pb2

        return self.train.GetTrainingJob(train_pb2.GetTrainingJobRequest(id=job_id), **self._kw())

    def list_jobs(
        self, model: str | None = None, states: Sequence[str] = (), limit: int = 0
    ) -> list[Any]:
        """Training jobs, newest first; ``states`` like ["RUNNING", "QUEUED"]."""
        from highpeaks_ml.v1 import train_pb2

        req = train_pb2.ListTrainingJobsRequest(
            model_name=model or "",
            states=[f"JOB_STATE_{s.upper()}" for s in states],
            limit=limit,
        )
        return list(self.train.ListTrainingJobs(req, **self._kw()).jobs)

    def cancel_job(self, job_id: str) -> Any:
        """Cancel a queued or running job (FAILED_PRECONDITION once it ended); returns it."""
        from highpeaks_ml.v1 import train_pb2

        req = train_pb2.CancelTrainingJobRequest(id=job_id)
        return self.train.CancelTrainingJob(req, **self._kw())

    def watch_job(self, job_id: str, timeout: float | None = None) -> Iterator[Any]:
        """Yield the job now, then at every state or stage change, until it ends.

        ``timeout`` bounds the whole watch (None: no deadline).
        """
        from highpeaks_ml.v1 import train_pb2

        kw = self._kw()
        kw["timeout"] = timeout
        yield from self.train.WatchTrainingJob(train_pb2.WatchTrainingJobRequest(id=job_id), **kw)

    def wait_job(self, job_id: str, timeout: float | None = None) -> Any:
        """Block until the job ends and return it (RpcError DEADLINE_EXCEEDED on timeout)."""
        final = None
        for job in self.watch_job(job_id, timeout):
            final = job
        return final if final is not None else self.get_job(job_id)


# --- request building and results (numpy <-> messages via highpeaks_ml.tensors) ---


_SEARCH_KEYS = {
    "strategy",
    "space",
    "folds",
    "metric",
    "max_trials",
    "trials",
    "parallelism",
    "time_budget_s",
    "seed",
}


def search_request(spec: Any) -> search_pb2.SearchRequest:
    """A SearchRequest from a plain mapping (what ``train --search-file`` reads)::

        {"strategy": "random",            # grid | random | tpe
         "max_trials": 16, "folds": 5, "metric": "accuracy",
         "parallelism": 2, "time_budget_s": 600, "seed": 7,
         "space": {"max_depth": {"low": 2, "high": 16},          # a range
                   "C": {"low": 0.001, "high": 1000, "log": True},
                   "criterion": ["gini", "entropy"]}}            # listed values

    ValueError for keys or shapes it does not know (the server checks the rest).
    """
    from google.protobuf import json_format, struct_pb2

    if not isinstance(spec, dict):
        raise ValueError("a search must be a mapping (JSON/YAML object)")
    spec = {k: v for k, v in spec.items() if v is not None}
    unknown = set(spec) - _SEARCH_KEYS
    if unknown:
        raise ValueError(
            f"unknown search key(s) {', '.join(sorted(unknown))}; known:"
            f" {', '.join(sorted(_SEARCH_KEYS))}"
        )
    strategy = str(spec.get("strategy") or "random").lower()
    names = {
        "grid": search_pb2.SEARCH_STRATEGY_GRID,
        "random": search_pb2.SEARCH_STRATEGY_RANDOM,
        "tpe": search_pb2.SEARCH_STRATEGY_TPE,
    }
    if strategy not in names:
        raise ValueError(f"unknown search strategy {strategy!r}; use grid, random or tpe")
    out = search_pb2.SearchRequest(
        strategy=names[strategy],
        folds=int(spec.get("folds") or 0),
        metric=str(spec.get("metric") or ""),
        max_trials=int(spec.get("max_trials") or spec.get("trials") or 0),
        parallelism=int(spec.get("parallelism") or 0),
        time_budget_seconds=float(spec.get("time_budget_s") or 0.0),
    )
    if spec.get("seed") is not None:
        out.seed = int(spec["seed"])
    space = spec.get("space") or {}
    if not isinstance(space, dict):
        raise ValueError("search space must map hyperparameter names to values or ranges")
    for name, dim in space.items():
        if isinstance(dim, dict):
            extra = set(dim) - {"low", "high", "log"}
            if extra or not {"low", "high"} <= set(dim):
                raise ValueError(f"range of {name!r} needs low and high (and optional log)")
            out.space.add(
                name=name,
                range=search_pb2.ParamRange(
                    low=float(dim["low"]), high=float(dim["high"]), log=bool(dim.get("log"))
                ),
            )
        elif isinstance(dim, (list, tuple)):
            values = [json_format.ParseDict(v, struct_pb2.Value()) for v in dim]
            out.space.add(name=name, choice=search_pb2.ParamValues(values=values))
        else:
            raise ValueError(f"{name!r}: give a list of values or a {{low, high}} range")
    return out


def _native(v: Any) -> Any:
    """A JSON-compatible Python value from a numpy/pandas scalar (NaN: None, a missing value)."""
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and v != v:
        # pandas' empty cell (also in a text column): sent as null, which the
        # server reads as a missing value for the feature (docs/serving.md).
        return None
    return v


def rows_to_proto(rows: Any, out: Any) -> None:
    """Fill ``FeatureRows`` ``out`` from a list of dicts or a pandas DataFrame."""
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):
        rows = rows.to_dict(orient="records")
    for row in rows:
        s = out.rows.add()
        s.update({str(k): _native(v) for k, v in row.items()})


def _matrix(X: Any) -> Any:
    import numpy as np

    arr = np.asarray(X)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)  # one row
    if arr.dtype.kind == "f" and arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float32)
    elif arr.dtype.kind in "iu" and arr.dtype not in (np.int32, np.int64):
        arr = arr.astype(np.int64)
    elif arr.dtype.kind in "US":
        arr = arr.astype(object)
    return arr


def build_request(
    name: str,
    X: Any,
    version: int | None = None,
    alias: str | None = None,
    raw: bool = True,
    outputs: Sequence[str] = (),
    request_id: str = "",
) -> predict_pb2.PredictRequest:
    """A ``PredictRequest`` for ``X``: a numpy array (a tensor; raw bytes when ``raw``),
    or a list of dicts / a pandas DataFrame (named rows).

    ``outputs`` is a subset of ("labels", "probabilities", "values").
    """
    if version is not None and alias is not None:
        raise ValueError("give a version or an alias, not both")
    req = predict_pb2.PredictRequest(raw_output=raw, id=request_id)
    req.model.name = name
    if version is not None:
        req.model.version = version
    elif alias is not None:
        req.model.alias = alias
    for o in outputs:
        req.outputs.append(OUTPUT_KINDS[o])
    is_table = hasattr(X, "to_dict") and hasattr(X, "columns")
    if is_table or (isinstance(X, list) and X and isinstance(X[0], dict)):
        rows_to_proto(X, req.rows)
    elif isinstance(X, list) and not X:
        req.rows.SetInParent()  # zero rows
    else:
        from highpeaks_ml.tensors import write_tensor

        write_tensor(_matrix(X), raw, req.tensor)
    return req


class PredictResult:
    """One prediction as numpy arrays (``None`` for outputs the model does not have)."""

    __slots__ = (
        "class_labels",
        "execution_provider",
        "id",
        "labels",
        "model_name",
        "model_version",
        "probabilities",
        "values",
    )

    def __init__(self, resp: predict_pb2.PredictResponse) -> None:
        from highpeaks_ml.tensors import tensor_to_numpy

        self.model_name: str = resp.model_name
        self.model_version: int = resp.model_version
        self.execution_provider: str = resp.execution_provider
        self.id: str = resp.id
        self.labels = tensor_to_numpy(resp.labels) if resp.HasField("labels") else None
        self.probabilities = (
            tensor_to_numpy(resp.probabilities) if resp.HasField("probabilities") else None
        )
        self.class_labels: list[str] = list(resp.class_labels)
        self.values = tensor_to_numpy(resp.values) if resp.HasField("values") else None

    def __repr__(self) -> str:
        n = next((len(a) for a in (self.labels, self.values) if a is not None), 0)
        return f"PredictResult({self.model_name!r} v{self.model_version}, {n} rows)"


class StreamFailure:
    """A PredictStream request answered with an error (the stream went on)."""

    __slots__ = ("code", "id", "message")

    def __init__(self, code: int, message: str, request_id: str) -> None:
        self.code = code  # a google.rpc.Code value (3 = INVALID_ARGUMENT, ...)
        self.message = message
        self.id = request_id

    def __repr__(self) -> str:
        return f"StreamFailure(code={self.code}, message={self.message!r}, id={self.id!r})"


def _head_and_chunks(stream: Any, head: str) -> tuple[Any, bytes]:
    """A server stream of a ``part`` oneof: its ``head`` message (None when the
    server sent none) and the bytes of its ``chunk`` messages, joined."""
    first = None
    parts: list[bytes] = []
    for msg in stream:
        if msg.WhichOneof("part") == head:
            first = getattr(msg, head)
        else:
            parts.append(msg.chunk)
    return first, b"".join(parts)


def _matches(data: bytes, size: int, sha256: str) -> bool:
    """Whether ``data`` has the size and sha256 the server announced for it."""
    import hashlib

    return len(data) == size and hashlib.sha256(data).hexdigest() == sha256
