"""``highpeaks-ml jobs ...``: list, show, watch and cancel training jobs."""

from __future__ import annotations

import argparse
from typing import Any

from highpeaks_ml.cli.common import add_target, print_json, to_dict, when, with_client
from highpeaks_ml.cli.train import EXIT_CANCELLED, EXIT_FAILED, _names, follow

_STATES = ("queued", "running", "succeeded", "failed", "cancelled")


def register(sub: Any) -> None:
    """Add ``jobs`` and its sub-commands."""
    p = sub.add_parser(
        "jobs",
        help="list, show, watch and cancel training jobs",
        description="Training jobs of a running server.",
    )
    jsub = p.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)

    ls = jsub.add_parser("list", help="list jobs, newest first")
    ls.add_argument("--model", default=None, help="only jobs for this model")
    ls.add_argument(
        "--state", action="append", default=[], choices=_STATES, help="only these states"
    )
    ls.add_argument("--limit", type=int, default=0, help="at most this many (default 100)")
    ls.add_argument("--json", action="store_true", help="print JSON")
    add_target(ls)
    ls.set_defaults(func=with_client(_list))

    show = jsub.add_parser("show", help="show one job")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="print JSON")
    add_target(show)
    show.set_defaults(func=with_client(_show))

    watch = jsub.add_parser(
        "watch",
        help="follow a job until it ends",
        description=(
            "Follow a job's stages until it ends. Exit code 0 when it succeeded,"
            f" {EXIT_FAILED} when it failed, {EXIT_CANCELLED} when it was cancelled."
        ),
    )
    watch.add_argument("id")
    watch.add_argument("--wait-timeout", type=float, default=None, help="give up after S s")
    watch.add_argument("--json", action="store_true", help="print the final job as JSON")
    add_target(watch)
    watch.set_defaults(func=with_client(_watch))

    cancel = jsub.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("id")
    add_target(cancel)
    cancel.set_defaults(func=with_client(_cancel))


def _list(client: Any, args: argparse.Namespace) -> int:
    jobs = client.list_jobs(args.model, args.state, args.limit)
    if args.json:
        print_json([to_dict(j) for j in jobs])
        return 0
    if not jobs:
        print("no jobs")
        return 0
    print(f"{'ID':32}  {'MODEL':20}  {'ALGORITHM':22}  {'STATE':9}  {'VER':>4}  CREATED")
    for j in jobs:
        state, _stage = _names(j)
        version = str(j.model_version) if j.model_version else "-"
        print(
            f"{j.id:32}  {j.model_name:20}  {j.algorithm:22}  {state:9}  {version:>4}"
            f"  {when(j.created_at)}"
        )
    return 0


def _show(client: Any, args: argparse.Namespace) -> int:
    job = client.get_job(args.id)
    if args.json:
        print_json(to_dict(job))
        return 0
    state, stage = _names(job)
    print(f"id:         {job.id}")
    print(f"model:      {job.model_name}")
    print(f"algorithm:  {job.algorithm}")
    print(f"state:      {state}{f' ({stage})' if stage else ''}")
    if job.model_version:
        print(f"version:    {job.model_version}")
    if job.error:
        print(f"error:      {job.error}")
    res = job.resources
    print(f"resources:  {res.cpus} CPU, {res.memory_mb} MiB")
    if job.placement.backend:
        where = ", ".join(p for p in (job.placement.node, job.placement.worker) if p)
        print(f"ran on:     {job.placement.backend}{f' ({where})' if where else ''}")
    print(f"created:    {when(job.created_at)}")
    print(f"started:    {when(job.started_at)}")
    print(f"finished:   {when(job.finished_at)}")
    if job.metrics:
        print("metrics:")
        for key in sorted(job.metrics):
            print(f"  {key:10} {job.metrics[key]:.6g}")
    return 0


def _watch(client: Any, args: argparse.Namespace) -> int:
    return follow(client, args.id, args.wait_timeout, args.json)


def _cancel(client: Any, args: argparse.Namespace) -> int:
    job = client.cancel_job(args.id)
    state, _ = _names(job)
    print(f"job {job.id} {state}{f': {job.error}' if job.error else ''}")
    return 0
