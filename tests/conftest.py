"""Shared fixtures: a throwaway PostgreSQL database per run, state stores on SQLite and PostgreSQL.

PostgreSQL must be reachable (127.0.0.1:5432, trust auth, as on the project's machines): a test that
needs it fails loudly instead of skipping, so CI can never pass without having run the store suite on it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine

from migrator.store.db import create_store_engine, upgrade

pytest_plugins = ["tests.imap_fixtures", "tests.graph_fixtures", "tests.imap_to_graph"]

PG_ADMIN_URL = os.environ.get("MIGRATOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def throwaway_pg_database() -> Iterator[str]:
    """A new, empty PostgreSQL database (SQLAlchemy URL), dropped afterwards."""
    name = f"migrator_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty state store URL on each backend; the PostgreSQL one gets its own schema-free database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    with throwaway_pg_database() as url:
        yield url


@pytest.fixture
def store(store_url: str) -> Iterator[Engine]:
    """A state store at schema head on each backend."""
    engine = create_store_engine(store_url)
    upgrade(engine)
    yield engine
    engine.dispose()
