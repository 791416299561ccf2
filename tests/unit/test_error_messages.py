"""Messages sent to callers are bounded: ``errors.quote`` for caller-supplied pieces,
``api.errors.bounded`` (applied by ``status_for``) as the cap on every message."""

from __future__ import annotations

import grpc
import pytest

from highpeaks_ml import errors
from highpeaks_ml.api.errors import INTERNAL_MESSAGE, MAX_MESSAGE_BYTES, bounded, status_for
from highpeaks_ml.errors import clip, quote


def test_quote_shows_short_values_whole():
    assert quote("iris") == "'iris'"
    assert quote("a" * 64) == repr("a" * 64)
    assert quote(42) == "'42'"


def test_quote_cuts_long_values_and_says_how_long():
    assert quote("a" * 10240) == f"'{'a' * 64}…' (10240 characters)"
    assert quote("b" * 100, limit=10) == f"'{'b' * 10}…' (100 characters)"


def test_quote_escapes_control_characters():
    shown = quote("x\x00\n" * 50, limit=6)
    assert "\x00" not in shown and "\n" not in shown
    assert shown.endswith("(150 characters)")


def test_clip():
    assert clip("abc") == "abc"
    assert clip("a" * 100, 40) == "a" * 40 + "…"


@pytest.mark.parametrize("char", ["a", "é", "模", "😀"])  # 1, 2, 3 and 4 bytes of UTF-8
def test_bounded_cuts_on_a_character_boundary(char):
    message = "x" + char * 1000
    out = bounded(message)
    data = out.encode("utf-8")
    assert len(data) <= MAX_MESSAGE_BYTES
    assert len(data) > MAX_MESSAGE_BYTES - 4 - len("…".encode())  # as much as fits
    assert out.endswith("…") and message.startswith(out[:-1])


def test_bounded_leaves_short_messages_alone():
    assert bounded("model 'iris' not found") == "model 'iris' not found"
    exact = "é" * (MAX_MESSAGE_BYTES // 2)
    assert bounded(exact) == exact


def test_bounded_replaces_lone_surrogates():
    # grpc could not encode the message at all: a '?' stands in for the surrogate.
    assert bounded("a\ud800b") == "a?b"


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound, grpc.StatusCode.NOT_FOUND),
        (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
        (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.HighPeaksError, grpc.StatusCode.INTERNAL),
    ],
)
def test_status_for_bounds_every_domain_message(exc, code):
    got, message = status_for(exc("name " + "n" * 10_000 + " is bad"))
    assert got == code
    assert len(message.encode()) <= MAX_MESSAGE_BYTES and message.startswith("name nnn")


def test_status_for_hides_unexpected_errors():
    assert status_for(KeyError("/secret/path")) == (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
