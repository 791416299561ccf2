#!/usr/bin/env python3
"""Generate the Python stubs for every .proto under protos/.

The directory of each .proto under protos/ mirrors the import path of its
generated module (protos/highpeaks_ml/v1/train.proto ->
highpeaks_ml/v1/train_pb2.py), so the generated ``import`` lines work as
they are: no sed, no sys.path tricks.

    python scripts/gen_protos.py            # regenerate in place
    python scripts/gen_protos.py --check    # regenerate into a temp dir, fail on any diff

The Open Inference Protocol proto (package ``inference``) is the exception:
tritonclient registers the same ``inference.*`` names in protobuf's default
descriptor pool, so a generated ``_pb2.py`` would make any process that
imports both fail with "duplicate symbol". For it protoc writes a serialized
FileDescriptorSet next to where the module would be
(protos/highpeaks_ml/oip/v2/open_inference.proto ->
highpeaks_ml/oip/v2/open_inference.binpb), which
``highpeaks_ml.api.oip_messages`` loads into a private pool (docs/oip.md).

The output is committed and never edited by hand; CI runs --check.
"""

from __future__ import annotations

import argparse
import difflib
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
INIT_TEXT = '"""Generated from protos/ by scripts/gen_protos.py. Do not edit."""\n'
#: Protos compiled to a FileDescriptorSet (``.binpb``) instead of Python modules.
DESCRIPTOR_SET_PROTOS = (Path("highpeaks_ml/oip/v2/open_inference.proto"),)


def _stub_protos() -> list[Path]:
    """The protos that get Python modules (every one but DESCRIPTOR_SET_PROTOS)."""
    return [
        p
        for p in sorted(PROTO_ROOT.rglob("*.proto"))
        if p.relative_to(PROTO_ROOT) not in DESCRIPTOR_SET_PROTOS
    ]


def _descriptor_sets() -> list[Path]:
    """Where each DESCRIPTOR_SET_PROTOS file's .binpb goes, relative to the root."""
    return [rel.with_suffix(".binpb") for rel in DESCRIPTOR_SET_PROTOS]


def _generated_dirs(protos: list[Path]) -> set[Path]:
    return {p.relative_to(PROTO_ROOT).parent for p in protos}


def generate(out: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) over every proto; return the generated files."""
    import grpc_tools
    from grpc_tools import protoc

    protos = _stub_protos()
    if not protos:
        raise SystemExit("no .proto files under protos/")
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    for rel_dir in _generated_dirs(protos):
        (out / rel_dir).mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Every generated directory is a package; its __init__ is generated too.
    for rel_dir in _generated_dirs(protos):
        init = out / rel_dir / "__init__.py"
        if rel_dir.parts and rel_dir != Path(rel_dir.parts[0]):
            init.write_text(INIT_TEXT)
    files = []
    for rel_dir in _generated_dirs(protos):
        files += sorted((out / rel_dir).glob("*_pb2*.py*"))
        files += [out / rel_dir / "__init__.py"]
    for rel, target in zip(DESCRIPTOR_SET_PROTOS, _descriptor_sets(), strict=True):
        (out / target).parent.mkdir(parents=True, exist_ok=True)
        # No source info (comments): the set is for message classes and
        # reflection, and stays small and stable.
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            "--include_imports",
            f"--descriptor_set_out={out / target}",
            str(rel),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {rel}")
        files.append(out / target)
    return files


def _generated_files(base: Path, rel_dirs: set[Path]) -> dict[Path, Path]:
    found: dict[Path, Path] = {}
    for rel_dir in rel_dirs:
        for f in (base / rel_dir).glob("*"):
            if f.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")) or (
                f.name == "__init__.py" and f.read_text() == INIT_TEXT
            ):
                found[f.relative_to(base)] = f
    for target in _descriptor_sets():
        if (base / target).exists():
            found[target] = base / target
    return found


def check() -> int:
    """Regenerate into a temporary directory and compare with the committed files."""
    rel_dirs = _generated_dirs(_stub_protos())
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        generate(tmp_path)
        fresh = _generated_files(tmp_path, rel_dirs)
        committed = _generated_files(ROOT, rel_dirs)
        problems = []
        for rel in sorted(set(fresh) | set(committed)):
            if rel not in committed:
                problems.append(f"missing: {rel}")
            elif rel not in fresh:
                problems.append(f"stale (no .proto generates it): {rel}")
            elif not filecmp.cmp(fresh[rel], committed[rel], shallow=False):
                if rel.suffix == ".binpb":
                    problems.append(f"differs: {rel}")
                    continue
                diff = difflib.unified_diff(
                    committed[rel].read_text().splitlines(),
                    fresh[rel].read_text().splitlines(),
                    f"committed/{rel}",
                    f"regenerated/{rel}",
                    lineterm="",
                    n=1,
                )
                problems.append("\n".join(list(diff)[:40]))
    if problems:
        print("Generated stubs are out of date; run `make proto` and commit:", file=sys.stderr)
        for p in problems:
            print(p, file=sys.stderr)
        return 1
    print(f"generated stubs up to date ({len(fresh)} files)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs differ")
    args = parser.parse_args()
    if args.check:
        return check()
    # Remove stale outputs first so a deleted .proto leaves nothing behind.
    for rel, f in _generated_files(ROOT, _generated_dirs(_stub_protos())).items():
        if rel.name != "__init__.py":
            f.unlink()
    files = generate(ROOT)
    print(f"generated {len(files)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
