"""Environment reads on the eager host path: as cheap as a dict lookup, yet every change is seen at once."""

from __future__ import annotations

import os
from unittest import mock

from attnops._common.env import getenv
from attnops._common.validate import checks_requested

NAME = "ATTNOPS_TEST_VARIABLE"


def test_changes_are_seen_by_the_next_read(monkeypatch):
    monkeypatch.delenv(NAME, raising=False)
    assert getenv(NAME, "default") == "default"
    monkeypatch.setenv(NAME, "one")
    assert getenv(NAME, "default") == "one"
    os.environ[NAME] = "two"
    assert getenv(NAME, "default") == "two"
    with mock.patch.dict(os.environ, {NAME: "three"}):
        assert getenv(NAME, "default") == "three"
    assert getenv(NAME, "default") == "two"
    with mock.patch.dict(os.environ, clear=True):
        assert getenv(NAME, "default") == "default"
    monkeypatch.delenv(NAME)
    assert getenv(NAME, "default") == "default"


def test_values_round_trip_as_os_environ_gives_them(monkeypatch):
    for value in ("", "é ü", "1"):
        monkeypatch.setenv(NAME, value)
        assert getenv(NAME, "default") == os.environ.get(NAME) == value


def test_a_replaced_os_environ_is_read(monkeypatch):
    monkeypatch.setattr(os, "environ", {NAME: "plain"})
    assert getenv(NAME, "default") == "plain"
    assert getenv("ATTNOPS_UNSET_VARIABLE", "default") == "default"


def test_value_checks_follow_attnops_check(monkeypatch):
    monkeypatch.delenv("ATTNOPS_CHECK", raising=False)
    assert not checks_requested()
    monkeypatch.setenv("ATTNOPS_CHECK", "1")
    assert checks_requested()
    monkeypatch.setenv("ATTNOPS_CHECK", "0")
    assert not checks_requested()
