"""``highpeaks-ml models ...``: list, inspect, alias, delete, import and export model versions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from highpeaks_ml.cli.common import (
    add_target,
    print_json,
    to_dict,
    with_client,
)
from highpeaks_ml.storage import write_atomic

_TASKS = {"classification": "classification", "regression": "regression"}


def register(sub: Any) -> None:
    """Add ``models`` and its sub-commands."""
    p = sub.add_parser(
        "models",
        help="list, inspect, alias, delete, import and export registered models",
        description="Manage the model registry of a running server.",
    )
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    ls = msub.add_parser("list", help="list models with their latest version and aliases")
    ls.add_argument("--json", action="store_true", help="print JSON")
    add_target(ls)
    ls.set_defaults(func=with_client(_list))

    show = msub.add_parser("show", help="show a model's versions, or one version")
    show.add_argument("name")
    _add_selector(show)
    show.add_argument("--json", action="store_true", help="print JSON")
    add_target(show)
    show.set_defaults(func=with_client(_show))

    alias = msub.add_parser(
        "alias", help="point ALIAS at VERSION (create or move it), or --delete it"
    )
    alias.add_argument("name")
    alias.add_argument("alias")
    alias.add_argument("version", nargs="?", type=int, help="version number (not with --delete)")
    alias.add_argument("--delete", action="store_true", help="remove the alias")
    alias.add_argument(
        "--force",
        action="store_true",
        help="move the alias even when the server fails to load VERSION",
    )
    add_target(alias)
    alias.set_defaults(func=with_client(_alias))

    delete = msub.add_parser("delete", help="delete one version")
    delete.add_argument("name")
    delete.add_argument("version", type=int)
    delete.add_argument(
        "--force", action="store_true", help="delete even when aliases point at it (removes them)"
    )
    add_target(delete)
    delete.set_defaults(func=with_client(_delete))

    imp = msub.add_parser("import", help="register an external ONNX file as the next version")
    imp.add_argument("name")
    imp.add_argument("file", type=Path, help="a self-contained .onnx file")
    imp.add_argument("--task", choices=sorted(_TASKS), help="what the model predicts")
    imp.add_argument(
        "--class-label",
        action="append",
        default=[],
        dest="class_labels",
        help="class label, in probability-column order (repeat)",
    )
    imp.add_argument(
        "--alias", action="append", default=[], dest="aliases", help="alias to set (repeat)"
    )
    imp.add_argument("--description", default="", help="free text")
    imp.add_argument("--json", action="store_true", help="print the new version as JSON")
    add_target(imp)
    imp.set_defaults(func=with_client(_import))

    exp = msub.add_parser("export", help="download a version's ONNX file")
    exp.add_argument("name")
    _add_selector(exp)
    exp.add_argument("-o", "--output", type=Path, required=True, help="file to write")
    add_target(exp)
    exp.set_defaults(func=with_client(_export))

    rep = msub.add_parser(
        "report",
        help="download a trained version's evaluation report (HTML page, JSON or one figure)",
    )
    rep.add_argument("name")
    _add_selector(rep)
    rep.add_argument(
        "--format",
        choices=("html", "json", "figure"),
        default=None,
        help="what to download (default: from the output's extension, else html)",
    )
    rep.add_argument(
        "--figure",
        default="",
        help="the figure's name, with --format figure (served-FEATURE: this server's live"
        " served-vs-training bars of one feature)",
    )
    rep.add_argument(
        "-o", "--output", type=Path, help="file to write (default: JSON to stdout; required else)"
    )
    add_target(rep)
    rep.set_defaults(func=with_client(_report))

    drift = msub.add_parser(
        "drift",
        help="drift of the inputs this server was asked about, per feature, highest first",
    )
    drift.add_argument("name")
    _add_selector(drift)
    drift.add_argument("--json", action="store_true", help="print JSON")
    add_target(drift)
    drift.set_defaults(func=with_client(_drift))


def _add_selector(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--version", type=int, help="version number (default: latest)")
    group.add_argument("--alias", help="alias, e.g. production")


# --- commands ------------------------------------------------------------------


def _list(client: Any, args: argparse.Namespace) -> int:
    models = client.list_models()
    if args.json:
        print_json([to_dict(m) for m in models])
        return 0
    if not models:
        print("no models")
        return 0
    rows: list[tuple[str, ...]] = [("NAME", "LATEST", "ALIASES", "UPDATED")]
    for m in models:
        rows.append((m.name, str(m.latest_version), _aliases_text(m.aliases), _time(m.updated_at)))
    _print_table(rows)
    return 0


def _show(client: Any, args: argparse.Namespace) -> int:
    if args.version is not None or args.alias is not None:
        version = client.get_version(args.name, version=args.version, alias=args.alias)
        if args.json:
            print_json(to_dict(version))
        else:
            print("\n".join(_version_lines(version)))
        return 0
    model = client.get_model(args.name)
    if args.json:
        print_json(to_dict(model))
        return 0
    print(f"model {model.name}")
    print(f"  latest version: {model.latest_version}")
    print(f"  aliases: {_aliases_text(model.aliases) or '-'}")
    print(f"  created: {_time(model.created_at)}   updated: {_time(model.updated_at)}")
    for v in reversed(model.versions):
        print()
        print("\n".join(_version_lines(v)))
    return 0


def _alias(client: Any, args: argparse.Namespace) -> int:
    if args.delete:
        if args.version is not None:
            raise SystemExit("error: give either VERSION or --delete, not both")
        model = client.delete_alias(args.name, args.alias)
        print(f"deleted alias {args.alias} of {model.name}")
        return 0
    if args.version is None:
        raise SystemExit("error: VERSION is required (or --delete)")
    model = client.set_alias(args.name, args.alias, args.version, force=args.force)
    print(f"{model.name}: {args.alias} -> version {model.aliases[args.alias]}")
    return 0


def _delete(client: Any, args: argparse.Namespace) -> int:
    resp = client.delete_version(args.name, args.version, force=args.force)
    removed = (
        f" (removed aliases: {', '.join(resp.removed_aliases)})" if resp.removed_aliases else ""
    )
    print(f"deleted {args.name} version {args.version}{removed}")
    return 0


def _import(client: Any, args: argparse.Namespace) -> int:
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise SystemExit(f"error: cannot read {args.file}: {exc.strerror}") from None
    version = client.import_model(
        args.name,
        data,
        task=args.task,
        class_labels=args.class_labels,
        aliases=args.aliases,
        description=args.description,
    )
    if args.json:
        print_json(to_dict(version))
    else:
        print(f"imported {version.model_name} version {version.version} (sha256 {version.sha256})")
    return 0


def _export(client: Any, args: argparse.Namespace) -> int:
    data = client.download_model(args.name, version=args.version, alias=args.alias)
    out: Path = args.output
    # Written next to the target and renamed: a failed export never leaves a
    # truncated file under the requested name.
    try:
        write_atomic(out, data)
    except OSError as exc:
        raise SystemExit(f"error: cannot write {out}: {exc.strerror}") from None
    print(f"wrote {out} ({len(data)} bytes)", file=sys.stderr)
    return 0


def _report(client: Any, args: argparse.Namespace) -> int:
    fmt = args.format
    out: Path | None = args.output
    if fmt is None:
        suffix = out.suffix.lower() if out is not None else ".json"
        fmt = {".json": "json", ".png": "figure"}.get(suffix, "html")
    if fmt == "figure" and not args.figure:
        raise SystemExit("error: --format figure needs --figure NAME (see the report's JSON)")
    if out is None and fmt != "json":
        raise SystemExit("error: give -o FILE for an HTML page or a figure")
    info, data = client.get_report(
        args.name, version=args.version, alias=args.alias, fmt=fmt, figure=args.figure
    )
    if out is None:
        sys.stdout.write(data.decode())
        return 0
    try:
        write_atomic(out, data)
    except OSError as exc:
        raise SystemExit(f"error: cannot write {out}: {exc.strerror}") from None
    served = ""
    if info.HasField("stored") or info.served_rows:
        # The page (or figure) carries this server's live served-vs-training part.
        served = (
            f"; served inputs vs training: {info.served_rows} rows,"
            f" {len(info.served_features)} features drawn"
            if info.served_rows
            else "; no served traffic seen yet"
        )
    print(
        f"wrote {out} ({len(data)} bytes): {args.name} version {info.version}"
        f" {info.artifact.name}{served}",
        file=sys.stderr,
    )
    return 0


def _drift(client: Any, args: argparse.Namespace) -> int:
    rep = client.get_drift(args.name, version=args.version, alias=args.alias)
    if args.json:
        print_json(to_dict(rep))
        return 0
    state = "" if rep.enabled else " (drift profiling is off on this server: drift_enabled)"
    print(
        f"{rep.model_name} version {rep.version}: {rep.rows} rows served in the last"
        f" {rep.window_seconds:g} s (training profile: {rep.training_rows} rows){state}"
    )
    rows: list[tuple[str, ...]] = [("FEATURE", "TYPE", "PSI", "DRIFT", "ROWS")]
    for f in rep.features:
        psi = "-" if f.psi != f.psi else f"{f.psi:.4f}"  # NaN: no traffic
        rows.append((f.name, f.type, psi, f.level, str(f.rows)))
    _print_table(rows)
    return 0


# --- formatting ----------------------------------------------------------------


def _time(ts: Any) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    return str(ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC"))


def _aliases_text(aliases: Any) -> str:
    return ", ".join(f"{a} -> {v}" for a, v in sorted(aliases.items()))


def _enum(msg: Any, field: str, prefix: str) -> str:
    name = msg.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number[getattr(msg, field)].name
    return str(name).removeprefix(prefix).lower()


def _shape(shape: Any) -> str:
    return "[" + ", ".join("?" if d < 0 else str(d) for d in shape) + "]"


def _spec(t: Any) -> str:
    return f"{t.name} {_enum(t, 'data_type', 'DATA_TYPE_')} {_shape(t.shape)}"


#: Trials ``models show`` lists of a version's search (the best ones).
TOP_TRIALS = 5


def _search_lines(s: Any) -> list[str]:
    """A version's search: the settings, then the top trials by mean score."""
    strategy = _enum(s, "strategy", "SEARCH_STRATEGY_")
    ok = [t for t in s.trials if _enum(t, "state", "TRIAL_STATE_") == "succeeded"]
    failed = len(s.trials) - len(ok)
    budget = ", stopped by its time budget" if s.stopped_by_budget else ""
    lines = [
        f"  search: {strategy}, {len(s.trials)} trials ({failed} not succeeded), {s.folds}-fold"
        f" {s.metric} ({'higher' if s.greater_is_better else 'lower'} is better),"
        f" seed {s.seed}{budget}; winner trial {s.best_trial}"
    ]
    ok.sort(key=lambda t: (-t.mean if s.greater_is_better else t.mean, t.number))
    for t in ok[:TOP_TRIALS]:
        hp = json_format.MessageToDict(t.params)
        params = ", ".join(f"{k}={_param(hp[k])}" for k in sorted(hp))
        lines.append(
            f"    #{t.number:<3} {s.metric} {t.mean:.4g} ± {t.std:.2g}  {t.seconds:6.2f}s  {params}"
        )
    return lines


