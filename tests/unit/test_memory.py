"""keep_freed_memory: the glibc allocator setting the server applies at start-up."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from highpeaks_ml.memory import ENV_TUNABLES, keep_freed_memory
from tests.conftest import ROOT


def test_zero_keeps_the_c_library_defaults():
    assert keep_freed_memory(0).startswith("off")


@pytest.mark.parametrize("name", ENV_TUNABLES)
def test_an_operator_choice_in_the_environment_wins(monkeypatch, name):
    monkeypatch.setenv(name, "1")
    assert keep_freed_memory(256 << 20) == f"left to the environment ({name})"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_on_glibc_a_freed_large_block_is_reused_not_unmapped():
    # In a child process: mallopt is process-wide. Like a large request (its
    # bytes, the parsed copy, the array, the outputs), the child holds four
    # 1 MiB blocks at once, frees them, and repeats, counting how often the
    # process touched fresh memory (minor page faults). glibc's defaults
    # return the freed 4 MiB to the OS each time (past twice the dynamic
    # threshold); kept, later rounds reuse the first round's pages.
    code = """
import ctypes, resource, sys
from highpeaks_ml.memory import keep_freed_memory
keep = int(sys.argv[1])
print(keep_freed_memory(keep))
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def request():
    blocks = [bytearray(1 << 20) for _ in range(4)]  # allocated and zero-filled (touched)
    del blocks
for _ in range(3):  # settle: the first rounds map memory either way
    request()
before = faults()
for _ in range(50):
    request()
print(faults() - before)
"""
    env_free = {k: v for k, v in __import__("os").environ.items() if k not in ENV_TUNABLES}

    def run(keep: int) -> tuple[str, int]:
        out = subprocess.run(
            [sys.executable, "-c", code, str(keep)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            env=env_free,
        ).stdout.split("\n")
        return out[0], int(out[1])

    said, kept_faults = run(256 << 20)
    assert said == "keeps up to 256 MiB of freed memory"
    said, default_faults = run(0)
    assert said.startswith("off")
    # 50 rounds of 1,024 pages: glibc's defaults fault most of them in again;
    # kept memory faults (almost) none.
    assert kept_faults < 1_000 < default_faults, (kept_faults, default_faults)
