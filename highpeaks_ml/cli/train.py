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
        help="column to predict (default: the one named when the dataset was uploaded,"
        " else 'target')",
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
    p.add_argument(
        "--cpus", type=int, default=0, help="CPUs for the job (default: the server's job_cpus)"
    )
    p.add_argument(
        "--memory-mb",
        type=int,
        default=0,
        help="memory for the job in MiB (default: the server's job_memory_mb); a job that"
        " needs more fails with a memory-limit error",
    )
    p.add_argument(
        "--idempotency-key",
        default="",
        help="same key and parameters: the same job (other parameters: refused)",
    )
    p.add_argument("--description", default="", help="free text stored with the version")
    search = p.add_argument_group(
        "hyperparameter search",
        "Search with cross-validation instead of one fit; the best configuration is refit"
        " and registered (docs/training.md). Flags override --search-file.",
    )
    search.add_argument(
        "--search",
        choices=("grid", "random", "tpe"),
        default=None,
        help="search strategy (implied 'random' by the other search flags)",
    )
    search.add_argument(
        "--search-file",
        type=Path,
        default=None,
        help="JSON or YAML search: {strategy, space: {NAME: [values] | {low, high, log}},"
        " max_trials, folds, metric, parallelism, time_budget_s, seed}",
    )
    search.add_argument(
        "--param-range",
        action="append",
        default=[],
        metavar="NAME=LOW:HIGH[:log]",
        help="a numeric range to search (repeat)",
    )
    search.add_argument(
        "--param-choice",
        action="append",
        default=[],
        metavar="NAME=V1,V2,...",
        help="values to search (repeat); each V is JSON (5, 0.1, true, null) or text",
    )
    search.add_argument("--trials", type=int, default=None, help="most trials (default 10)")
    search.add_argument("--folds", type=int, default=None, help="cross-validation folds (5)")
    search.add_argument("--metric", default=None, help="score to optimise (default accuracy / r2)")
    search.add_argument(
        "--parallelism", type=int, default=None, help="trials at once (default: the workers)"
    )
    search.add_argument(
        "--time-budget", type=float, default=None, help="no new trial after this many s"
    )
    search.add_argument(
        "--search-seed", type=int, default=None, help="sampler and folds seed (default --seed)"
    )
    p.add_argument(
        "--promote-if-better",
        default="",
        metavar="ALIAS",
        help="move ALIAS to the new version only if it beats the alias's current version"
        " on the same held-out rows (no current version: set it)",
    )
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