def _version_lines(v: Any) -> list[str]:
    aliases = f"  (aliases: {', '.join(v.aliases)})" if v.aliases else ""
    lines = [f"version {v.version} of {v.model_name}{aliases}"]
    lines.append(
        f"  source: {_enum(v, 'source', 'VERSION_SOURCE_')}   task: {_enum(v, 'task', 'TASK_')}"
        + (f"   algorithm: {v.algorithm}" if v.algorithm else "")
        + (f"   trained on: {v.training_device}" if v.training_device else "")
    )
    created = f"  created: {_time(v.created_at)}"
    if v.created_by:
        created += f"   by: {v.created_by}"
    if v.job_id:
        created += f"   job: {v.job_id}"
    lines.append(created)
    lines.append(f"  sha256: {v.sha256}   size: {v.size_bytes} bytes")
    state = _enum(v, "load_state", "LOAD_STATE_")
    if v.execution_provider:
        state += f" on {v.execution_provider}"
    if v.load_error:
        state += f": {v.load_error}"
    lines.append(f"  load state: {state}")
    if v.description:
        lines.append(f"  description: {v.description}")
    hp = json_format.MessageToDict(v.hyperparameters)
    if hp:
        lines.append("  hyperparameters: " + ", ".join(f"{k}={_param(hp[k])}" for k in sorted(hp)))
    if v.metrics:
        lines.append(
            "  metrics: " + "  ".join(f"{k}={v.metrics[k]:.4g}" for k in sorted(v.metrics))
        )
    if v.HasField("dataset"):
        d = v.dataset
        lines.append(
            f"  dataset: {d.source or '-'}   rows {d.rows} (train {d.train_rows},"
            f" test {d.test_rows})   target {d.target_column or '-'}"
        )
        if d.sha256:
            lines.append(f"    data sha256: {d.sha256}")
    if v.HasField("verification"):
        ver = v.verification
        lines.append(
            f"  verification: {'passed' if ver.passed else 'FAILED'} on {ver.rows} rows"
            f" (label mismatch {ver.label_mismatch_rate:.2%}, max |diff| {ver.max_abs_diff:.3g},"
            f" tolerance {ver.tolerance:.3g})"
            + (
                f", and on {ver.rows_with_missing} with missing values"
                if ver.rows_with_missing
                else ""
            )
        )
    if v.HasField("search"):
        lines.extend(_search_lines(v.search))
    if v.HasField("promotion"):
        p = v.promotion
        verb = "moved here" if p.promoted else "not moved"
        lines.append(f"  promote-if-better {p.alias}: {verb}: {p.reason}")
    if v.features:
        feats = []
        for f in v.features:
            kind = _enum(f, "type", "FEATURE_TYPE_")
            if f.categories:
                kind += ": " + ", ".join(f.categories)
            # Whether Predict takes a missing value (NaN / null) for it (docs/serving.md).
            missing = "allowed" if f.allows_missing else "refused"
            feats.append(f"{f.name} ({kind}) [missing: {missing}]")
        lines.append("  features: " + "; ".join(feats))
    if v.inputs:
        lines.append("  inputs: " + "; ".join(_spec(t) for t in v.inputs))
    if v.outputs:
        lines.append("  outputs: " + "; ".join(_spec(t) for t in v.outputs))
    if v.class_labels:
        lines.append("  class labels: " + ", ".join(v.class_labels))
    if v.library_versions:
        libs = v.library_versions
        lines.append("  libraries: " + ", ".join(f"{k} {libs[k]}" for k in sorted(libs)))
    return lines


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _param(value: object) -> object:
    """Struct numbers are doubles: show whole numbers as ints (n_estimators=100, not 100.0)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
