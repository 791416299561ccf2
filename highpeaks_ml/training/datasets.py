"""Datasets: uploaded CSV files (content-addressed), scikit-learn's built-ins, inline rows.

Layout under ``home``::

    datasets/<sha256>/data.csv    the uploaded bytes, exactly as sent
    datasets/<sha256>/meta.json   DatasetInfo: name, size, rows, columns with inferred types
    tmp/upload-<uuid>/            an upload in progress
    tmp/upload-<uuid>.lock        held (flock) by the uploading process; start-up removes
                                  uploads whose lock is free (their process died)

An upload streams to a staging file under ``tmp/`` with a running sha256 and
the size limit checked on every chunk, is parsed and validated, and becomes
visible with one ``rename(2)`` of its staging directory to
``datasets/<sha256>``: the same bytes always get the same id, and a crash
leaves either no dataset or a complete one.

Column types follow the API's definition: a column is numeric when every
non-empty value parses as a finite number, categorical otherwise. Values
pandas reads as missing (an empty field, ``NA``, ``null``, ``nan``...) are
missing. A column that parses as numbers but holds an infinity is refused.

This module never imports grpc; errors are ``highpeaks_ml.errors`` with
messages that name the problem (never a path).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from highpeaks_ml.errors import InvalidArgument, NotFound, ResourceExhausted, clip, quote
from highpeaks_ml.registry.base import validate_name
from highpeaks_ml.registry.datasets import DatasetBlobs, LocalDatasetBlobs, meta_bytes

log = logging.getLogger("highpeaks_ml.datasets")

NUMERIC = "numeric"
CATEGORICAL = "categorical"
CSV = "csv"
DATA_FILE = "data.csv"
META_FILE = "meta.json"
UPLOAD_PREFIX = "upload-"
DEFAULT_TARGET = "target"
#: Distinct values are counted up to this many (the API's documented cap).
MAX_DISTINCT = 1_000_000
#: Rows per chunk when scanning a CSV (bounds memory for large uploads).
_CHUNK_ROWS = 100_000
_ID = re.compile(r"^[0-9a-f]{64}$")
_MAX_SHOWN_COLUMNS = 20

#: Built-in datasets: scikit-learn ships them, no network needed.
BUILTINS: tuple[str, ...] = ("breast_cancer", "diabetes", "digits", "iris", "wine")


@dataclass(frozen=True)
class ColumnInfo:
    """One column of a dataset with what was inferred about it."""

    name: str
    type: str  # NUMERIC | CATEGORICAL
    distinct_values: int  # capped at MAX_DISTINCT
    missing: int = 0
    #: Numeric and every present value a whole number.
    integral: bool = False


@dataclass(frozen=True)
class DatasetInfo:
    """A stored (or built-in, or inline) dataset's description."""

    id: str
    name: str
    format: str
    size_bytes: int
    rows: int
    columns: tuple[ColumnInfo, ...]
    created_at: float
    created_by: str = ""
    #: The target column named at upload: the default target of jobs on this
    #: dataset ("" when none was named). The latest upload that names one sets it.
    target_column: str = ""

    def column(self, name: str) -> ColumnInfo | None:
        """The column called ``name``, or None."""
        for c in self.columns:
            if c.name == name:
                return c
        return None

    @property
    def column_names(self) -> list[str]:
        """Column names in file order."""
        return [c.name for c in self.columns]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetInfo:
        """Inverse of ``to_dict``."""
        d = dict(data)
        d["columns"] = tuple(ColumnInfo(**c) for c in d.get("columns", ()))
        return cls(**d)


# --- parsing and schema inference ------------------------------------------------


