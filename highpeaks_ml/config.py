"""Typed settings, from command-line flags and ``HIGHPEAKS_ML_*`` environment variables.

Settings are parsed once, at start-up (``Settings.load``), never at import.
Precedence: flag > environment variable > default. Every field is documented
here; ``highpeaks-ml serve --help`` and the README's configuration table are
derived from these descriptions (``scripts/settings_table.py``).
"""

from __future__ import annotations

import argparse
import enum
import os
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "HIGHPEAKS_ML_"


class Device(enum.StrEnum):
    """Where onnxruntime runs models."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class LogFormat(enum.StrEnum):
    """Log line format."""

    TEXT = "text"
    JSON = "json"


class GraphOptimization(enum.StrEnum):
    """onnxruntime graph optimisation level."""

    DISABLED = "disabled"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"


class Settings(BaseSettings):
    """Every setting of the server and the CLI."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    # --- network -----------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 in the container).")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free port.")
    target: str = Field(
        "127.0.0.1:50051", description="Server address the CLI's client commands call."
    )
    max_receive_message_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest request message the server accepts."
    )
    max_send_message_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest response message the server sends."
    )
    max_concurrent_rpcs: int = Field(
        256, ge=1, description="RPCs handled at once; more get RESOURCE_EXHAUSTED."
    )
    grace_period_s: float = Field(
        10.0, ge=0, description="On SIGTERM/SIGINT, how long in-flight RPCs may take to finish."
    )
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Prometheus metrics HTTP port; 0 turns metrics off."
    )

    # --- storage -----------------------------------------------------------
    home: Path = Field(
        Path("./var"), description="Data directory: models, datasets, jobs (a volume in k8s)."
    )
    demo: bool = Field(
        False, description="On start with no models, train and register the `iris` demo model."
    )

    # --- logging -----------------------------------------------------------
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: LogFormat = Field(
        LogFormat.TEXT, description="`text` or `json` (one object a line)."
    )

    # --- serving -----------------------------------------------------------
    device: Device = Field(
        Device.AUTO,
        description="`auto` (CUDA when usable, else CPU), `cpu`, or `cuda` (fail if unusable).",
    )
    intra_op_threads: int = Field(
        0, ge=0, description="onnxruntime intra-op threads per session; 0 lets onnxruntime choose."
    )
    graph_optimization: GraphOptimization = Field(
        GraphOptimization.ALL, description="onnxruntime graph optimisation level."
    )
    session_cache_size: int = Field(
        32, ge=1, description="Model versions kept loaded at once (least recently used go first)."
    )
    eager_load: bool = Field(
        True, description="At start-up, load every aliased version and each model's latest."
    )
    warmup: bool = Field(True, description="Run one inference right after loading a version.")
    max_predict_rows: int = Field(
        1_000_000, ge=1, description="Rows allowed in one prediction request."
    )
    batching: bool = Field(
        False, description="Merge concurrent small predictions into one onnxruntime call."
    )
    max_batch_size: int = Field(64, ge=1, description="Rows per merged batch when batching.")
    max_batch_delay_us: int = Field(
        500, ge=0, description="How long a request may wait for others to batch with (µs)."
    )

    # --- training ----------------------------------------------------------
    training_workers: int = Field(1, ge=1, description="Worker processes that run training jobs.")
    max_queued_jobs: int = Field(
        100, ge=1, description="Queued training jobs allowed; more get RESOURCE_EXHAUSTED."
    )
    job_time_limit_s: float = Field(
        3600.0, gt=0, description="Default and maximum wall time of one training job."
    )
    max_dataset_bytes: int = Field(
        1024 * 1024 * 1024, ge=1, description="Largest dataset upload (bytes)."
    )
    max_model_bytes: int = Field(
        512 * 1024 * 1024, ge=1, description="Largest imported ONNX model (bytes)."
    )

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, v: str) -> str:
        level = v.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {v!r}")
        return level

    @classmethod
    def load(cls, overrides: dict[str, Any] | None = None) -> Settings:
        """Build settings from the environment, with explicit overrides (flags) on top."""
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        return cls(**given)


def add_settings_flags(parser: argparse.ArgumentParser, fields: list[str] | None = None) -> None:
    """Add one ``--flag`` per settings field (or the named ones) to ``parser``.

    Flags default to None so that an absent flag leaves the environment or
    the default in charge; booleans get ``--x/--no-x``.
    """
    for name, info in Settings.model_fields.items():
        if fields is not None and name not in fields:
            continue
        flag = "--" + name.replace("_", "-")
        env = ENV_PREFIX + name.upper()
        default = info.default.value if isinstance(info.default, enum.Enum) else info.default
        help_text = f"{info.description} [env {env}, default {default}]"
        annotation = info.annotation
        if annotation is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            parser.add_argument(
                flag,
                dest=name,
                choices=[m.value for m in annotation],
                default=None,
                help=help_text,
            )
        else:
            kind: Any = annotation if annotation in (int, float) else str
            parser.add_argument(flag, dest=name, type=kind, default=None, help=help_text)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from parsed flags (see ``add_settings_flags``) and the environment."""
    overrides = {k: getattr(args, k) for k in Settings.model_fields if hasattr(args, k)}
    return Settings.load(overrides)


def env_default_target() -> str:
    """The server address for client commands when no flag is given."""
    return os.environ.get(ENV_PREFIX + "TARGET", "127.0.0.1:50051")
