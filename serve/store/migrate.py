"""Schema migrations (Alembic; the scripts are in `serve/store/migrations/versions/`).

At start the gateway calls `upgrade(engine)` (through `Store.migrate()`); an operator may run the
same from a shell:

    python -m serve.store upgrade --url postgresql+asyncpg://gigarouter@db:5432/gigarouter
    python -m serve.store current --url ...
    python -m serve.store downgrade --url ... --revision base

An upgrade is one transaction holding a lock that other migrators wait for (PostgreSQL: an
advisory lock; SQLite: `BEGIN IMMEDIATE`), so ingress replicas starting together migrate once.
A database at a revision this code does not know (a newer gigarouter-serve migrated it) is
refused with `SchemaTooNew` before anything is changed.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from serve.store.engine import SchemaBehind, SchemaTooNew, transaction

SCRIPT_LOCATION = Path(__file__).parent / "migrations"
# pg_advisory_xact_lock's key for "a migration is running" (any constant unique to this app).
MIGRATION_LOCK = 0x67726F75746572  # "grouter"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["connection"] = connection
    return config


@cache
def scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    """The newest revision this code knows."""
    revision = scripts().get_current_head()
    assert revision is not None, "no migration scripts"
    return revision


def is_known(revision: str) -> bool:
    try:
        return scripts().get_revision(revision) is not None
    except CommandError:
        return False


def too_new_message(revision: str) -> str:
    return (
        f"the database schema is at revision {revision}, newer than this gigarouter-serve knows ({head()});"
        " upgrade the gateway (or point it at another database)"
    )


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def check_revision(revision: str | None) -> None:
    """Raise unless the database is exactly at this code's head revision."""
    if revision == head():
        return
    if revision is not None and not is_known(revision):
        raise SchemaTooNew(too_new_message(revision))
    raise SchemaBehind(
        f"the database schema is at revision {revision or '(none)'}, older than this gigarouter-serve's ({head()});"
        " run `python -m serve.store upgrade --url ...` or start the gateway with migrations on"
    )


def _lock(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK)))


def _upgrade(connection: Connection, revision: str) -> None:
    _lock(connection)
    current = current_revision(connection)
    if current is not None and not is_known(current):
        raise SchemaTooNew(too_new_message(current))
    command.upgrade(alembic_config(connection), revision)


def _downgrade(connection: Connection, revision: str) -> None:
    _lock(connection)
    current = current_revision(connection)
    if current is not None and not is_known(current):
        raise SchemaTooNew(too_new_message(current))
    command.downgrade(alembic_config(connection), revision)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> str | None:
    """Migrate up to `revision`; returns the revision the database is at afterwards."""
    async with transaction(engine, sqlite_immediate=True) as connection:
        await connection.run_sync(_upgrade, revision)
        return await connection.run_sync(current_revision)


async def downgrade(engine: AsyncEngine, revision: str) -> str | None:
    """Migrate down to `revision` ("base": no tables); returns the revision afterwards."""
    async with transaction(engine, sqlite_immediate=True) as connection:
        await connection.run_sync(_downgrade, revision)
        return await connection.run_sync(current_revision)


async def current(engine: AsyncEngine) -> str | None:
    """The database's revision (None: never migrated)."""
    async with transaction(engine) as connection:
        return await connection.run_sync(current_revision)


async def check(engine: AsyncEngine) -> None:
    """Raise `SchemaBehind` or `SchemaTooNew` unless the database is at this code's head."""
    check_revision(await current(engine))
