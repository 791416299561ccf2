#!/usr/bin/env python3
"""Print the README's configuration table from ``highpeaks_ml.config.Settings``.

    python scripts/settings_table.py            # print the table
    python scripts/settings_table.py --write    # replace it in README.md

A test checks that README.md holds the current table.
"""

from __future__ import annotations

import enum
import sys
from pathlib import Path

from highpeaks_ml.config import ENV_PREFIX, Settings

BEGIN = "<!-- settings-table:begin -->"
END = "<!-- settings-table:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def table() -> str:
    """The markdown table, one row per setting."""
    rows = [
        "| flag | environment variable | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for name, info in Settings.model_fields.items():
        default = info.default.value if isinstance(info.default, enum.Enum) else info.default
        flag = "--" + name.replace("_", "-")
        if info.annotation is bool:
            flag += " / --no-" + name.replace("_", "-")
        desc = (info.description or "").replace("|", "\\|")
        rows.append(f"| `{flag}` | `{ENV_PREFIX}{name.upper()}` | `{default}` | {desc} |")
    return "\n".join(rows)


def block() -> str:
    """The table between its markers."""
    return f"{BEGIN}\n{table()}\n{END}"


def main() -> int:
    if "--write" in sys.argv:
        text = README.read_text()
        start, end = text.index(BEGIN), text.index(END) + len(END)
        README.write_text(text[:start] + block() + text[end:])
        return 0
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
