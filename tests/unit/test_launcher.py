"""highpeaks_ml.launcher without a server: reading the start-up lines, the child's environment."""

from __future__ import annotations

import logging
import os

import pytest

from highpeaks_ml import launcher
from highpeaks_ml.launcher import ServerStartError, parse_line
from highpeaks_ml.logs import JsonFormatter, TextFormatter


def _line(formatter: logging.Formatter, logger: str, msg: str, **extra: object) -> str:
    """A log line exactly as the server's own formatters write it."""
    record = logging.makeLogRecord(
        {"name": logger, "levelname": "INFO", "levelno": logging.INFO, "msg": msg, **extra}
    )
    record.request_id = "-"
    return formatter.format(record)


LISTENING = {"address": "127.0.0.1:43210", "version": "0.1.0", "tls": False, "auth": "off"}


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_the_servers_own_start_up_lines_give_the_port_and_readiness(formatter):
    assert parse_line(_line(formatter, "highpeaks_ml.server", "listening", **LISTENING)) == (
        "listening",
        43210,
    )
    assert parse_line(_line(formatter, "highpeaks_ml.server", "ready")) == ("ready", None)
    assert parse_line(_line(formatter, "highpeaks_ml.server", "received SIGTERM")) is None


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_other_loggers_and_lookalikes_are_not_start_up_lines(formatter):
    # An RPC line whose message happens to end in "ready", or to quote the listening line.
    assert parse_line(_line(formatter, "highpeaks_ml.rpc", "ready")) is None
    assert parse_line(_line(formatter, "highpeaks_ml.rpc", "listening", **LISTENING)) is None
    assert parse_line(_line(formatter, "highpeaks_ml.server", "already ready")) is None


def test_ipv6_addresses_and_junk():
    text = (
        "2025-01-01 00:00:00,000 INFO highpeaks_ml.server [-] listening address=::1:5005 tls=False"
    )
    assert parse_line(text) == ("listening", 5005)
    assert parse_line('{"logger": "highpeaks_ml.server", "msg": "listening"}') is None
    assert parse_line("{not json") is None
    assert parse_line("error: invalid setting max_batch_size: too small") is None
    assert parse_line("") is None


def test_the_error_keeps_the_whole_output_and_quotes_its_end(tmp_path):
    output = "\n".join(f"line {i}" for i in range(200))
    exc = ServerStartError(
        "highpeaks-ml serve exited with code 2 before it was ready",
        output=output,
        log_path=tmp_path / "server.log",
        returncode=2,
    )
    assert exc.output == output and exc.returncode == 2
    assert str(exc).startswith("highpeaks-ml serve exited with code 2 before it was ready; ")
    assert str(exc).endswith("line 199") and "line 139" not in str(exc)
    assert isinstance(exc, RuntimeError)


def test_the_child_gets_the_checkout_first_on_its_path_once(monkeypatch):
    root = str(launcher._PACKAGE_ROOT)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    env = launcher._child_env({"HIGHPEAKS_ML_X": "1"})
    assert env["PYTHONPATH"] == root and env["HIGHPEAKS_ML_X"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    # gpu_check's re-executed run: its site folder stays ahead of the checkout.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/tmp/site", root]))
    assert launcher._child_env(None)["PYTHONPATH"] == os.pathsep.join(["/tmp/site", root])


def test_a_log_level_that_hides_the_start_up_lines_is_refused_at_once(tmp_path):
    from highpeaks_ml.launcher import ServerProcess

    for extra in (("--log-level", "WARNING"), ("--log-level=ERROR",)):
        with pytest.raises(ValueError, match="--rpc-log off"):
            ServerProcess(tmp_path / "home", *extra)
    assert not list(tmp_path.iterdir())  # nothing started, no log file
