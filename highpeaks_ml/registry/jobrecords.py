"""Where training job records are kept: the storage seam under ``training.jobs.JobManager``.

A record is one JSON document per job (``<job id>.json``), replaced whole on
every state change; the job manager is its only writer (the trainer).

- ``LocalJobRecords``: ``<home>/jobs/<id>.json`` (temp file + fsync + rename,
  directory fsynced; the embedded default).
- ``S3JobRecords``: ``jobs/<id>.json`` (one PUT replaces an object atomically
  and is durable when it returns), so a trainer that restarts on another
  node with an empty disk finds its jobs.

A job trained on inline rows (rows sent inside StartTraining) keeps them
beside its record until it ends (``<id>.csv``, same backend), so a queued
inline job survives a restart on any backend. They live and die with the job:
they are not a dataset (ListDatasets never shows them), and the job manager
removes them when the job ends.
"""

from __future__ import annotations

import abc
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from highpeaks_ml.storage import TMP_SUFFIX, fsync_dir, write_atomic

if TYPE_CHECKING:
    from obstore.store import S3Store

log = logging.getLogger("highpeaks_ml.training")

RECORD_SUFFIX = ".json"
INLINE_SUFFIX = ".csv"


class JobRecordStore(abc.ABC):
    """Durable job records by job id (the bytes are the job manager's JSON)."""

    @abc.abstractmethod
    def prepare(self) -> None:
        """Create what is needed and remove leftovers of interrupted writes."""

    @abc.abstractmethod
    def load_all(self) -> list[tuple[str, bytes]]:
        """Every record as (entry name, bytes); unreadable ones are logged and skipped."""

    @abc.abstractmethod
    def write(self, job_id: str, data: bytes) -> None:
        """Replace the record of ``job_id`` atomically and durably."""

    @abc.abstractmethod
    def remove(self, job_ids: list[str]) -> list[str]:
        """Delete records; the ids whose record is gone afterwards."""

    @abc.abstractmethod
    def write_inline(self, job_id: str, data: bytes) -> None:
        """Store a job's inline rows (CSV) atomically and durably."""

    @abc.abstractmethod
    def read_inline(self, job_id: str) -> bytes | None:
        """A job's inline rows, or None when there are none."""

    @abc.abstractmethod
    def remove_inline(self, job_ids: list[str]) -> None:
        """Delete jobs' inline rows (missing ones are fine)."""

    @abc.abstractmethod
    def inline_ids(self) -> list[str]:
        """Ids of the jobs that have inline rows stored."""


class LocalJobRecords(JobRecordStore):
    """``<home>/jobs/<id>.json`` (the embedded default)."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root)

    def prepare(self) -> None:
        """Create the directory; remove temp files of interrupted writes."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for entry in os.listdir(self.dir):
            if entry.startswith(".") and entry.endswith(TMP_SUFFIX):
                (self.dir / entry).unlink(missing_ok=True)

    def load_all(self) -> list[tuple[str, bytes]]:
        """Every ``<id>.json``."""
        out = []
        for entry in os.listdir(self.dir):
            if not entry.endswith(RECORD_SUFFIX) or entry.startswith("."):
                continue
            try:
                out.append((entry, (self.dir / entry).read_bytes()))
            except OSError:
                log.warning("job record %s is unreadable; skipped", entry)
        return out

    def write(self, job_id: str, data: bytes) -> None:
        """Temp file, fsync, rename, fsync the directory."""
        write_atomic(self.dir / f"{job_id}{RECORD_SUFFIX}", data)

    def remove(self, job_ids: list[str]) -> list[str]:
        """unlink each (atomic: never half a record), then one fsync of the directory."""
        removed = []
        for job_id in job_ids:
            try:
                (self.dir / f"{job_id}{RECORD_SUFFIX}").unlink(missing_ok=True)
            except OSError as exc:
                log.warning("could not remove the record of job %s: %s", job_id, exc)
                continue
            removed.append(job_id)
        if removed:
            try:
                fsync_dir(self.dir)
            except OSError as exc:  # the unlinks stand; a crash may bring some back
                log.warning("could not fsync %s after removing job records: %s", self.dir, exc)
        return removed

    def write_inline(self, job_id: str, data: bytes) -> None:
        """``<id>.csv``: temp file, fsync, rename, fsync the directory."""
        write_atomic(self.dir / f"{job_id}{INLINE_SUFFIX}", data)

    def read_inline(self, job_id: str) -> bytes | None:
        """``<id>.csv``'s bytes, or None."""
        try:
            return (self.dir / f"{job_id}{INLINE_SUFFIX}").read_bytes()
        except FileNotFoundError:
            return None

    def remove_inline(self, job_ids: list[str]) -> None:
        """unlink each ``<id>.csv``."""
        for job_id in job_ids:
            (self.dir / f"{job_id}{INLINE_SUFFIX}").unlink(missing_ok=True)

    def inline_ids(self) -> list[str]:
        """The ``<id>.csv`` files."""
        try:
            entries = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return [
            e.removesuffix(INLINE_SUFFIX)
            for e in entries
            if e.endswith(INLINE_SUFFIX) and not e.startswith(".")
        ]


