"""Connections to the desk's database and its migrations.

`--db` takes a SQLAlchemy URL: `postgresql://user@host:5432/name` (driven by
psycopg 3) for production, `sqlite:///desk.db` (a file, the default) for
first looks. `open_db` connects and brings the schema to the newest Alembic
revision (`engine/desk/migrations`), under a lock so that two consoles
starting together do not migrate twice. Passwords in URLs are never shown:
`redacted` replaces them with `***`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: pg_advisory_lock key held while migrating ("desk" in ASCII).
_MIGRATION_LOCK = 0x6465736B


class DatabaseError(ValueError):
    """The --db URL is not usable: unparsable, an unknown kind of database, or unreachable."""


def now_ms() -> int:
    return int(time.time() * 1000)


def normalise_url(url: str) -> str:
    """The URL with the desk's drivers: psycopg 3 for PostgreSQL, the standard library for SQLite."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError(
            f"--db {redacted(url)!r} is not a database URL (e.g. sqlite:///desk.db or postgresql://user@host/db)"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if backend == "sqlite":
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    raise DatabaseError(f"--db {redacted(url)!r}: only postgresql:// and sqlite:/// databases are supported")


def redacted(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"


def is_postgres(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "postgresql"


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine for the URL (not yet connected).

    SQLite: WAL mode, a 30 s busy timeout, foreign keys on, and every
    transaction `BEGIN IMMEDIATE` (one writer at a time, for first looks and
    tests). PostgreSQL: a pool of `pool_size` connections (and as many more
    when busy), checked before use.
    """
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" below starts transactions
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection: Connection) -> None:
            # Take the write lock at the start: a transaction that read a case and then
            # updates it never finds the snapshot it read outdated (SQLite serialises writers).
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def alembic_config(connection: Connection | None = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (a no-op when it is there)."""
    from alembic import command

    with engine.begin() as connection:
        if is_postgres(connection):
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        command.upgrade(alembic_config(connection), "head")


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def open_db(url: str, *, pool_size: int = 10, upgrade: bool = True) -> Engine:
    """Connect (raising DatabaseError with the reason when that fails) and migrate."""
    engine = make_engine(url, pool_size=pool_size)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        if upgrade:
            migrate(engine)
    except OperationalError as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise DatabaseError(f"--db {redacted(url)}: cannot connect: {reason}") from None
    return engine
