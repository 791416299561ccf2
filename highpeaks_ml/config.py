"""Typed settings, from command-line flags and ``HIGHPEAKS_ML_*`` environment variables.

Settings are parsed once, at start-up (``Settings.load``), never at import.
Precedence: flag > environment variable > default. Every field is documented
here; ``highpeaks-ml serve --help`` and the README's configuration table are
derived from these descriptions (``scripts/settings_table.py``).
"""

from __future__ import annotations

import argparse
import enum
import ipaddress
import os
import urllib.parse
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
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


class RpcLog(enum.StrEnum):
    """Which RPCs get their one INFO line."""

    ALL = "all"
    ERRORS = "errors"
    OFF = "off"


class AuthMode(enum.StrEnum):
    """Whether RPCs need a bearer token."""

    OFF = "off"
    JWT = "jwt"


#: JWT algorithms the server can verify (``none`` is never one of them).
JWT_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
    | {"HS256", "HS384", "HS512"}
)


class ConfigError(Exception):
    """A setting that parses but cannot be used (an unreadable key or certificate file)."""


def read_setting_file(path: Any, setting: str) -> bytes:
    """The bytes of the file a setting names (key, certificate, JWKS); ConfigError if unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None


class TrainingBackend(enum.StrEnum):
    """Where training jobs run (docs/training.md, "Where jobs run")."""

    LOCAL = "local"
    RAY = "ray"


def jwks_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be the JWKS endpoint, or None: https, or http to a loopback host.

    Keys fetched over plain http from another host could be swapped by anyone
    on the path, and with them anyone could mint tokens.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        return "not a valid URL"
    if not host:
        return "not a URL with a host"
    if parts.scheme == "https":
        return None
    if parts.scheme != "http":
        return "must be an https:// URL"
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return (
        "must be https:// (http:// is allowed only to a loopback address such as "
        "127.0.0.1, for development)"
    )


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
        10.0,
        ge=0,
        description="On SIGTERM/SIGINT, how long the drain may take in all (the delay below "
        "included) before RPCs still in flight are cancelled.",
    )
    # Kubernetes removes a terminating pod from the Service's endpoints at the
    # same time as it sends SIGTERM, and the change takes a few seconds to
    # reach every node: connections opened meanwhile still land here.
    drain_delay_s: float = Field(
        0.0,
        ge=0,
        description="After SIGTERM, keep serving this long (health already NOT_SERVING) "
        "before telling clients to go elsewhere, while load balancers stop sending new "
        "connections here (s, within the grace period).",
    )
    # A gRPC client keeps one HTTP/2 connection, so behind a Kubernetes Service
    # it stays on the replica it first reached, and replicas added later get
    # no traffic from it. An age limit makes clients reconnect (GOAWAY: calls
    # in flight finish) and so spread out again (docs/deploy.md).
    max_connection_age_s: float = Field(
        0.0,
        ge=0,
        description="Close each client connection this long after it opened (s), so clients "
        "reconnect and spread over replicas; calls in flight finish first. 0 = never.",
    )
    max_connection_age_grace_s: float = Field(
        30.0,
        ge=0,
        description="How long calls may still run on a connection past its age (s) before it "
        "is closed.",
    )
    # grpc's server default refuses client keepalive pings more often than
    # every 5 minutes (the client gets GOAWAY "too_many_pings"), while clients
    # behind NAT or load balancers commonly ping every 10-60 s.
    min_client_ping_interval_s: float = Field(
        10.0,
        gt=0,
        description="Client keepalive pings accepted this often (s), also on idle connections; "
        "more frequent pings end the connection.",
    )
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Prometheus metrics HTTP port; 0 turns metrics off."
    )

    # --- storage -----------------------------------------------------------
    home: Path = Field(
        Path("./var"), description="Data directory: models, datasets, jobs (a volume in k8s)."
    )
    store: str = Field(
        "",
        description="Where models, datasets and job records live: empty for the directory "
        "under `home`, or `s3://bucket/prefix` (S3-compatible; endpoint, region and "
        "credentials from the standard AWS_* variables, docs/registry.md).",
    )
    store_poll_s: float = Field(
        5.0,
        gt=0,
        description="With an s3:// store: how often the registry is re-read for versions and "
        "alias moves made elsewhere (one LIST per 1,000 keys each time).",
    )
    store_cache_mb: float = Field(
        2048.0,
        ge=0,
        description="With an s3:// store: size of the local cache of downloaded models under "
        "`home` (least recently used evicted first); 0 caches nothing.",
    )
    demo: bool = Field(
        False, description="On start with no models, train and register the `iris` demo model."
    )

    # --- logging -----------------------------------------------------------
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: LogFormat = Field(
        LogFormat.TEXT, description="`text` or `json` (one object a line)."
    )
    # At thousands of predictions a second one line per RPC costs CPU (~8% of
    # the requests/s with 16 callers on 2 cores) and floods the log.
    rpc_log: RpcLog = Field(
        RpcLog.ALL,
        description="The one INFO line per RPC (method, code, ms, subject): `all`, `errors` "
        "(only calls that did not end OK) or `off`. Unexpected errors are logged either way.",
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
    session_cache_mb: float = Field(
        0.0,
        ge=0,
        description="Total size of the loaded versions' ONNX files kept at most (MiB; a "
        "session takes about that much memory or more); least recently used go first, the "
        "newest load always stays. 0 = no bound but session_cache_size.",
    )
    eager_load: bool = Field(
        True, description="At start-up, load every aliased version and each model's latest."
    )
    # docs/insight.md: the hot path only queues a reference to the request's
    # inputs; a background thread counts them (c8 batch-1 cost measured there).
    drift_enabled: bool = Field(
        True,
        description="Profile served inputs per loaded version and compare them with the "
        "version's training profile (PSI per feature: GetDriftReport, the "
        "highpeaks_ml_feature_drift gauge).",
    )
    drift_window_s: float = Field(
        3600.0,
        gt=0,
        description="Rolling window of served inputs the drift is computed over (seconds; "
        "it moves in twelfths).",
    )
    warmup: bool = Field(True, description="Run one inference right after loading a version.")
    max_predict_rows: int = Field(
        1_000_000, ge=1, description="Rows allowed in one prediction request."
    )
    # Default from docs/serving.md's measurement: with delay 0 a request runs at
    # once when a thread is free (idle latency unchanged) and only queues, and so
    # merges, when every thread is busy (16 callers: 1.1-1.7x requests/s).
    batching: bool = Field(
        True, description="Merge concurrent small predictions into one onnxruntime call."
    )
    max_batch_size: int = Field(64, ge=1, description="Rows per merged batch when batching.")
    max_batch_delay_us: int = Field(
        0, ge=0, description="How long a request may wait for others to batch with (µs)."
    )
    # From docs/serving.md's measurement: a trip to the inference thread pool
    # costs ~130-190 µs of thread wake-ups, far more than a 1-row run of a small
    # model (5-40 µs). 200 µs: a run cheaper than the trip it saves stays on the
    # loop (at 100 µs a 50-tree forest, 20-100 µs a row on a busy 2-core host,
    # flipped to the pool for a quarter of its runs under 8 callers).
    inline_inference_us: int = Field(
        200,
        ge=0,
        description="Requests of at most 8 rows run on the event loop instead of the "
        "inference thread pool while their version's small runs take under this (µs, "
        "measured as it serves); 0 = always the thread pool.",
    )
    # A 1,000-row, 50-tree forest (~2.7 ms) answered 0.61-0.85x the rows/s through
    # the thread pool that it did on the loop, with nothing else to serve
    # (docs/serving.md "Batch 1,000"). 5 ms bounds what a request arriving
    # during such a run can wait for it.
    inline_when_idle_us: int = Field(
        5000,
        ge=0,
        description="A larger request also runs on the event loop when no other prediction "
        "is in flight and its version's measured cost for that many rows is under this "
        "(µs); a request arriving meanwhile waits at most about this long. 0 = never.",
    )

    # docs/serving.md "Memory allocator": with glibc's defaults each large
    # request page-faulted fresh memory (10,000-row requests: 1.8x rows/s kept).
    keep_freed_memory_mb: int = Field(
        256,
        ge=0,
        description="Freed memory (MiB) the server keeps for reuse instead of returning it "
        "to the OS at once, so large requests do not page-fault fresh memory each time "
        "(glibc; any MALLOC_* variable set takes precedence). 0 = the C library's defaults.",
    )

    # --- training ----------------------------------------------------------
    training_workers: int = Field(
        1,
        ge=0,
        description="Worker processes that run training jobs; 0 = serving only (training "
        "calls answer UNAVAILABLE), for replicas that share a store with one trainer.",
    )
    max_queued_jobs: int = Field(
        100, ge=1, description="Queued training jobs allowed; more get RESOURCE_EXHAUSTED."
    )
    # Only XGBoost trains on a GPU (docs/training.md, "Training on a GPU");
    # scikit-learn and LightGBM always train on the CPU.
    training_device: Device = Field(
        Device.AUTO,
        description="Where XGBoost trains: `auto` (CUDA when this trainer has a usable NVIDIA "
        "GPU and a CUDA build of XGBoost, else CPU), `cpu`, or `cuda` (fail at start-up if "
        "unusable). Other algorithms always train on the CPU.",
    )
    training_backend: TrainingBackend = Field(
        TrainingBackend.LOCAL,
        description="Where training jobs run: `local` (worker processes of this server) or "
        "`ray` (tasks on the Ray cluster at ray_address).",
    )
    ray_address: str = Field(
        "",
        description="The Ray cluster training_backend=ray submits to: `ray://host:10001` or "
        "the head's GCS address `host:6379`.",
    )
    # A job's CPUs become scikit-learn's n_jobs and its BLAS/OpenMP thread
    # count; docs/training.md "Resources per job".
    job_cpus: int = Field(
        1, ge=1, description="CPUs a training job gets when its request names none."
    )
    max_job_cpus: int = Field(
        0,
        ge=0,
        description="Most CPUs one training job may ask for; 0 = this machine's CPU count.",
    )
    # Measured in docs/training.md "Resources per job": an idle worker maps
    # about 1.3 GB of address space it mostly never touches; the bound is on
    # top of that, so it is close to the memory the job itself can use.
    job_memory_mb: int = Field(
        2048,
        ge=64,
        description="Memory a training job may use (MiB, above the idle worker's) when its "
        "request names none; past it the job fails with a memory-limit error.",
    )
    max_job_memory_mb: int = Field(
        0,
        ge=0,
        description="Most memory one training job may ask for (MiB); 0 = this machine's "
        "physical memory.",
    )
    job_time_limit_s: float = Field(
        3600.0, gt=0, description="Default and maximum wall time of one training job."
    )
    # A search's trials are recorded with the version (metadata grows with
    # them) and each is k fits: a cap keeps one request from queueing days of work.
    max_search_trials: int = Field(
        200,
        ge=1,
        le=10_000,
        description="Most trials one hyperparameter search may ask for (max_trials, or the "
        "grid's size); more is INVALID_ARGUMENT.",
    )
    # Retention of ended job records (docs/training.md, "Job records and
    # retention"): a week outlasts any client's retries of an idempotency key
    # and leaves a weekend's jobs to look back on; a record is about 1 KB (plus
    # its description), and 1,000 of them load in about 0.1 s.
    job_retention_s: float = Field(
        7 * 24 * 3600.0,
        ge=0,
        description="How long a finished (succeeded, failed, cancelled) training job's record "
        "is kept after it ended (s); 0 = forever. Queued and running jobs are never removed.",
    )
    max_job_records: int = Field(
        1000,
        ge=0,
        description="Finished training job records kept at most; past it the ones that ended "
        "first are removed. 0 = no limit.",
    )
    max_dataset_bytes: int = Field(
        1024 * 1024 * 1024, ge=1, description="Largest dataset upload (bytes)."
    )
    max_model_bytes: int = Field(
        512 * 1024 * 1024, ge=1, description="Largest imported ONNX model (bytes)."
    )
    # docs/registry.md "Proof that a version serves": a publish proves in a child
    # process that onnxruntime loads and runs the version, so a model that
    # hangs or balloons on load costs the child, never the server.
    load_check_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Longest a publish (import or training) may take to prove that onnxruntime "
        "loads and runs the new version (s); past it the version is refused.",
    )
    load_check_memory_mb: int = Field(
        2048,
        ge=64,
        description="Memory the process that proves a new version loads may use (MiB, above "
        "onnxruntime's own); past it the version is refused.",
    )

    # --- security ----------------------------------------------------------
    auth_mode: AuthMode = Field(
        AuthMode.OFF,
        description="`off` (no token; loopback development only) or `jwt` (bearer JWT, scopes).",
    )
    jwt_algorithms: str = Field(
        "RS256,ES256",
        description="Comma-separated JWT algorithms accepted; HS256 only when listed here.",
    )
    jwt_public_key_file: Path | None = Field(
        None, description="PEM public key that verifies RS*/ES*/PS*/EdDSA tokens."
    )
    jwt_jwks_file: Path | None = Field(
        None, description="JWKS JSON file; the token's `kid` picks the key."
    )
    jwt_secret_file: Path | None = Field(
        None, description="HS256 shared secret file (development; needs HS256 in the algorithms)."
    )
    # Kubernetes replaces a mounted Secret's files by swapping a symlink, so a
    # rotated key is seen by checking the files now and then (docs/security.md).
    jwt_key_file_check_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="How often the JWT key files (public key, JWKS, secret) are checked for a "
        "change and re-read (s); a broken new file keeps the old keys.",
    )
    jwt_jwks_url: str | None = Field(
        None,
        description="The identity service's JWKS endpoint (`https://`; `http://` only to a "
        "loopback address); fetched at start-up, every `jwt_jwks_refresh_s` and on an "
        "unknown `kid`.",
    )
    jwt_jwks_ca_file: Path | None = Field(
        None,
        description="PEM CA bundle that verifies the JWKS endpoint's certificate (default: the "
        "system's roots).",
    )
    jwt_jwks_timeout_s: float = Field(
        5.0,
        gt=0,
        le=60,
        description="Time limit of one JWKS fetch (per connect and read), and the longest a "
        "request with an unknown `kid` waits for the fetch it triggers (s).",
    )
    jwt_jwks_refresh_s: float = Field(
        300.0,
        gt=0,
        le=86400,
        description="Fetch the JWKS again this often (s); keys removed there are refused from "
        "the next fetch on.",
    )
    # Tokens with made-up kids must not turn into one fetch each against the
    # identity service.
    jwt_jwks_min_refresh_s: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="A token with an unknown `kid` triggers a JWKS fetch unless one began less "
        "than this long ago (s); failed fetches are retried this often too (at least 0.5 s).",
    )
    jwt_issuer: str | None = Field(None, description="Required `iss` claim, when set.")
    jwt_audience: str | None = Field(None, description="Required `aud` claim, when set.")
    jwt_leeway_s: float = Field(
        30.0, ge=0, le=3600, description="Clock skew allowed on `exp`, `nbf` and `iat` (s)."
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM server certificate (chain); TLS when set, plaintext otherwise."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of the certificate.")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle; when set, clients must present a certificate (mTLS)."
    )
    health_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Extra plaintext port serving only grpc.health.v1 (probes under TLS); 0 = off.",
    )

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, v: str) -> str:
        level = v.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {v!r}")
        return level

    @field_validator("store")
    @classmethod
    def _check_store(cls, v: str) -> str:
        v = v.strip()
        if v and not v.startswith("s3://"):
            raise ValueError("use an s3://bucket/prefix URL, or leave it empty for `home`")
        if v:
            from highpeaks_ml.registry.s3 import S3Location

            S3Location.parse(v)  # ValueError names the problem
        return v

    @field_validator("jwt_issuer", "jwt_audience", "jwt_jwks_url")
    @classmethod
    def _empty_is_unset(cls, v: str | None) -> str | None:
        return v or None

    @field_validator("jwt_jwks_url")
    @classmethod
    def _check_jwks_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        problem = jwks_url_problem(v)
        if problem:
            raise ValueError(f"jwt_jwks_url {v[:200]!r}: {problem}")
        return v

    @field_validator("jwt_algorithms")
    @classmethod
    def _check_algorithms(cls, v: str) -> str:
        names = [a.strip() for a in v.split(",") if a.strip()]
        if not names:
            raise ValueError("list at least one JWT algorithm")
        for name in names:
            if name.lower() == "none":
                raise ValueError("the JWT algorithm 'none' is never accepted")
            if name not in JWT_ALGORITHMS:
                raise ValueError(f"unknown JWT algorithm {name!r}; known: {sorted(JWT_ALGORITHMS)}")
        return ",".join(names)

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        # Combinations that would otherwise fail at the first RPC, or silently
        # serve without the protection the operator asked for.
        if self.auth_mode == AuthMode.JWT:
            if not (
                self.jwt_public_key_file
                or self.jwt_jwks_file
                or self.jwt_secret_file
                or self.jwt_jwks_url
            ):
                raise ValueError(
                    "auth_mode=jwt needs a key: set jwt_jwks_url, jwt_public_key_file, "
                    "jwt_jwks_file or jwt_secret_file"
                )
            if self.jwt_secret_file and not any(
                a.startswith("HS") for a in self.jwt_algorithm_list
            ):
                raise ValueError(
                    "jwt_secret_file is set but jwt_algorithms lists no HS256/HS384/HS512"
                )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        if self.health_port and self.health_port == self.port:
            raise ValueError("health_port must differ from port")
        return self

    @model_validator(mode="after")
    def _check_training(self) -> Settings:
        if self.max_job_cpus and self.job_cpus > self.max_job_cpus:
            raise ValueError("job_cpus must be at most max_job_cpus")
        if self.max_job_memory_mb and self.job_memory_mb > self.max_job_memory_mb:
            raise ValueError("job_memory_mb must be at most max_job_memory_mb")
        return self

    @property
    def jwt_algorithm_list(self) -> list[str]:
        """``jwt_algorithms`` as a list."""
        return [a for a in self.jwt_algorithms.split(",") if a]

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