class _ColumnStats:
    """Accumulates one column's type, missing count and distinct values over chunks.

    Distinct numbers are kept as a sorted float64 array (8 bytes each, up to
    the cap); distinct texts only once the column turned out categorical.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.numeric = True
        self.integral = True
        self.missing = 0
        self.present = 0
        self.numbers = np.empty(0, dtype="float64")
        self.texts: set[str] = set()
        self.infinite_at: int | None = None

    def _add_texts(self, values: Iterable[Any]) -> None:
        room = MAX_DISTINCT - len(self.texts)
        if room > 0:
            self.texts.update(list(values)[:room])

    def add(self, series: pd.Series, first_row: int) -> None:
        missing = series.isna()
        self.missing += int(missing.sum())
        values = series[~missing]
        self.present += len(values)
        if len(values) == 0:
            return
        if pd.api.types.is_bool_dtype(values):
            values = values.astype(str)
        if not self.numeric:
            self._add_texts(values.astype(str).unique())
            return
        if pd.api.types.is_numeric_dtype(values):
            numbers = values.astype("float64")
        else:
            numbers = pd.to_numeric(values, errors="coerce")
            if numbers.isna().any():
                # Not numeric after all: count distinct texts from here on,
                # seeded with the numbers seen so far.
                self.numeric = False
                self._add_texts(_number_text(x) for x in self.numbers.tolist())
                self._add_texts(values.astype(str).unique())
                return
        array = numbers.to_numpy(dtype="float64")
        infinite = ~np.isfinite(array)
        if infinite.any() and self.infinite_at is None:
            self.infinite_at = first_row + int(np.flatnonzero(~missing.to_numpy())[infinite][0])
        finite = array[~infinite]
        if self.integral and not np.all(np.floor(finite) == finite):
            self.integral = False
        if len(self.numbers) < MAX_DISTINCT:
            self.numbers = np.union1d(self.numbers, finite)[:MAX_DISTINCT]

    def info(self) -> ColumnInfo:
        if self.numeric and self.infinite_at is not None:
            raise InvalidArgument(
                f"column {quote(self.name)} has an infinite value"
                f" (data row {self.infinite_at + 1}); only finite numbers are accepted"
            )
        if self.numeric:
            return ColumnInfo(
                self.name,
                NUMERIC,
                min(len(self.numbers), MAX_DISTINCT),
                self.missing,
                self.integral and self.present > 0,
            )
        return ColumnInfo(self.name, CATEGORICAL, min(len(self.texts), MAX_DISTINCT), self.missing)


def _number_text(x: float) -> str:
    return str(int(x)) if x.is_integer() and abs(x) < 2**53 else repr(x)


def _check_header(header: list[str]) -> None:
    seen: set[str] = set()
    for i, name in enumerate(header, 1):
        if not name.strip():
            raise InvalidArgument(f"CSV header: column {i} has an empty name")
        if name in seen:
            raise InvalidArgument(f"CSV header: column name {quote(name)} appears twice")
        seen.add(name)


def _scan_csv(path: Path) -> tuple[list[str], int]:
    """Header and data-row count; InvalidArgument for empty, ragged or non-UTF-8 files."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, strict=True)
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise InvalidArgument("the dataset is empty: a CSV needs a header row")
            _check_header(header)
            width = len(header)
            rows = 0
            for row in reader:
                if not row:
                    continue  # blank line (pandas skips them too)
                if len(row) != width:
                    raise InvalidArgument(
                        f"ragged rows: line {reader.line_num} has {len(row)} fields"
                        f" but the header has {width}"
                    )
                rows += 1
    except UnicodeDecodeError:
        raise InvalidArgument("the dataset is not UTF-8 text") from None
    except csv.Error as exc:
        raise InvalidArgument(f"malformed CSV: {exc}") from None
    if rows == 0:
        raise InvalidArgument("the dataset has a header but no data rows")
    return header, rows


def _read_csv(source: Any, **kwargs: Any) -> Any:
    # Every value is read as text first, so that typing is ours (see
    # _ColumnStats), the same at upload and at training time.
    return pd.read_csv(
        source,
        dtype=str,
        encoding="utf-8-sig",
        skip_blank_lines=True,
        keep_default_na=True,
        **kwargs,
    )


def analyse_csv(path: Path) -> tuple[int, tuple[ColumnInfo, ...]]:
    """Validate a CSV file and infer its schema: (data rows, columns)."""
    header, rows = _scan_csv(path)
    stats = [_ColumnStats(name) for name in header]
    seen = 0
    try:
        for chunk in _read_csv(path, chunksize=_CHUNK_ROWS):
            if list(chunk.columns) != header:
                raise InvalidArgument("malformed CSV: the header could not be read consistently")
            for s, name in zip(stats, header, strict=True):
                s.add(chunk[name], seen)
            seen += len(chunk)
    except (pd.errors.ParserError, ValueError) as exc:
        if isinstance(exc, InvalidArgument):
            raise
        raise InvalidArgument(f"malformed CSV: {str(exc).splitlines()[0][:200]}") from None
    if seen != rows:
        raise InvalidArgument(
            f"malformed CSV: {rows} rows by line count but {seen} parsed; check the quoting"
        )
    return rows, tuple(s.info() for s in stats)


def analyse_frame(frame: pd.DataFrame) -> tuple[ColumnInfo, ...]:
    """Schema of an in-memory table (built-in datasets)."""
    out = []
    for name in frame.columns:
        s = _ColumnStats(str(name))
        s.add(frame[name], 0)
        out.append(s.info())
    return tuple(out)


