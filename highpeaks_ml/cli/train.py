"""``highpeaks-ml train``: start a training job, optionally wait with a progress display."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from highpeaks_ml.cli.common import ClientError, add_target, print_json, to_dict, with_client
from highpeaks_ml.cli.datasets import upload

#: Exit codes of ``--wait`` / ``jobs watch`` by final state.
EXIT_FAILED = 1
EXIT_CANCELLED = 3


def register(sub: Any) -> None:
    """Add the ``train`` sub-command."""
    p = sub.add_parser(
        "train",
        help="train a model (a job on the server); --wait to follow it",
        description=(
            "Start a training job. The model is exported to ONNX, verified against"
            " scikit-learn and registered as the next version of --model. With --wait,"
            " show its stages until it ends; the exit code is 0 when it succeeded,"
            f" {EXIT_FAILED} when it failed, {EXIT_CANCELLED} when it was cancelled."
        ),
    )
    p.add_argument("--model", required=True, help="model name to register the version under")
    p.add_argument(
        "--algorithm", required=True, help="from the catalogue ('highpeaks-ml algorithms')"
    )
    p.add_argument(
        "--dataset",
        default="builtin:iris",
        help="builtin:NAME (iris, wine, breast_cancer, diabetes, digits), a dataset id,"
        " or a CSV file to upload first [default builtin:iris]",
    )
    p.add_argument(
        "--target-column",
        dest="target_column",
        default=None,
        help="column to predict (default 'target')",
    )
    p.add_argument("--task", choices=("classification", "regression"), default=None)
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="K=V",
        help="hyperparameter (repeat); V is JSON (5, 0.1, true, null) or text",
    )
    p.add_argument(
        "--feature", action="append", default=[], help="feature column, in order (repeat)"
    )
    p.add_argument("--alias", action="append", default=[], help="alias to point at the version")
    p.add_argument("--test-size", type=float, default=0.0, help="held-out share (default 0.2)")
    p.add_argument("--seed", type=int, default=None, help="split and algorithm seed (default 0)")
    p.add_argument("--time-limit", type=float, default=0.0, help="job time limit (s)")
    p.add_argument("--idempotency-key", default="", help="same key: same job")
    p.add_argument("--description", default="", help="free text stored with the version")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends")
    p.add_argument(
        "--wait-timeout", type=float, default=None, help="give up waiting after this many s"
    )
    p.add_argument("--json", action="store_true", help="print the job as JSON")
    add_target(p)
    p.set_defaults(func=with_client(_train))

    algos = sub.add_parser(
        "algorithms", help="list the algorithm catalogue with hyperparameters and bounds"
    )
    algos.add_argument("--json", action="store_true", help="print JSON")
    add_target(algos)
    algos.set_defaults(func=with_client(_algorithms))


def _algorithms(client: Any, args: argparse.Namespace) -> int:
    from highpeaks_ml.v1 import common_pb2, train_pb2

    found = client.list_algorithms()
    if args.json:
        print_json([to_dict(a) for a in found])
        return 0
    for a in found:
        tasks = ", ".join(common_pb2.Task.Name(t).removeprefix("TASK_").lower() for t in a.tasks)
        print(f"{a.name} ({tasks}): {a.description}")
        for h in a.hyperparameters:
            kind = train_pb2.ParamType.Name(h.type).removeprefix("PARAM_TYPE_").lower()
            value = json_format.MessageToDict(h.default)
            if kind == "int" and isinstance(value, float) and value.is_integer():
                value = int(value)
            default = json.dumps(value)
            bounds = []
            if h.HasField("minimum") or h.HasField("maximum"):
                lo = f"{h.minimum:g}" if h.HasField("minimum") else ""
                hi = f"{h.maximum:g}" if h.HasField("maximum") else ""
                bounds.append(f"[{lo}, {hi}]")
            if h.choices:
                bounds.append("{" + ", ".join(h.choices) + "}")
            if h.nullable:
                bounds.append("or null")
            print(f"  {h.name:20} {kind:6} default {default:8} {' '.join(bounds)}")
    return 0


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["n_estimators=50", "max_depth=null", "kernel=rbf"]`` -> a dict (JSON or text values)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ClientError(f"--param {item!r}: use KEY=VALUE", exit_code=2)
        if raw in ("None", "none"):
            out[key] = None
            continue
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def _dataset(client: Any, value: str, target: str | None) -> str:
    if value.startswith("builtin:"):
        return value
    path = Path(value)
    if path.suffix.lower() == ".csv" or path.is_file():
        ds = upload(client, path, None, target)
        print(f"uploaded {path.name}: dataset {ds.id} ({ds.rows} rows)", file=sys.stderr)
        return str(ds.id)
    return value


def _train(client: Any, args: argparse.Namespace) -> int:
    dataset = _dataset(client, args.dataset, args.target_column)
    job = client.start_training(
        args.model,
        args.algorithm,
        dataset=dataset,
        params=parse_params(args.param),
        target=args.target_column,
        task=args.task,
        test_size=args.test_size,
        seed=args.seed,
        aliases=args.alias,
        idempotency_key=args.idempotency_key,
        time_limit_s=args.time_limit,
        description=args.description,
        features=args.feature,
    )
    if not args.wait:
        if args.json:
            print_json(to_dict(job))
        else:
            print(job.id)
        return 0
    print(f"job {job.id} queued", file=sys.stderr)
    return follow(client, job.id, args.wait_timeout, args.json)


def _names(job: Any) -> tuple[str, str]:
    from highpeaks_ml.v1 import train_pb2

    state = train_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")
    stage = train_pb2.JobStage.Name(job.stage).removeprefix("JOB_STAGE_")
    return state, "" if stage == "UNSPECIFIED" else stage.lower().replace("_", " ")


def follow(client: Any, job_id: str, wait_timeout: float | None, as_json: bool = False) -> int:
    """Show a job's stages until it ends; print the outcome; return the exit code."""
    started = time.monotonic()
    last = None
    seen: tuple[str, str] | None = None
    try:
        for job in client.watch_job(job_id, wait_timeout):
            last = job
            state, stage = _names(job)
            if (state, stage) != seen:
                seen = (state, stage)
                elapsed = time.monotonic() - started
                print(f"[{elapsed:7.1f}s] {state:<9} {stage}".rstrip(), file=sys.stderr)
    except KeyboardInterrupt:
        print(
            f"\nstopped watching; the job goes on: highpeaks-ml jobs watch {job_id}",
            file=sys.stderr,
        )
        raise
    if last is None:
        raise ClientError(f"job {job_id}: the server sent nothing")
    return report(last, as_json)


def report(job: Any, as_json: bool = False) -> int:
    """Print a finished job's outcome; return 0, EXIT_FAILED or EXIT_CANCELLED."""
    state, _ = _names(job)
    if as_json:
        print_json(to_dict(job))
    elif state == "SUCCEEDED":
        print(f"model {job.model_name} version {job.model_version}")
        for key in sorted(job.metrics):
            print(f"  {key:10} {job.metrics[key]:.6g}")
    else:
        print(f"job {job.id} {state}: {job.error}", file=sys.stderr)
    if state == "SUCCEEDED":
        return 0
    if state == "CANCELLED":
        return EXIT_CANCELLED
    if state == "FAILED":
        return EXIT_FAILED
    return EXIT_FAILED  # the stream ended before a final state
