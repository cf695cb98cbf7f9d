"""Shared by both tiers: keep each test's environment free of the developer's settings."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _clean_streamscore_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("STREAMSCORE_"):
            monkeypatch.delenv(name)