def load_csv_frame(path: Path | BinaryIO, columns: Iterable[ColumnInfo]) -> pd.DataFrame:
    """Read the given columns of a CSV for training, typed as at upload.

    Numeric columns become float64 (missing values NaN); categorical ones
    strings, a missing value being the empty string.
    """
    cols = list(columns)
    frame = _read_csv(path, usecols=[c.name for c in cols])
    return type_frame(frame, cols)


def type_frame(frame: pd.DataFrame, columns: Iterable[ColumnInfo]) -> pd.DataFrame:
    """Cast ``frame``'s columns to their inferred types (see ``load_csv_frame``)."""
    out = {}
    for c in columns:
        s = frame[c.name]
        if c.type == NUMERIC:
            out[c.name] = pd.to_numeric(s, errors="coerce").astype("float64")
        else:
            out[c.name] = s.astype(object).where(s.notna(), "").astype(str).astype(object)
    return pd.DataFrame(out, index=range(len(frame)))


def inline_csv(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Canonical CSV bytes for inline rows (a list of column -> number/string/null dicts).

    Every row must have the same keys (ragged rows are refused); nested values
    are refused. The bytes are what the job trains on and what its sha256
    fingerprints.
    """
    if not rows:
        raise InvalidArgument("inline dataset has no rows")
    header = list(rows[0].keys())
    if not header:
        raise InvalidArgument("inline row 1 has no columns")
    _check_header(header)
    keys = set(header)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for i, row in enumerate(rows, 1):
        if set(row.keys()) != keys:
            extra = sorted(set(row.keys()) - keys)
            lacking = sorted(keys - set(row.keys()))
            detail = []
            if lacking:
                detail.append(f"lacks {', '.join(map(repr, lacking[:5]))}")
            if extra:
                detail.append(f"has extra {', '.join(map(repr, extra[:5]))}")
            raise InvalidArgument(
                f"ragged rows: inline row {i} {' and '.join(detail)} (every row needs the"
                " keys of row 1)"
            )
        writer.writerow([_cell(row[k], i, k) for k in header])
    return buf.getvalue().encode("utf-8")


def _cell(value: Any, row: int, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(
                f"inline row {row}, column {quote(column)}: {value!r} is not finite"
            )
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    if isinstance(value, str):
        return value
    raise InvalidArgument(
        f"inline row {row}, column {quote(column)}: only numbers, strings and null are accepted"
    )


def builtin_frame(name: str) -> pd.DataFrame:
    """A built-in dataset as a table: its features, then the "target" column."""
    from sklearn import datasets as skd

    loaders = {
        "breast_cancer": skd.load_breast_cancer,
        "diabetes": skd.load_diabetes,
        "digits": skd.load_digits,
        "iris": skd.load_iris,
        "wine": skd.load_wine,
    }
    if name not in loaders:
        raise InvalidArgument(
            f"unknown built-in dataset {quote(name)}; choose one of {', '.join(BUILTINS)}"
        )
    bunch = loaders[name](as_frame=True)
    frame = bunch.frame.copy()
    # Feature columns in file order, target last, every name a string.
    frame.columns = [str(c) for c in frame.columns]
    target = frame.pop(DEFAULT_TARGET)
    frame[DEFAULT_TARGET] = target
    return frame.astype("float64")


def frame_sha256(frame: pd.DataFrame) -> str:
    """sha256 of a table's canonical CSV (how built-in data is fingerprinted)."""
    return hashlib.sha256(frame.to_csv(index=False, lineterminator="\n").encode()).hexdigest()


def validate_dataset_id(value: str) -> str:
    """A dataset id is a lowercase sha256 hex digest."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidArgument(f"invalid dataset id {quote(value)}: expected a sha256 hex digest")
    return value


def check_target_column(info: DatasetInfo, target: str) -> ColumnInfo:
    """The target column, checked: present, no missing values, at least two distinct values."""
    col = info.column(target)
    if col is None:
        names = info.column_names
        shown = ", ".join(clip(n, 40) for n in names[:_MAX_SHOWN_COLUMNS])
        shown += ", ..." if len(names) > _MAX_SHOWN_COLUMNS else ""
        raise InvalidArgument(
            f"target column {quote(target)} is not in the dataset (columns: {shown})"
        )
    if col.missing:
        raise InvalidArgument(
            f"target column {quote(target)} has {col.missing} missing (empty or NaN) values;"
            " every row needs a target"
        )
    if col.distinct_values < 2:
        raise InvalidArgument(
            f"target column {quote(target)} is constant (one distinct value):"
            " there is nothing to learn"
        )
    return col


# --- the store -------------------------------------------------------------------


def _abandoned(lock: Path) -> bool:
    """Whether no live process holds ``lock`` (a missing lock counts as abandoned)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops the lock we may have taken
    return True


class Upload:
    """One upload in progress: ``write`` chunks, then ``finish`` (or ``discard``)."""

    def __init__(
        self,
        store: DatasetStore,
        name: str,
        expected_sha256: str,
        target_column: str,
        created_by: str,
    ) -> None:
        self.store = store
        self.name = name
        self.expected_sha256 = expected_sha256
        self.target_column = target_column
        self.created_by = created_by
        self.staging = store.tmp_dir / f"{UPLOAD_PREFIX}{uuid.uuid4().hex}"
        # The lock file exists (and is held) for as long as this upload does,
        # so another process's start-up never removes a live upload (the
        # home may be a volume shared with other replicas).
        self._lock_path = Path(f"{self.staging}.lock")
        self._lock_fd = os.open(self._lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self.staging.mkdir(parents=True)
        self._file: Any = open(self.staging / DATA_FILE, "wb")  # noqa: SIM115 - closed in finish
        self._hash = hashlib.sha256()
        self.size = 0
        self._done = False

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; ResourceExhausted (and the upload dropped) past the size limit."""
        if self._done:
            raise InvalidArgument("the upload is already finished")
        self.size += len(chunk)
        if self.size > self.store.max_bytes:
            self.discard()
            raise ResourceExhausted(
                f"dataset is larger than the limit of {self.store.max_bytes} bytes"
            )
        self._hash.update(chunk)
        self._file.write(chunk)

    def finish(self) -> DatasetInfo:
        """Validate, then make the dataset visible; returns it (an existing one if same bytes)."""
        if self._done:
            raise InvalidArgument("the upload is already finished")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            digest = self._hash.hexdigest()
            if self.expected_sha256 and self.expected_sha256 != digest:
                raise InvalidArgument(
                    f"sha256 mismatch: the upload hashes to {digest}, not {self.expected_sha256}"
                )
            if self.size == 0:
                raise InvalidArgument("the dataset is empty (0 bytes)")
            existing = self.store.find(digest)
            if existing is not None:
                if self.target_column and self.target_column != existing.target_column:
                    check_target_column(existing, self.target_column)
                    return self.store._set_target(existing, self.target_column)
                return existing
            rows, columns = analyse_csv(self.staging / DATA_FILE)
            info = DatasetInfo(
                id=digest,
                name=self.name,
                format=CSV,
                size_bytes=self.size,
                rows=rows,
                columns=columns,
                created_at=time.time(),
                created_by=self.created_by,
                target_column=self.target_column,
            )
            if self.target_column:
                check_target_column(info, self.target_column)
            return self.store._commit(self.staging, info)
        finally:
            self.discard()

    def discard(self) -> None:
        """Drop the staging files (idempotent)."""
        if not self._done:
            self._done = True
            with contextlib.suppress(OSError):
                self._file.close()
            shutil.rmtree(self.staging, ignore_errors=True)
            self._lock_path.unlink(missing_ok=True)
            os.close(self._lock_fd)


class DatasetStore:
    """Uploaded datasets (kept by ``blobs``: ``<home>/datasets`` unless given another
    backend, registry/datasets.py) plus the built-in ones. Uploads are staged and
    validated under ``<home>/tmp``."""

    def __init__(
        self, home: Path, max_bytes: int = 1024**3, blobs: DatasetBlobs | None = None
    ) -> None:
        self.home = Path(home)
        self.dir = self.home / "datasets"
        self.tmp_dir = self.home / "tmp"
        self.blobs = blobs if blobs is not None else LocalDatasetBlobs(self.dir)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._cache: dict[str, DatasetInfo] = {}
        self._builtins: dict[str, tuple[DatasetInfo, str]] = {}

    def start(self) -> None:
        """Create the directories and remove uploads a crashed process left behind.

        An upload is abandoned when its lock file is missing or not held
        (its owner died); live uploads of other processes are left alone.
        """
        self.blobs.start()
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        names = set(os.listdir(self.tmp_dir))
        for entry in sorted(names):
            if not entry.startswith(UPLOAD_PREFIX) or entry.endswith(".lock"):
                continue
            lock = self.tmp_dir / f"{entry}.lock"
            if _abandoned(lock):
                shutil.rmtree(self.tmp_dir / entry, ignore_errors=True)
                lock.unlink(missing_ok=True)
                log.warning("removed an interrupted dataset upload", extra={"entry": entry})
        for entry in names:
            lock = self.tmp_dir / entry
            if entry.startswith(UPLOAD_PREFIX) and entry.endswith(".lock"):
                staging = self.tmp_dir / entry.removesuffix(".lock")
                if not staging.exists() and _abandoned(lock):
                    lock.unlink(missing_ok=True)

    # --- uploads -----------------------------------------------------------

    def begin_upload(
        self,
        name: str = "",
        expected_sha256: str = "",
        target_column: str = "",
        created_by: str = "",
    ) -> Upload:
        """Start an upload; InvalidArgument for a bad name or sha256."""
        if name:
            validate_name(name, "dataset name")
        expected = expected_sha256.strip().lower() if expected_sha256 else ""
        if expected:
            validate_dataset_id(expected)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        return Upload(self, name, expected, target_column, created_by)

    def add_bytes(self, data: bytes, name: str = "", target_column: str = "") -> DatasetInfo:
        """Store ``data`` in one go (tests and small files)."""
        upload = self.begin_upload(name, target_column=target_column)
        try:
            upload.write(data)
        except BaseException:
            upload.discard()
            raise
        return upload.finish()

    def _commit(self, staging: Path, info: DatasetInfo) -> DatasetInfo:
        if not self.blobs.commit(info.id, staging, meta_bytes(info.to_dict())):
            # Same bytes stored meanwhile by a concurrent upload: keep that one.
            existing = self.find(info.id)
            if existing is not None:
                return existing
            raise FileExistsError(errno.EEXIST, "dataset exists but cannot be read")
        with self._lock:
            self._cache[info.id] = info
        log.info(
            "stored dataset",
            extra={"dataset": info.id, "rows": info.rows, "bytes": info.size_bytes},
        )
        return info

    def _set_target(self, info: DatasetInfo, target_column: str) -> DatasetInfo:
        """Record ``target_column`` as the dataset's default target (meta.json, atomically)."""
        updated = replace(info, target_column=target_column)
        self.blobs.write_meta(info.id, meta_bytes(updated.to_dict()))
        with self._lock:
            self._cache[info.id] = updated
        log.info("dataset default target set", extra={"dataset": info.id})
        return updated

    # --- reads -------------------------------------------------------------

    def find(self, dataset_id: str) -> DatasetInfo | None:
        """A stored dataset or None."""
        with self._lock:
            hit = self._cache.get(dataset_id)
        if hit is not None:
            return hit
        try:
            data = self.blobs.read_meta(dataset_id)
            if data is None:
                return None
            info = DatasetInfo.from_dict(json.loads(data))
        except (OSError, ValueError, TypeError):
            log.warning("dataset %s has unreadable metadata; skipped", dataset_id)
            return None
        with self._lock:
            self._cache[dataset_id] = info
        return info

    def get(self, dataset_id: str) -> DatasetInfo:
        """A stored dataset; InvalidArgument for a malformed id, NotFound when unknown."""
        validate_dataset_id(dataset_id)
        info = self.find(dataset_id)
        if info is None:
            raise NotFound(f"dataset {quote(dataset_id)} not found")
        return info

    def list(self, limit: int = 100) -> list[DatasetInfo]:
        """Stored datasets, newest first."""
        entries = [e for e in self.blobs.list_ids() if _ID.fullmatch(e)]
        found = [info for e in entries if (info := self.find(e)) is not None]
        found.sort(key=lambda d: (d.created_at, d.id), reverse=True)
        return found[: limit if limit > 0 else 100]

    def read_bytes(self, dataset_id: str) -> bytes:
        """A stored dataset's bytes (what a training job's spec carries)."""
        self.get(dataset_id)
        return self.blobs.read_data(dataset_id)

    def builtin(self, name: str) -> tuple[DatasetInfo, str]:
        """A built-in dataset's description and the sha256 of its canonical CSV."""
        with self._lock:
            hit = self._builtins.get(name)
        if hit is not None:
            return hit
        frame = builtin_frame(name)
        digest = frame_sha256(frame)
        info = DatasetInfo(
            id=f"builtin:{name}",
            name=name,
            format=CSV,
            size_bytes=0,
            rows=len(frame),
            columns=analyse_frame(frame),
            created_at=0.0,
        )
        with self._lock:
            self._builtins[name] = (info, digest)
        return info, digest


__all__ = [
    "BUILTINS",
    "CATEGORICAL",
    "DEFAULT_TARGET",
    "NUMERIC",
    "ColumnInfo",
    "DatasetInfo",
    "DatasetStore",
    "Upload",
    "analyse_csv",
    "analyse_frame",
    "builtin_frame",
    "check_target_column",
    "inline_csv",
    "load_csv_frame",
    "type_frame",
    "validate_dataset_id",
]
