"""``highpeaks-ml datasets ...``: upload CSV files, list and inspect datasets."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from highpeaks_ml.cli.common import (
    ClientError,
    add_target,
    print_json,
    to_dict,
    when,
    with_client,
)


def register(sub: Any) -> None:
    """Add ``datasets`` and its sub-commands."""
    p = sub.add_parser(
        "datasets",
        help="upload, list and inspect training datasets",
        description="Datasets of a running server (CSV uploads; built-ins need no upload).",
    )
    dsub = p.add_subparsers(dest="datasets_command", metavar="ACTION", required=True)

    up = dsub.add_parser("upload", help="upload a CSV file (prints the dataset id)")
    up.add_argument("file", type=Path, help="CSV file with a header row, UTF-8")
    up.add_argument("--name", default=None, help="a name for the dataset")
    up.add_argument(
        "--target-column",
        default=None,
        help="the column to predict: checked (present, no gaps, not constant) and remembered"
        " as the default target of jobs on this dataset",
    )
    up.add_argument("--json", action="store_true", help="print the dataset as JSON")
    add_target(up)
    up.set_defaults(func=with_client(_upload))

    ls = dsub.add_parser("list", help="list uploaded datasets, newest first")
    ls.add_argument("--limit", type=int, default=0, help="at most this many (default 100)")
    ls.add_argument("--json", action="store_true", help="print JSON")
    add_target(ls)
    ls.set_defaults(func=with_client(_list))

    show = dsub.add_parser("show", help="show a dataset's columns and inferred types")
    show.add_argument("id", help="dataset id (sha256)")
    show.add_argument("--json", action="store_true", help="print JSON")
    add_target(show)
    show.set_defaults(func=with_client(_show))


def upload(client: Any, path: Path, name: str | None, target: str | None) -> Any:
    """Upload ``path``; ClientError (exit 2) when the file cannot be read."""
    if not path.is_file():
        raise ClientError(f"{path}: no such file", exit_code=2)
    try:
        return client.upload_dataset(path, name=name, target=target)
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror}", exit_code=2) from None


def _upload(client: Any, args: argparse.Namespace) -> int:
    ds = upload(client, args.file, args.name, args.target_column)
    if args.json:
        print_json(to_dict(ds))
    else:
        print(ds.id)
    return 0


def _list(client: Any, args: argparse.Namespace) -> int:
    found = client.list_datasets(args.limit)
    if args.json:
        print_json([to_dict(d) for d in found])
        return 0
    if not found:
        print("no datasets")
        return 0
    print(f"{'ID':64}  {'NAME':20}  {'ROWS':>9}  {'COLS':>4}  {'BYTES':>11}  CREATED")
    for d in found:
        print(
            f"{d.id:64}  {d.name or '-':20}  {d.rows:>9}  {len(d.columns):>4}"
            f"  {d.size_bytes:>11}  {when(d.created_at)}"
        )
    return 0


def _show(client: Any, args: argparse.Namespace) -> int:
    from highpeaks_ml.v1 import train_pb2

    d = client.get_dataset(args.id)
    if args.json:
        print_json(to_dict(d))
        return 0
    print(f"id:       {d.id}")
    print(f"name:     {d.name or '-'}")
    print(f"rows:     {d.rows}")
    print(f"target:   {d.target_column or '-'}")
    print(f"bytes:    {d.size_bytes}")
    print(f"created:  {when(d.created_at)}")
    print("columns:")
    for c in d.columns:
        kind = train_pb2.ColumnType.Name(c.type).removeprefix("COLUMN_TYPE_").lower()
        print(f"  {c.name:30}  {kind:12}  {c.distinct_values} distinct")
    return 0
