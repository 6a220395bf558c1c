"""Database URLs, engines and the store's errors.

Two backends, one code path: `sqlite+aiosqlite:///path` (the default: a file, no server) and
`postgresql+asyncpg://user:password@host:port/db` (a cluster's ingress replicas share it). Plain
`sqlite:///...` and `postgresql://...` URLs are taken to mean those drivers.

SQLite gets real transactions: the Python driver's own implicit BEGIN (which skips DDL and
SELECTs) is turned off and SQLAlchemy emits `BEGIN` itself, `BEGIN IMMEDIATE` where a transaction
must hold the write lock from its first statement (migrations). WAL lets readers run beside the
one writer; writers wait up to `sqlite_busy_timeout_s` for each other.

A store operation is never cut short by the cancellation of its caller (`finish_when_cancelled`): a
task cancelled inside a transaction leaves SQLAlchemy's pooled aiosqlite connection in that
transaction, holding SQLite's write lock for good, and every other writer then fails "database is
locked". Clients that disconnect mid-request and runners that stop a lease watcher cancel tasks.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy.exc
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

T = TypeVar("T")
C = TypeVar("C", bound=type)

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///data/gigarouter.sqlite3"
DATABASE_URL_ENV = "GIGAROUTER_DATABASE_URL"
DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


class StoreError(Exception):
    """Base of the store's errors."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or did not answer in time (a gateway answers 503)."""


class SchemaTooNew(StoreError):
    """The database was migrated by a newer gigarouter-serve than this one."""


class SchemaBehind(StoreError):
    """The database's schema is older than this code: run the migrations."""


def default_url() -> str:
    """`$GIGAROUTER_DATABASE_URL`, else the default SQLite file (relative to the working directory)."""
    return os.environ.get(DATABASE_URL_ENV) or DEFAULT_DATABASE_URL


def normalize_url(url: str | URL) -> URL:
    """The URL with its async driver; refuses backends other than SQLite and PostgreSQL."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend not in DRIVERS:
        raise ValueError(
            f"database URL {parsed.render_as_string()!r}: use sqlite+aiosqlite:// or postgresql+asyncpg://"
        )
    wanted = DRIVERS[backend]
    if parsed.drivername != wanted:
        if parsed.drivername != backend:
            raise ValueError(f"database URL driver {parsed.drivername!r}: use {wanted}")
        parsed = parsed.set(drivername=wanted)
    return parsed


def redacted(url: str | URL) -> str:
    """The URL with its password hidden, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def make_engine(
    url: str | URL,
    *,
    connect_timeout_s: float = 5.0,
    sqlite_busy_timeout_s: float = 10.0,
    pool_size: int = 5,
) -> AsyncEngine:
    """An async engine for `url`, set up as described in this module's docstring."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(parsed, connect_args={"timeout": sqlite_busy_timeout_s})
        _sqlite_transactions(engine)
        return engine
    connect_args: dict[str, Any] = {"timeout": connect_timeout_s}
    return create_async_engine(
        parsed,
        connect_args=connect_args,
        pool_pre_ping=True,  # a server restart leaves dead pooled connections: test before use
        pool_size=pool_size,
        max_overflow=pool_size * 2,
        pool_timeout=connect_timeout_s,
    )


def _sqlite_transactions(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # no implicit BEGIN: `_begin` below emits it
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get("sqlite_immediate", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


# SQLite: the file is locked by another writer past the busy timeout, cannot be opened, or the disk failed.
SQLITE_UNAVAILABLE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_FULL")
# PostgreSQL SQLSTATE classes: 08 connection exception, 57P shutdown / starting up, 53 out of resources
# (too many connections), 57014 statement timeout.
POSTGRES_UNAVAILABLE = ("08", "57P", "53", "57014")


def is_unavailable(error: BaseException) -> bool:
    """Whether an error means "the database cannot be reached or answer now" (retry later, 503),
    rather than a bug, a missing table or bad data. Looks through the driver's wrapped errors."""
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [error]
    while pending and len(seen) < 8:
        current = pending.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        if isinstance(current, (OSError, asyncio.TimeoutError, sqlalchemy.exc.TimeoutError)):
            return True  # refused, reset, unreachable; a pool or connect wait that ran out
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, sqlite3.Error):
            name = getattr(current, "sqlite_errorname", "") or ""
            return name.startswith(SQLITE_UNAVAILABLE) or (not name and "locked" in str(current))
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str):
            return sqlstate.startswith(POSTGRES_UNAVAILABLE)
        pending += [getattr(current, "orig", None), current.__cause__, current.__context__]
    return False


@asynccontextmanager
async def transaction(engine: AsyncEngine, **options: Any) -> AsyncIterator[AsyncConnection]:
    """One transaction, committed on success; "cannot reach the database" becomes `StoreUnavailable`."""
    try:
        async with engine.connect() as connection:
            if options:
                await connection.execution_options(**options)
            async with connection.begin():
                yield connection
    except StoreError:
        raise
    except Exception as error:
        if is_unavailable(error):
            raise StoreUnavailable(f"database {redacted(engine.url)} unavailable: {error}") from error
        raise


def finish_when_cancelled(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """`method` runs in a task of its own: a cancelled caller waits for it to end (commit or roll
    back, bounded by the busy and connect timeouts) and then sees its `CancelledError`."""

    @functools.wraps(method)
    async def finishing(*args: Any, **kwargs: Any) -> T:
        work = asyncio.ensure_future(method(*args, **kwargs))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            try:
                await asyncio.shield(work)
            except BaseException:  # its own failure, or a second cancellation: the first one wins
                work.add_done_callback(_retrieve)
            raise

    return finishing


def _retrieve(work: asyncio.Future[Any]) -> None:
    if not work.cancelled():
        work.exception()  # read, so that asyncio does not log "exception was never retrieved"


def store_operations(cls: C) -> C:
    """Applies `finish_when_cancelled` to every public coroutine method `cls` defines."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.iscoroutinefunction(member):
            setattr(cls, name, finish_when_cancelled(member))
    return cls
