"""Fixtures for the serving tests (helpers in serving_helpers.py)."""

from __future__ import annotations

import pytest

from serving_helpers import every_format_programs


@pytest.fixture(scope="session")
def format_programs():
    return every_format_programs()
