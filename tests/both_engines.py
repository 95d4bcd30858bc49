"""Fixtures that run a state test on both engines: SQLite (STATE_DIR) and a real PostgreSQL
(DATABASE_URL). A test module imports them to override conftest's one-engine fixtures of the
same names:

    from tests.both_engines import csv_env, sheet_env, source  # noqa: F401 - fixtures
"""

from __future__ import annotations

import pytest

from tests.conftest import Source


@pytest.fixture
def sheet_env(sheet_env: dict[str, str], engine_env: dict[str, str]) -> dict[str, str]:
    """The sheet on SQLite (STATE_DIR) and on PostgreSQL (DATABASE_URL): the test runs on both."""
    return {**sheet_env, **engine_env}


@pytest.fixture
def csv_env(csv_env: dict[str, str], engine_env: dict[str, str]) -> dict[str, str]:
    return {**csv_env, **engine_env}


@pytest.fixture
def source(source: Source, engine_env: dict[str, str]) -> Source:
    """The sheet and the CSV, each on both engines."""
    return source
