"""Generated stubs are fresh and the protos follow the house style."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT


def test_stubs_match_a_fresh_generation():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_protos_import_only_well_known_types_and_enums_have_unspecified_zero():
    for proto in (ROOT / "protos").rglob("*.proto"):
        text = proto.read_text()
        for imp in re.findall(r'^import "([^"]+)";', text, flags=re.M):
            assert imp.startswith(("google/protobuf/", "highpeaks_ml/")), (proto, imp)
        for enum_name, body in re.findall(r"enum (\w+) \{(.*?)\}", text, flags=re.S):
            first = re.search(r"(\w+) = 0;", body)
            assert first and first.group(1).endswith("_UNSPECIFIED"), (proto, enum_name)
        assert "option py_" not in text


def test_every_rpc_and_field_is_commented():
    for proto in (ROOT / "protos" / "highpeaks_ml" / "v1").glob("*.proto"):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            s = line.strip()
            is_rpc = s.startswith("rpc ")
            is_field = bool(re.match(r"^(repeated |optional )?[\w.<>, ]+ \w+ = \d+;", s))
            if is_rpc or is_field:
                prev = lines[i - 1].strip()
                assert prev.startswith("//"), f"{proto.name}:{i + 1} undocumented: {s}"