def _value(raw: str) -> Any:
    if raw in ("None", "none"):
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _read_search_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ClientError(f"--search-file {path}: {exc.strerror}", exit_code=2) from None
    try:
        data = json.loads(text)
    except ValueError:
        try:
            import yaml
        except ImportError:
            raise ClientError(
                f"--search-file {path} is not JSON (install PyYAML to read YAML)", exit_code=2
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ClientError(f"--search-file {path}: {exc}", exit_code=2) from None
    if not isinstance(data, dict):
        raise ClientError(f"--search-file {path}: expected an object", exit_code=2)
    return data


def search_from_args(args: argparse.Namespace) -> dict[str, Any] | None:
    """The search the flags ask for (a dict for ``client.search_request``), or None."""
    spec: dict[str, Any] = _read_search_file(args.search_file) if args.search_file else {}
    space: dict[str, Any] = dict(spec.get("space") or {})
    for item in args.param_range:
        name, sep, raw = item.partition("=")
        parts = raw.split(":")
        if not sep or not name or len(parts) not in (2, 3) or parts[2:] not in ([], ["log"]):
            raise ClientError(f"--param-range {item!r}: use NAME=LOW:HIGH or NAME=LOW:HIGH:log", 2)
        try:
            space[name] = {"low": float(parts[0]), "high": float(parts[1]), "log": len(parts) == 3}
        except ValueError:
            raise ClientError(f"--param-range {item!r}: LOW and HIGH must be numbers", 2) from None
    for item in args.param_choice:
        name, sep, raw = item.partition("=")
        if not sep or not name or not raw:
            raise ClientError(f"--param-choice {item!r}: use NAME=V1,V2,...", exit_code=2)
        space[name] = [_value(v) for v in raw.split(",")]
    flags = {
        "strategy": args.search,
        "max_trials": args.trials,
        "folds": args.folds,
        "metric": args.metric,
        "parallelism": args.parallelism,
        "time_budget_s": args.time_budget,
        "seed": args.search_seed,
    }
    given = {k: v for k, v in flags.items() if v is not None}
    if not spec and not space and not given:
        return None
    if "max_trials" in given:
        spec.pop("trials", None)
    spec.update(given)
    if space:
        spec["space"] = space
    return spec


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
    wanted = search_from_args(args)
    search = None
    if wanted is not None:
        from highpeaks_ml.client import search_request

        try:
            search = search_request(wanted)
        except (ValueError, TypeError) as exc:
            raise ClientError(f"search: {exc}", exit_code=2) from None
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
        cpus=args.cpus,
        memory_mb=args.memory_mb,
        search=search,
        promote_if_better=args.promote_if_better,
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
    bar = _SearchBar(sys.stderr)
    try:
        for job in client.watch_job(job_id, wait_timeout):
            last = job
            state, stage = _names(job)
            if job.HasField("search") and job.search.trials_total:
                bar.update(job.search, active=stage == "searching")
            if (state, stage) != seen:
                seen = (state, stage)
                if not bar.shown:
                    elapsed = time.monotonic() - started
                    print(f"[{elapsed:7.1f}s] {state:<9} {stage}".rstrip(), file=sys.stderr)
        bar.close()
    except KeyboardInterrupt:
        bar.close()
        print(
            f"\nstopped watching; the job goes on: highpeaks-ml jobs watch {job_id}",
            file=sys.stderr,
        )
        raise
    if last is None:
        raise ClientError(f"job {job_id}: the server sent nothing")
    return report(last, as_json)


class _SearchBar:
    """A search's progress: a tqdm bar on a terminal, a plain line per change otherwise."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._bar: Any = None
        self._last: tuple[int, int, str] | None = None
        self._started = time.monotonic()
        self.shown = False

    def update(self, s: Any, active: bool) -> None:
        best = f"{s.metric} {s.best_score:.4g}" if s.HasField("best_score") else "-"
        if not active:
            # Queued, or past the search (the refit's stages follow as lines).
            if self._bar is not None:
                self._bar.n = s.trials_done
                self._bar.set_postfix_str(f"best {best}", refresh=True)
            self.close()
            return
        self.shown = True
        key = (s.trials_done, s.trials_running, best)
        if key == self._last:
            return
        self._last = key
        if self.tty:
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(
                    total=s.trials_total, desc="trials", unit="trial", file=self.stream
                )
            self._bar.n = s.trials_done
            self._bar.set_postfix_str(f"running {s.trials_running}, best {best}", refresh=True)
            return
        elapsed = time.monotonic() - self._started
        print(
            f"[{elapsed:7.1f}s] trials {s.trials_done}/{s.trials_total}"
            f" (running {s.trials_running}, failed {s.trials_failed}) best {best}",
            file=self.stream,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.shown = False


def report(job: Any, as_json: bool = False) -> int:
    """Print a finished job's outcome; return 0, EXIT_FAILED or EXIT_CANCELLED."""
    state, _ = _names(job)
    if as_json:
        print_json(to_dict(job))
    elif state == "SUCCEEDED":
        print(f"model {job.model_name} version {job.model_version}")
        for key in sorted(job.metrics):
            print(f"  {key:10} {job.metrics[key]:.6g}")
        if job.HasField("search") and job.search.trials_total:
            s = job.search
            best = f", best {s.metric} {s.best_score:.6g} (trial {s.best_trial})"
            print(f"search: {s.trials_done} trials ({s.trials_failed} failed){best}")
        if job.HasField("promotion") and job.promotion.alias:
            p = job.promotion
            verb = "moved to this version" if p.promoted else "left alone"
            print(f"alias {p.alias} {verb}: {p.reason}")
    else:
        print(f"job {job.id} {state}: {job.error}", file=sys.stderr)
    if state == "SUCCEEDED":
        return 0
    if state == "CANCELLED":
        return EXIT_CANCELLED
    if state == "FAILED":
        return EXIT_FAILED
    return EXIT_FAILED  # the stream ended before a final state
