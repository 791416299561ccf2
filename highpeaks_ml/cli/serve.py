"""``highpeaks-ml serve``: run the gRPC server."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from pydantic import ValidationError

from highpeaks_ml.config import ConfigError, Settings, add_settings_flags, settings_from_args
from highpeaks_ml.logs import configure_logging

# Flags that belong to client commands, not to the server.
_CLIENT_ONLY = {"target"}


def register(sub: Any) -> None:
    """Add the ``serve`` sub-command."""
    p = sub.add_parser(
        "serve",
        help="run the gRPC server",
        description="Run the gRPC server. Every flag also reads HIGHPEAKS_ML_<NAME>.",
    )
    add_settings_flags(p, [f for f in Settings.model_fields if f not in _CLIENT_ONLY])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Parse the settings once, configure logging, serve until a signal."""
    from highpeaks_ml.api.server import serve

    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"])
            # Cross-field checks (security settings) have no single field to name.
            print(f"error: invalid setting {loc}: {err['msg']}" if loc else f"error: {err['msg']}")
        return 2
    configure_logging(settings.log_level, settings.log_format.value)
    logging.getLogger("highpeaks_ml").debug("settings", extra=settings.model_dump(mode="json"))
    try:
        return asyncio.run(serve(settings))
    except ConfigError as exc:
        # Unreadable or mismatched key/certificate files: a start-up error, not a crash.
        print(f"error: {exc}")
        return 2
