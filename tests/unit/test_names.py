"""The naming rule for models, aliases and datasets."""

from __future__ import annotations

import pytest

from highpeaks_ml.errors import InvalidArgument
from highpeaks_ml.registry.base import validate_alias, validate_name


@pytest.mark.parametrize("name", ["iris", "a", "my-model_2.v1", "0abc", "x" * 63])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".hidden",
        "../x",
        "/abs",
        "a/b",
        "A",
        "x" * 64,
        "x\x00y",
        "a b",
        "-x",
        "_x",
        "é",
        "x" * 1024,
    ],
)
def test_invalid_names(name):
    with pytest.raises(InvalidArgument) as err:
        validate_name(name)
    assert "invalid model name" in err.value.message
    assert len(err.value.message) < 300


@pytest.mark.parametrize("alias", ["7", "latest"])
def test_reserved_aliases(alias):
    with pytest.raises(InvalidArgument):
        validate_alias(alias)
