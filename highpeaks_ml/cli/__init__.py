"""The ``highpeaks-ml`` command line: serve, and client commands against a server.

Each sub-module registers its sub-commands with ``register(subparsers)``;
client commands reach the server given by ``--target`` or
``HIGHPEAKS_ML_TARGET`` (default 127.0.0.1:50051). The client flags
(``--target``, ``--timeout``, ``--token``, ``--tls*``) go before the command
or after it (``highpeaks-ml --target h:p models list`` or ``highpeaks-ml
models list --target h:p``); given in both places, the later one wins.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from highpeaks_ml import __version__
from highpeaks_ml.cli import common, serve
from highpeaks_ml.errors import HighPeaksError

# Modules that contribute sub-commands, in help order.
_MODULES = [serve]


def _optional_modules() -> list[object]:
    mods: list[object] = []
    for name in ("datasets", "train", "jobs", "models", "predict"):
        try:
            mods.append(__import__(f"highpeaks_ml.cli.{name}", fromlist=["register"]))
        except ModuleNotFoundError as exc:
            if exc.name != f"highpeaks_ml.cli.{name}":
                raise
    return mods


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(
        prog="highpeaks-ml",
        description="High Peaks ML Platform: train scikit-learn models and serve them over gRPC.",
        epilog="Client flags go before or after the command: "
        "highpeaks-ml --target host:port models list (the later one wins where both are given).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common.add_client_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common.register_health(sub)
    for module in [*_MODULES, *_optional_modules()]:
        module.register(sub)  # type: ignore[attr-defined]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve" and (given := common.client_flags_given(args)):
        # `highpeaks-ml --tls serve` would otherwise start a plaintext server quietly.
        parser.error(
            f"{', '.join(given)}: client flags, not server settings"
            " (see highpeaks-ml serve --help: --tls-cert-file, --port, ...)"
        )
    try:
        return int(args.func(args) or 0)
    except common.ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except HighPeaksError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `highpeaks-ml ... | head`: the reader left; exit quietly like other CLIs.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
