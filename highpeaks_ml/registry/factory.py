"""``open_store(settings)``: the one place that picks the storage backend.

``--store`` empty (the default): everything in the directory ``--home``
(``LocalModelStore``, ``<home>/datasets``, ``<home>/jobs``). ``--store
s3://bucket/prefix``: models, datasets and job records on S3-compatible object
storage under that prefix, with ``--home`` holding only the local cache of
downloaded models and scratch space (an ``emptyDir`` is enough).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from highpeaks_ml.config import Settings
from highpeaks_ml.registry.base import ModelStore
from highpeaks_ml.registry.datasets import DatasetBlobs, LocalDatasetBlobs
from highpeaks_ml.registry.jobrecords import JobRecordStore, LocalJobRecords


@dataclass(frozen=True)
class Stores:
    """The durable stores of one server, all on the same backend."""

    models: ModelStore
    datasets: DatasetBlobs
    jobs: JobRecordStore
    #: "local" or "s3".
    kind: str


def open_store(settings: Settings) -> Stores:
    """The stores ``settings.store`` names (nothing is contacted until ``start()``)."""
    home = Path(settings.home)
    home.mkdir(parents=True, exist_ok=True)
    if not settings.store:
        from highpeaks_ml.registry.local import LocalModelStore

        return Stores(
            LocalModelStore(home),
            LocalDatasetBlobs(home / "datasets"),
            LocalJobRecords(home / "jobs"),
            "local",
        )
    from highpeaks_ml.registry.datasets import S3DatasetBlobs
    from highpeaks_ml.registry.jobrecords import S3JobRecords
    from highpeaks_ml.registry.s3 import S3Location, S3ModelStore, connect

    location = S3Location.parse(settings.store)
    client = connect(location)
    return Stores(
        S3ModelStore(
            location,
            home / "store",
            poll_s=settings.store_poll_s,
            cache_bytes=int(settings.store_cache_mb * 1024 * 1024),
            store=client,
        ),
        S3DatasetBlobs(client, str(location)),
        S3JobRecords(client),
        "s3",
    )


__all__ = ["Stores", "open_store"]
