"""Crash-safe file primitives shared by the registry, datasets and jobs stores."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

#: Suffix of the temporary files ``write_atomic`` leaves behind after a crash;
#: each store's start-up recovery removes ``.NAME.<hex>.tmp`` leftovers.
TMP_SUFFIX = ".tmp"


def fsync_dir(path: Path) -> None:
    """fsync a directory, so entries created, renamed or removed in it survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file in the same dir, fsync, rename, fsync dir.

    A reader (or a crash) sees the old content or the new, never a mix.
    """
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}{TMP_SUFFIX}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
