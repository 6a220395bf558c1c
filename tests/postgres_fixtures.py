"""Session fixtures for a real PostgreSQL server (tests/postgres.py), registered in tests/conftest.py.

- `postgres_server`: one throwaway server for the whole session, started on first use (~2 s).
- `postgres_url`: the asyncpg URL of one database on it, shared by the session.
- `fresh_postgres_url`: a new, empty database per test.

If PostgreSQL cannot be started the tests that use it FAIL with the reason: they are not skipped,
so a machine without the server cannot pass as green (`make test` installs it: `make postgres`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.postgres import PostgresServer, PostgresUnavailable

_databases = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer.create()
        server.start()
    except PostgresUnavailable as error:
        pytest.fail(f"PostgreSQL test server could not start: {error}", pytrace=False)
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database("gigarouter")


@pytest.fixture
def fresh_postgres_url(postgres_server: PostgresServer) -> str:
    postgres_server.start()  # a test that stopped it (an outage) may have failed before restarting it
    return postgres_server.create_database(f"test_{next(_databases)}")
