"""Settings: flag > environment > default, validation, no parsing at import."""

from __future__ import annotations

import argparse

import pytest
from pydantic import ValidationError

from highpeaks_ml.config import Device, Settings, add_settings_flags, settings_from_args


def test_defaults(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("HIGHPEAKS_ML_"):
            monkeypatch.delenv(key)
    s = Settings.load()
    assert (s.host, s.port, str(s.home), s.device) == ("127.0.0.1", 50051, "var", Device.AUTO)


def test_env_then_flags(monkeypatch):
    monkeypatch.setenv("HIGHPEAKS_ML_PORT", "6000")
    monkeypatch.setenv("HIGHPEAKS_ML_DEVICE", "cpu")
    parser = argparse.ArgumentParser()
    add_settings_flags(parser)
    assert settings_from_args(parser.parse_args([])).port == 6000
    s = settings_from_args(parser.parse_args(["--port", "7000", "--no-eager-load"]))
    assert s.port == 7000 and s.device == Device.CPU and s.eager_load is False


@pytest.mark.parametrize(
    "overrides",
    [{"port": 70000}, {"device": "tpu"}, {"log_level": "LOUD"}, {"no_such_setting": 1}],
)
def test_invalid_settings_are_refused(overrides):
    with pytest.raises(ValidationError):
        Settings.load(overrides)


def test_importing_the_package_reads_no_settings(monkeypatch):
    import importlib

    import highpeaks_ml.api.server as server_mod

    monkeypatch.setenv("HIGHPEAKS_ML_PORT", "not-a-number")
    importlib.reload(server_mod)  # would fail if settings were parsed at import
