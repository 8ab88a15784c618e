"""Opening the state store: one engine per process, SQLite tuned for crash safety, Alembic to head.

SQLite runs in WAL mode with `synchronous=FULL` (a committed ledger row survives power loss, which is
the whole point of writing it before an APPEND) and every transaction starts with BEGIN IMMEDIATE, so
writers queue instead of failing half-way. They queue on a writer gate (a SharedLock) shared by the
engine's threads and the worker processes forked with it: SQLite's own busy handler sleeps 1, 2, 5 ...
100 ms between tries and is not woken when the lock frees, so a writer could sleep 100 ms behind a
transaction of a millisecond, and under steady contention several times in a row. Other processes on the
same store (another run, `status`) still meet the busy timeout. PostgreSQL needs nothing special.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

import migrator
from migrator.errors import StateError, UserError
from migrator.sharedlock import SharedLock

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

BUSY_TIMEOUT_MS = 30_000
GATE_LIMIT = 30.0  # seconds a writer waits for the writer gate at most (see _GatedConnection.enter_write)
GATE_SLACK_MS = 100  # a wait for the gate longer than this is taken off SQLite's own busy timeout
READ_ONLY_OPTION = "migrator_read_only"


def migrations_dir() -> Path:
    """Revisions ship inside the wheel as migrator/migrations; in a source checkout they sit beside it."""
    package = Path(migrator.__file__).parent
    for candidate in (package / "migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise StateError("the Alembic revisions (migrations/) are missing from this installation")


class _GatedConnection(sqlite3.Connection):
    """A connection whose write transaction holds the writer gate from BEGIN IMMEDIATE to COMMIT or ROLLBACK."""

    gate: SharedLock | None = None
    holds_gate = False

    def enter_write(self, busy_timeout: float) -> float:
        """Take the gate; returns the seconds it took. Not granted within GATE_LIMIT (longer than any write
        transaction: a mistake that nests two writes in one thread), the write goes on without it and SQLite's
        busy timeout has the last word, as without a gate."""
        if self.gate is None:
            return 0.0
        started = time.monotonic()
        self.holds_gate = self.gate.acquire(max(busy_timeout, GATE_LIMIT))
        return time.monotonic() - started

    def leave_write(self) -> None:
        if self.holds_gate and self.gate is not None:
            self.holds_gate = False
            self.gate.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.leave_write()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.leave_write()


def _tune_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    gate = SharedLock()

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.gate = gate
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # readers (status, reports) take a snapshot and never wait for a writer; WAL allows it
        if connection.get_execution_options().get(READ_ONLY_OPTION):
            connection.exec_driver_sql("BEGIN")
            return
        dbapi_connection = connection.connection.dbapi_connection
        assert isinstance(dbapi_connection, _GatedConnection)
        waited_ms = int(dbapi_connection.enter_write(busy_timeout_ms / 1000) * 1000)
        # Writers that queued behind one stuck on another process's lock share its deadline: each waits out
        # what is left of one busy timeout, not a whole one after the other.
        shortened = waited_ms > GATE_SLACK_MS
        try:
            if shortened:
                connection.exec_driver_sql(f"PRAGMA busy_timeout = {max(0, busy_timeout_ms - waited_ms)}")
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            dbapi_connection.leave_write()
            raise
        finally:
            if shortened:
                connection.exec_driver_sql(f"PRAGMA busy_timeout = {busy_timeout_ms}")


def create_store_engine(url: str, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> Engine:
    """An Engine for `url`; raises UserError for a malformed URL or a missing driver. On SQLite a writer
    waits up to `busy_timeout_ms` for another process's transaction before giving up."""
    sqlite = url.startswith("sqlite")
    try:
        engine = create_engine(url, future=True, pool_pre_ping=not sqlite,
                               connect_args={"factory": _GatedConnection} if sqlite else {})
    except (ArgumentError, ImportError) as exc:
        raise UserError(f"[state].url: cannot use {url.split('://')[0]!r}: {exc}") from None
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:" and not Path(database).parent.is_dir():
            raise UserError(f"[state].url: folder {Path(database).parent} does not exist")
        _tune_sqlite(engine, busy_timeout_ms)
    return engine


def _alembic_config(connection: Connection) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig  # alembic only where the schema changes (see head_revision)

    config = AlembicConfig()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision`. Raises StateError if the database cannot be reached or written."""
    from alembic import command

    with translate_db_errors(), engine.begin() as connection:
        command.upgrade(_alembic_config(connection), revision)


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    with translate_db_errors(), engine.begin() as connection:
        command.downgrade(_alembic_config(connection), revision)


def schema_status(engine: Engine) -> tuple[str | None, str]:
    """(current revision, head revision) of the store."""
    with reading(engine) as connection:
        current = _current_revision(connection)
        connection.rollback()
    return current, head_revision()


def _current_revision(connection: Connection) -> str | None:
    """What alembic's MigrationContext.get_current_revision reads, without importing alembic."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    versions = list(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())
    if len(versions) > 1:
        raise StateError(f"state store has several schema heads ({', '.join(versions)}); it was not made by "
                         f"this migrator")
    return str(versions[0]) if versions else None


_REVISION_LINE = re.compile(r"""^(down_revision|revision)\b[^=\n]*=\s*(?:None|["']([^"']+)["'])""", re.MULTILINE)


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest revision under migrations/versions, from the files' `revision` and `down_revision` lines:
    every command opens the store, and importing alembic to learn this one string was a sixth of the start-up.
    A history this reading cannot follow (branches, merges) is left to alembic itself; tests/test_store.py
    checks that both agree."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (migrations_dir() / "versions").glob("*.py"):
        for name, value in _REVISION_LINE.findall(path.read_text(encoding="utf-8")):
            (revisions if name == "revision" else parents).add(value)
    heads = revisions - parents
    if len(heads) == 1:
        return heads.pop()
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(migrations_dir())).get_current_head() or ""


def open_store(url: str, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> Engine:
    """An engine for an existing store at the current schema; raises StateError with the fix otherwise."""
    engine = create_store_engine(url, busy_timeout_ms)
    current, head = schema_status(engine)
    if current != head:
        found = "no schema" if current is None else f"schema revision {current}"
        raise StateError(f"state store {engine.url.render_as_string(hide_password=True)} has {found}, "
                         f"this migrator needs {head}: run `migrator db upgrade`")
    return engine


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection for reads only: on SQLite a deferred snapshot that never waits for a writer (a run in
    progress), so `status --watch` stays live while workers commit."""
    with translate_db_errors(), engine.connect() as conn:
        yield conn.execution_options(**{READ_ONLY_OPTION: True})


@contextmanager
def translate_db_errors() -> Iterator[None]:
    """Database failures become one-line StateErrors; the transaction in progress is rolled back."""
    try:
        yield
    except OperationalError as exc:
        reason = str(exc.orig).splitlines()[0] if exc.orig else str(exc)
        hint = ""
        if "locked" in reason:
            hint = " (another process holds the database; retry when it finishes)"
        elif "full" in reason:
            hint = " (free disk space, then re-run: the last committed state is intact)"
        raise StateError(f"state store: {reason}{hint}") from None
    except DBAPIError as exc:
        reason = str(exc.orig).splitlines()[0] if exc.orig else str(exc)
        raise StateError(f"state store: {reason}") from None
