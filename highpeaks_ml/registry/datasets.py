"""Where uploaded datasets are kept: the storage seam under ``training.datasets.DatasetStore``.

A stored dataset is content-addressed: its id is the sha256 of its bytes. A
backend keeps, per id, the bytes (``data.csv``) and a JSON description
(``meta.json``, written by ``DatasetStore``), and makes a new dataset visible
only complete: the description is the commit point, written after the bytes.

- ``LocalDatasetBlobs``: ``<home>/datasets/<sha256>/`` (rename of a staged
  directory; the embedded default).
- ``S3DatasetBlobs``: ``datasets/<sha256>/data.csv`` then ``meta.json``
  created with ``If-None-Match: *`` (the same bytes uploaded twice at once:
  one creates it, the other finds it); bytes read back are checked against
  the id.

Uploads are parsed and validated on local disk (``<home>/tmp``) on both
backends before they are committed.
"""

from __future__ import annotations

import abc
import errno
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from highpeaks_ml.errors import NotFound, Unavailable, quote
from highpeaks_ml.storage import fsync_dir, write_atomic

if TYPE_CHECKING:
    from obstore.store import S3Store

log = logging.getLogger("highpeaks_ml.datasets")

DATA_FILE = "data.csv"
META_FILE = "meta.json"
_ID = re.compile(r"^[0-9a-f]{64}$")


class DatasetBlobs(abc.ABC):
    """Storage of datasets' bytes and descriptions, by sha256 id."""

    @abc.abstractmethod
    def start(self) -> None:
        """Create what is needed; check access (a start-up error when refused)."""

    @abc.abstractmethod
    def commit(self, dataset_id: str, staging: Path, meta: bytes) -> bool:
        """Store ``staging/data.csv`` with its description ``meta`` under ``dataset_id``.

        ``staging`` is consumed. False when the dataset already existed (a
        concurrent upload of the same bytes won): the caller reads that one.
        """

    @abc.abstractmethod
    def read_meta(self, dataset_id: str) -> bytes | None:
        """A dataset's description, or None when there is no such dataset."""

    @abc.abstractmethod
    def write_meta(self, dataset_id: str, meta: bytes) -> None:
        """Replace a stored dataset's description atomically."""

    @abc.abstractmethod
    def list_ids(self) -> list[str]:
        """Ids of the stored datasets (in no particular order)."""

    @abc.abstractmethod
    def read_data(self, dataset_id: str) -> bytes:
        """A stored dataset's bytes; NotFound when unknown."""


class LocalDatasetBlobs(DatasetBlobs):
    """``<home>/datasets/<sha256>/{data.csv,meta.json}`` (the embedded default)."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root)

    def start(self) -> None:
        """Create the directory."""
        self.dir.mkdir(parents=True, exist_ok=True)

    def commit(self, dataset_id: str, staging: Path, meta: bytes) -> bool:
        """meta.json into the staging directory (fsynced), then one rename makes it visible."""
        with open(staging / META_FILE, "wb") as f:
            f.write(meta)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(staging)
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staging, self.dir / dataset_id)
        except OSError as exc:
            # Same bytes stored meanwhile by a concurrent upload: keep that one.
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            return False
        fsync_dir(self.dir)
        return True

    def read_meta(self, dataset_id: str) -> bytes | None:
        """meta.json, or None."""
        try:
            return (self.dir / dataset_id / META_FILE).read_bytes()
        except FileNotFoundError:
            return None

    def write_meta(self, dataset_id: str, meta: bytes) -> None:
        """Replace meta.json (temp file + fsync + rename)."""
        write_atomic(self.dir / dataset_id / META_FILE, meta)

    def list_ids(self) -> list[str]:
        """Directory entries that are sha256 ids."""
        try:
            return [e for e in os.listdir(self.dir) if _ID.fullmatch(e)]
        except FileNotFoundError:
            return []

    def data_path(self, dataset_id: str) -> Path:
        """Where a dataset's bytes are on disk."""
        return self.dir / dataset_id / DATA_FILE

    def read_data(self, dataset_id: str) -> bytes:
        """data.csv's bytes."""
        try:
            return self.data_path(dataset_id).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"dataset {quote(dataset_id)} not found") from None


class S3DatasetBlobs(DatasetBlobs):
    """``datasets/<sha256>/{data.csv,meta.json}`` on an S3-compatible bucket."""

    def __init__(self, store: S3Store, location: str) -> None:
        self.store = store
        self.location = location

    def start(self) -> None:
        """Nothing to create (the model store's start-up checked access)."""

    def commit(self, dataset_id: str, staging: Path, meta: bytes) -> bool:
        """The bytes first, then meta.json with If-None-Match (the commit point)."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        from highpeaks_ml.registry.s3 import unavailable

        try:
            obstore.put(self.store, _key(dataset_id, DATA_FILE), staging / DATA_FILE)
            obstore.put(self.store, _key(dataset_id, META_FILE), meta, mode="create")
        except (AlreadyExistsError, PreconditionError):
            return False
        except Exception as exc:
            raise unavailable(exc, "storing a dataset") from None
        return True

    def read_meta(self, dataset_id: str) -> bytes | None:
        """meta.json, or None."""
        import obstore

        from highpeaks_ml.registry.s3 import unavailable

        try:
            return bytes(obstore.get(self.store, _key(dataset_id, META_FILE)).bytes())
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise unavailable(exc, "reading a dataset") from None

    def write_meta(self, dataset_id: str, meta: bytes) -> None:
        """Replace meta.json (one PUT: atomic on S3)."""
        import obstore

        from highpeaks_ml.registry.s3 import unavailable

        try:
            obstore.put(self.store, _key(dataset_id, META_FILE), meta)
        except Exception as exc:
            raise unavailable(exc, "updating a dataset") from None

    def list_ids(self) -> list[str]:
        """The ``datasets/<id>/`` prefixes."""
        import obstore

        from highpeaks_ml.registry.s3 import unavailable

        try:
            listed = obstore.list_with_delimiter(self.store, "datasets/")
        except Exception as exc:
            raise unavailable(exc, "listing datasets") from None
        ids = [p.rstrip("/").rsplit("/", 1)[-1] for p in listed["common_prefixes"]]
        return [i for i in ids if _ID.fullmatch(i)]

    def read_data(self, dataset_id: str) -> bytes:
        """data.csv's bytes, checked against the id (their sha256)."""
        import obstore

        from highpeaks_ml.registry.s3 import unavailable

        try:
            data = bytes(obstore.get(self.store, _key(dataset_id, DATA_FILE)).bytes())
        except FileNotFoundError:
            raise NotFound(f"dataset {quote(dataset_id)} not found") from None
        except Exception as exc:
            raise unavailable(exc, "reading a dataset") from None
        if hashlib.sha256(data).hexdigest() != dataset_id:
            log.error("dataset sha256 mismatch", extra={"dataset": dataset_id})
            raise Unavailable(
                f"dataset {quote(dataset_id)} failed its integrity check (sha256 mismatch)"
            )
        return data


def _key(dataset_id: str, name: str) -> str:
    return f"datasets/{dataset_id}/{name}"


def meta_bytes(info_dict: dict[str, object]) -> bytes:
    """A dataset description as stored (indented JSON)."""
    return json.dumps(info_dict, indent=2).encode()


__all__ = ["DatasetBlobs", "LocalDatasetBlobs", "S3DatasetBlobs", "meta_bytes"]
