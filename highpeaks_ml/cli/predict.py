"""``highpeaks-ml predict``: predictions for the rows of a CSV file (or stdin).

A CSV whose first line names the columns is sent as named rows (any model
trained on a table, numeric or categorical columns); a CSV without a header
(every cell of the first line a number or empty) is sent as a plain numeric
matrix in the model's feature order, as raw bytes. Empty cells are missing
values (NaN in the matrix, null in named rows), which a model accepts only for
features whose schema allows missing values (``models show``).

``--output json`` (default) prints one object per row: ``label`` and, for
classifiers, ``probabilities`` (class label -> probability); regressors
``value``. ``--output csv`` prints the same as columns.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from typing import Any

import grpc

from highpeaks_ml.cli.common import ClientError, add_target, client_of, rpc_error


def register(sub: Any) -> None:
    """Add the ``predict`` sub-command."""
    p = sub.add_parser(
        "predict",
        help="predict the rows of a CSV file with a registered model",
        description=(
            "Predict the rows of a CSV file with a registered model (latest version unless"
            " --version or --alias). A header line of feature names sends named rows; a"
            " CSV of numbers without a header sends a matrix in the model's feature order."
        ),
    )
    p.add_argument("--model", required=True, help="registered model name")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--version", type=int, help="version number")
    sel.add_argument("--alias", help="alias, such as production")
    p.add_argument("--input", required=True, help="CSV file, or - for stdin")
    p.add_argument(
        "--output", choices=["json", "csv"], default="json", help="output format (default json)"
    )
    add_target(p)
    p.set_defaults(func=run)


def _is_number(cell: str) -> bool:
    try:
        return math.isfinite(float(cell))
    except ValueError:
        return False


def read_input(text: str) -> Any:
    """A numpy matrix (no header) or a pandas DataFrame (header) from CSV text."""
    import numpy as np
    import pandas as pd

    first = next(csv.reader(io.StringIO(text)), None)
    if not first:
        raise ClientError("the input has no rows", exit_code=2)
    # Empty cells are missing values, not header names (docs/serving.md).
    if all(_is_number(c) or not c.strip() for c in first):
        try:
            frame = pd.read_csv(io.StringIO(text), header=None, dtype=np.float64)
        except ValueError as exc:
            raise ClientError(f"the input is not a numeric CSV: {exc}", exit_code=2) from None
        return frame.to_numpy()
    return pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""])


def _label(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def result_records(result: Any) -> list[dict[str, Any]]:
    """One dict per row: label (+ probabilities by class) or value."""
    out: list[dict[str, Any]] = []
    if result.values is not None:
        flat = result.values.reshape(len(result.values), -1)[:, 0]
        return [{"value": float(str(v))} for v in flat]
    n = len(result.labels) if result.labels is not None else 0
    for i in range(n):
        rec: dict[str, Any] = {"label": _label(result.labels[i])}
        if result.probabilities is not None:
            classes = result.class_labels or [str(j) for j in range(result.probabilities.shape[1])]
            # str() of a float32 is its shortest exact form (0.98165685, not 0.9816568493...).
            rec["probabilities"] = {
                c: float(str(p)) for c, p in zip(classes, result.probabilities[i], strict=True)
            }
        out.append(rec)
    return out


def _write_csv(records: list[dict[str, Any]]) -> None:
    w = csv.writer(sys.stdout, lineterminator="\n")
    if not records:
        return
    if "value" in records[0]:
        w.writerow(["value"])
        w.writerows([[r["value"]] for r in records])
        return
    classes = list(records[0].get("probabilities", {}))
    w.writerow(["label", *(f"p_{c}" for c in classes)])
    for r in records:
        probs = r.get("probabilities", {})
        w.writerow([r["label"], *(probs[c] for c in classes)])


def run(args: argparse.Namespace) -> int:
    """Read the CSV, call Predict, print the rows."""
    if args.input == "-":
        text = sys.stdin.read()
    else:
        try:
            with open(args.input, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ClientError(f"cannot read {args.input}: {exc.strerror}", exit_code=2) from None
    X = read_input(text)
    client = client_of(args)
    try:
        result = client.predict(args.model, X, version=args.version, alias=args.alias)
    except grpc.RpcError as exc:
        raise rpc_error(exc) from None
    finally:
        client.close()
    records = result_records(result)
    if args.output == "csv":
        _write_csv(records)
    else:
        json.dump(records, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0