class S3JobRecords(JobRecordStore):
    """``jobs/<id>.json`` on an S3-compatible bucket."""

    def __init__(self, store: S3Store) -> None:
        self.store = store

    def prepare(self) -> None:
        """Nothing to create; a PUT leaves no partial objects behind."""

    def load_all(self) -> list[tuple[str, bytes]]:
        """LIST ``jobs/`` and GET each record."""
        import obstore

        from highpeaks_ml.registry.s3 import unavailable

        out = []
        try:
            paths = [
                o["path"]
                for batch in obstore.list(self.store, "jobs/", chunk_size=1000)
                for o in batch
            ]
            for path in paths:
                name = path.rsplit("/", 1)[-1]
                if not name.endswith(RECORD_SUFFIX) or name.startswith("."):
                    continue
                try:
                    out.append((name, bytes(obstore.get(self.store, path).bytes())))
                except FileNotFoundError:
                    continue  # removed since the LIST
        except Exception as exc:
            raise unavailable(exc, "reading job records") from None
        return out

    def write(self, job_id: str, data: bytes) -> None:
        """One PUT (atomic, durable on return)."""
        import obstore

        from highpeaks_ml.registry.s3 import unavailable

        try:
            obstore.put(self.store, f"jobs/{job_id}{RECORD_SUFFIX}", data)
        except Exception as exc:
            raise unavailable(exc, "writing a job record") from None

    def remove(self, job_ids: list[str]) -> list[str]:
        """One DELETE request for all of them."""
        import obstore

        if not job_ids:
            return []
        try:
            obstore.delete(self.store, [f"jobs/{j}{RECORD_SUFFIX}" for j in job_ids])
        except Exception as exc:
            log.warning("could not remove job records: %s", str(exc).splitlines()[0][:200])
            return []
        return list(job_ids)

    def write_inline(self, job_id: str, data: bytes) -> None:
        """One PUT of ``jobs/<id>.csv``."""
        import obstore

        from highpeaks_ml.registry.s3 import unavailable

        try:
            obstore.put(self.store, f"jobs/{job_id}{INLINE_SUFFIX}", data)
        except Exception as exc:
            raise unavailable(exc, "storing a job's inline rows") from None

    def read_inline(self, job_id: str) -> bytes | None:
        """GET ``jobs/<id>.csv``, or None."""
        import obstore

        from highpeaks_ml.registry.s3 import unavailable

        try:
            return bytes(obstore.get(self.store, f"jobs/{job_id}{INLINE_SUFFIX}").bytes())
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise unavailable(exc, "reading a job's inline rows") from None

    def remove_inline(self, job_ids: list[str]) -> None:
        """One DELETE request for all of them."""
        import obstore

        from highpeaks_ml.registry.s3 import unavailable

        if not job_ids:
            return
        try:
            obstore.delete(self.store, [f"jobs/{j}{INLINE_SUFFIX}" for j in job_ids])
        except FileNotFoundError:
            return
        except Exception as exc:
            raise unavailable(exc, "removing jobs' inline rows") from None

    def inline_ids(self) -> list[str]:
        """LIST ``jobs/`` for ``<id>.csv`` objects."""
        import obstore

        from highpeaks_ml.registry.s3 import unavailable

        try:
            names = [
                o["path"].rsplit("/", 1)[-1]
                for batch in obstore.list(self.store, "jobs/", chunk_size=1000)
                for o in batch
            ]
        except Exception as exc:
            raise unavailable(exc, "listing jobs' inline rows") from None
        return [
            n.removesuffix(INLINE_SUFFIX)
            for n in names
            if n.endswith(INLINE_SUFFIX) and not n.startswith(".")
        ]


__all__ = ["JobRecordStore", "LocalJobRecords", "S3JobRecords"]
