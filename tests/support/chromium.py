"""Headless Chromium (Debian's ``chromium`` package; scripts/ensure_chromium.sh installs it)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
)
#: What Chromium logs for each page console message (errors, CSP violations, failed loads).
_CONSOLE = re.compile(r":(?:INFO|WARNING|ERROR):CONSOLE[^\]]*\]\s*(.*)")


def binary() -> str:
    """The chromium executable; fails (never skips) when missing: ``make test`` installs it."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium is not installed: run scripts/ensure_chromium.sh (make test does)")


@dataclass
class Page:
    console: list[str]
    output: str


def open_page(page: Path, *extra: str, timeout: float = 90) -> Page:
    """Load ``page`` (file://) with ``extra`` flags (--screenshot=..., --dump-dom)."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        proc = subprocess.run(
            [binary(), *FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [m.group(1) for line in proc.stderr.splitlines() if (m := _CONSOLE.search(line))]
    return Page(console=console, output=proc.stdout)
