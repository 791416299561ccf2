"""Helpers shared by the client sub-commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import json_format

from highpeaks_ml.config import env_default_target


class ClientError(Exception):
    """A failed call, printed as ``error: CODE: message`` with exit code 1."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


#: ``--timeout`` when neither the command nor the top level gives one (seconds).
DEFAULT_TIMEOUT_S = 30.0


def add_client_flags(parser: argparse.ArgumentParser) -> None:
    """Add the client flags to the top-level parser, with their defaults, so that
    they may come before the command (``highpeaks-ml --target h:p models list``)
    as kubectl and grpcurl users type them. Every client command takes them
    after the command too (``add_target``); where both are given, the later wins.
    """
    _client_flags(
        parser.add_argument_group(
            "client flags", "for client commands; also accepted after the command"
        ),
        top_level=True,
    )


def client_flags_given(args: argparse.Namespace) -> list[str]:
    """The client flags a parsed command line set (to refuse them where they mean nothing)."""
    defaults = {
        "target": None,
        "timeout": DEFAULT_TIMEOUT_S,
        "token": None,
        "tls": False,
        "tls_ca": None,
        "tls_cert": None,
        "tls_key": None,
    }
    return [
        "--" + dest.replace("_", "-")
        for dest, default in defaults.items()
        if getattr(args, dest, default) != default
    ]


def add_target(parser: argparse.ArgumentParser) -> None:
    """Add ``--target`` (default from HIGHPEAKS_ML_TARGET), ``--timeout``, token and
    TLS flags to a client command.

    Their default is ``argparse.SUPPRESS``: a flag the command line gives after
    the command replaces the one given before it (``add_client_flags``), and an
    absent one leaves that (or the top level's default) alone. argparse copies
    every attribute a sub-command's parser sets over the top level's, so a real
    default here would undo ``highpeaks-ml --target h:p models list``.
    """
    _client_flags(parser, top_level=False)


def _client_flags(parser: Any, top_level: bool) -> None:
    def default(value: Any) -> Any:
        return value if top_level else argparse.SUPPRESS

    parser.add_argument(
        "--target",
        default=default(None),
        help="server host:port [env HIGHPEAKS_ML_TARGET, default 127.0.0.1:50051]",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=default(DEFAULT_TIMEOUT_S),
        help=f"per-call deadline in seconds [default {DEFAULT_TIMEOUT_S:g}]",
    )
    auth = parser.add_argument_group("credentials") if not top_level else parser
    auth.add_argument(
        "--token",
        default=default(None),
        help="bearer JWT sent as 'authorization: Bearer ...' [env HIGHPEAKS_ML_TOKEN]",
    )
    auth.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help="use TLS with the system's root certificates",
    )
    auth.add_argument(
        "--tls-ca",
        default=default(None),
        metavar="FILE",
        help="PEM CA of the server certificate; implies --tls [env HIGHPEAKS_ML_TLS_CA]",
    )
    auth.add_argument(
        "--tls-cert",
        default=default(None),
        metavar="FILE",
        help="PEM client certificate for mutual TLS [env HIGHPEAKS_ML_TLS_CLIENT_CERT]",
    )
    auth.add_argument(
        "--tls-key",
        default=default(None),
        metavar="FILE",
        help="PEM key of --tls-cert [env HIGHPEAKS_ML_TLS_CLIENT_KEY]",
    )


def target_of(args: argparse.Namespace) -> str:
    """The server address for a parsed command."""
    return getattr(args, "target", None) or env_default_target()


def client_of(args: argparse.Namespace) -> Any:
    """A ``highpeaks_ml.client.Client`` for a parsed command."""
    from highpeaks_ml.client import Client

    def opt(name: str, env: str) -> str | None:
        return getattr(args, name, None) or os.environ.get(env) or None

    cert = opt("tls_cert", "HIGHPEAKS_ML_TLS_CLIENT_CERT")
    key = opt("tls_key", "HIGHPEAKS_ML_TLS_CLIENT_KEY")
    if bool(cert) != bool(key):
        raise ClientError("--tls-cert and --tls-key go together", exit_code=2)
    try:
        return Client(
            target_of(args),
            timeout=getattr(args, "timeout", DEFAULT_TIMEOUT_S),
            token=opt("token", "HIGHPEAKS_ML_TOKEN"),
            tls=bool(getattr(args, "tls", False)),
            tls_ca=opt("tls_ca", "HIGHPEAKS_ML_TLS_CA"),
            tls_cert=cert,
            tls_key=key,
        )
    except OSError as exc:
        raise ClientError(f"cannot read {exc.filename}: {exc.strerror}", exit_code=2) from None


def rpc_error(exc: grpc.RpcError) -> ClientError:
    """Turn an RpcError into a ClientError with the code and details."""
    code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return ClientError(f"{code}: {details}")


def print_json(obj: Any) -> None:
    """Print ``obj`` as indented JSON."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def with_client(
    fn: Callable[[Any, argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """Run ``fn(client, args)``; a failed call becomes ``error: CODE: details`` and exit 1."""

    def run(args: argparse.Namespace) -> int:
        client = client_of(args)
        try:
            return fn(client, args)
        except grpc.RpcError as exc:
            raise rpc_error(exc) from None
        finally:
            client.close()

    return run


def when(ts: Any) -> str:
    """A protobuf Timestamp as local ``YYYY-MM-DD HH:MM:SS``, or ``-`` when unset."""
    if not ts.seconds:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts.seconds))


def to_dict(msg: Any) -> dict[str, Any]:
    """A protobuf message as a JSON-ready dict (proto field names)."""
    return dict(json_format.MessageToDict(msg, preserving_proto_field_name=True))


def register_health(sub: Any) -> None:
    """``highpeaks-ml health [SERVICE]``: the server's grpc.health.v1 status."""
    p = sub.add_parser("health", help="check a server's health (grpc.health.v1)")
    p.add_argument("service", nargs="?", default="", help="service name ('' = overall)")
    add_target(p)

    def run(client: Any, args: argparse.Namespace) -> int:
        status = client.health(args.service)
        print(status)
        return 0 if status == "SERVING" else 1

    p.set_defaults(func=with_client(run))
