#!/usr/bin/env python
"""Pin the CUDA/cuDNN wheels of ``onnxruntime-gpu[cuda,cudnn]`` in constraints.txt.

Also XGBoost's CUDA build (``xgboost``, the image's ``boost-gpu`` extra, at
the version of the ``xgboost-cpu`` pin) and what it brings (NCCL).

The Docker image installs ``onnxruntime-gpu[cuda,cudnn]`` (``WITH_CUDA_LIBS=true``)
with ``--constraint constraints.txt``; without pins here the NVIDIA wheels
would float within onnxruntime-gpu's ``~=13.0`` / ``~=9.0`` ranges, so two
builds of the same commit could ship different CUDA libraries.

``make lock`` runs this after ``pip freeze``: it asks pip to *resolve* the
extras against the pins already in constraints.txt (``--dry-run --report``:
metadata only, the ~1.2 GB of wheels are not downloaded) and appends each
package the file does not pin yet, under a marker comment. Pins for packages
that are not installed do nothing, so CI's and developers' environments are
unchanged.

    python scripts/pin_cuda_libs.py            # rewrite the block in constraints.txt
    python scripts/pin_cuda_libs.py --check    # exit 1 if the block is missing a package
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"
MARKER = "# --- CUDA/cuDNN wheels of onnxruntime-gpu[cuda,cudnn] (Docker image only)"
EXTRAS = "cuda,cudnn"


def normalise(name: str) -> str:
    """A package name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def split(text: str) -> tuple[list[str], list[str]]:
    """(lines before the CUDA block, the block's pin lines)."""
    lines = text.splitlines()
    if MARKER not in lines:
        return lines, []
    at = lines.index(MARKER)
    block = [ln for ln in lines[at + 1 :] if ln and not ln.startswith("#")]
    return lines[:at], block


def pins(lines: list[str]) -> dict[str, str]:
    """Normalised name -> version of every ``name==version`` line (comments skipped)."""
    out = {}
    for line in lines:
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split(";")[0].strip().split("==", 1)
            out[normalise(name)] = version.strip()
    return out


def resolve(base: list[str]) -> dict[str, str]:
    """name -> version of everything ``onnxruntime-gpu[cuda,cudnn]`` installs, within ``base``."""
    ort = pins(base).get("onnxruntime-gpu")
    if ort is None:
        raise SystemExit("constraints.txt pins no onnxruntime-gpu")
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "c.txt"
        constraints.write_text("\n".join(base) + "\n")
        report = Path(tmp) / "report.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--ignore-installed",
                "--quiet",
                "--report",
                str(report),
                "--constraint",
                str(constraints),
                f"onnxruntime-gpu[{EXTRAS}]=={ort}",
                *_xgboost_gpu(base),
            ],
            check=True,
        )
        data = json.loads(report.read_text())
    return {normalise(i["metadata"]["name"]): i["metadata"]["version"] for i in data["install"]}


def _xgboost_gpu(base: list[str]) -> list[str]:
    """``xgboost==V`` for the xgboost-cpu pin V (same module, CUDA build), if any."""
    version = pins(base).get("xgboost-cpu")
    return [f"xgboost=={version}"] if version else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if a pin is missing")
    args = parser.parse_args()
    base, block = split(CONSTRAINTS.read_text())
    known = pins(base)
    wanted = {n: v for n, v in resolve(base).items() if n not in known}
    if args.check:
        missing = {n: v for n, v in wanted.items() if pins(block).get(n) != v}
        for name, version in sorted(missing.items()):
            print(f"constraints.txt: {name}=={version} is not pinned (run make lock)")
        return 1 if missing else 0
    body = [*base, MARKER, "# resolved by scripts/pin_cuda_libs.py (make lock)"]
    body += [f"{name}=={version}" for name, version in sorted(wanted.items())]
    CONSTRAINTS.write_text("\n".join(body) + "\n")
    print(f"pinned {len(wanted)} CUDA/cuDNN wheel(s) in {CONSTRAINTS.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
