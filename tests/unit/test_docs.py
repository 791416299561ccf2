"""The README's generated parts are current, and its commands exist."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT


def test_readme_settings_table_is_current():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import settings_table
    finally:
        sys.path.pop(0)
    assert settings_table.block() in (ROOT / "README.md").read_text(), (
        "run: python scripts/settings_table.py --write"
    )


def test_readme_make_targets_exist():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in set(re.findall(r"^make (\w[\w-]*)", readme, flags=re.M)):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, flags=re.M)
    assert "make test" in (ROOT / "README.md").read_text()


def test_cli_help_lists_commands():
    out = subprocess.run(
        [sys.executable, "-m", "highpeaks_ml.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "serve" in out and "health" in out
