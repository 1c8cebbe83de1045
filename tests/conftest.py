"""Shared fixtures. Helpers live in modules of their own (``fakes``, ``recordings``); tests import those, never
this file or each other."""

from __future__ import annotations

import pytest

from fakes import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
