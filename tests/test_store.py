"""The durable store (serve/store/) on SQLite and on a real PostgreSQL server (tests/postgres.py).

Every test that takes `url` runs on both backends: SQLite in a temp file, PostgreSQL in a fresh
database of the session's throwaway server. Outages are real: the PostgreSQL server is stopped
and restarted, the SQLite file is locked by another connection. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from serve.store import (
    UNSET,
    SchemaBehind,
    SchemaTooNew,
    Store,
    StoreUnavailable,
    UnknownKey,
    UsageBuffer,
    UsageRow,
    cost_usd,
)
from serve.store import migrate as migrations
from serve.store.schema import api_keys, metadata
from tests.helpers import ROOT
from tests.postgres import PostgresServer, free_port

TABLES = {"api_keys", "usage", "interest", "standby_claims", "jobs"}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/state/gigarouter.sqlite3"
    return request.getfixturevalue("fresh_postgres_url")


def run(coroutine):
    return asyncio.run(coroutine)


async def migrated(url: str, **options) -> Store:
    store = Store(url, **options)
    await store.migrate()
    return store


def row(request_id: str, **fields) -> UsageRow:
    defaults = {"model": "m/a", "endpoint": "chat.completions", "status": 200, "latency_ms": 12.5}
    return UsageRow(request_id=request_id, **{**defaults, **fields})


async def table_names(store: Store) -> set[str]:
    async with store.engine.connect() as connection:
        return set(await connection.run_sync(lambda sync: sa.inspect(sync).get_table_names()))


async def count_usage(store: Store) -> int:
    async with store.engine.connect() as connection:
        return (await connection.execute(sa.text("SELECT COUNT(*) FROM usage"))).scalar_one()


# -- migrations ---------------------------------------------------------------------------------


def test_migrations_up_down_and_up_again(url):
    async def scenario():
        async with Store(url) as store:
            with pytest.raises(SchemaBehind, match="python -m serve.store upgrade"):
                await store.check_schema()
            assert await store.migrate() == migrations.head()
            assert await store.migrate() == migrations.head()  # idempotent: a second replica starting
            await store.check_schema()
            assert TABLES <= await table_names(store)
            await store.create_key("survives a no-op migrate")
            assert len(await store.list_keys()) == 1

            assert await migrations.downgrade(store.engine, "base") is None
            assert not TABLES & await table_names(store)
            with pytest.raises(SchemaBehind):
                await store.check_schema()

            assert await store.migrate() == migrations.head()
            assert TABLES <= await table_names(store)
            assert await store.list_keys() == []

    run(scenario())


def test_migrated_schema_matches_the_tables_the_code_uses(url):
    """The hand-written migrations and serve/store/schema.py describe the same tables."""

    async def scenario():
        async with await migrated(url) as store, store.engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync, opts={"compare_type": True}), metadata)
            )

    assert run(scenario()) == []


def test_a_newer_schema_is_refused_before_anything_changes(url):
    async def scenario():
        async with await migrated(url) as store:
            key, _ = await store.create_key("kept")
            async with store.engine.begin() as connection:
                await connection.execute(sa.text("UPDATE alembic_version SET version_num = '9999_future'"))
            for attempt in (store.migrate, store.check_schema):
                with pytest.raises(SchemaTooNew) as refused:
                    await attempt()
                message = str(refused.value)
                assert "revision 9999_future, newer than this gigarouter-serve knows" in message
                assert f"({migrations.head()})" in message and "upgrade the gateway" in message
            with pytest.raises(SchemaTooNew):
                await migrations.downgrade(store.engine, "base")
            assert [k.id for k in await store.list_keys()] == [key.id]  # nothing was dropped

    run(scenario())


# -- keys ---------------------------------------------------------------------------------------


def test_keys_are_stored_as_hashes_and_found_by_secret(url):
    async def scenario():
        async with await migrated(url) as store:
            expires = datetime(2031, 1, 1, tzinfo=UTC)
            key, secret = await store.create_key(
                "team-a", budget_usd=25, models=["microsoft/Florence-2-large"], rate_limit=5, expires_at=expires
            )
            assert secret.startswith("gr-") and len(secret) > 40
            assert key.secret_prefix == secret[:11] and key.id.startswith("key_")
            settings = (key.name, key.budget_usd, key.models, key.rate_limit, key.expires_at)
            assert settings == ("team-a", 25.0, ["microsoft/Florence-2-large"], 5.0, expires)
            assert key.spent_usd == 0 and key.refusal() is None and key.created_at.tzinfo is not None
            assert key.allows("microsoft/Florence-2-large") and not key.allows("google/siglip2-base-patch16-naflex")

            assert await store.get_key_by_secret(secret) == key
            assert await store.get_key_by_secret(secret + "x") is None
            assert await store.get_key_by_secret("gr-" + "A" * 43) is None

            async with store.engine.connect() as connection:
                stored = (await connection.execute(sa.select(api_keys))).one()._asdict()
            assert stored["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
            assert not any(secret in str(value) for value in stored.values())  # only the hash and a prefix

            other, other_secret = await store.create_key("team-b")
            assert other.models is None and other.budget_usd is None and other.allows("anything")
            assert (await store.get_key_by_secret(other_secret)).id == other.id
            assert [k.id for k in await store.list_keys()] == [key.id, other.id]

    run(scenario())


def test_revoke_update_and_expiry(url):
    async def scenario():
        async with await migrated(url) as store:
            key, secret = await store.create_key("team-a", budget_usd=1, models=["m/a"], rate_limit=2)

            updated = await store.update_key(key.id, budget_usd=5.5, models=["m/a", "m/b"])
            assert (updated.budget_usd, updated.models, updated.rate_limit) == (5.5, ["m/a", "m/b"], 2.0)
            assert updated.updated_at >= key.updated_at and updated.created_at == key.created_at
            cleared = await store.update_key(key.id, budget_usd=None, models=None, rate_limit=None, name=UNSET)
            assert (cleared.budget_usd, cleared.models, cleared.rate_limit) == (None, None, None)
            assert cleared.name == "team-a"
            assert (await store.get_key_by_secret(secret)).budget_usd is None

            past = datetime.now(UTC) - timedelta(minutes=1)
            expired = await store.update_key(key.id, expires_at=past)
            assert "expired at" in (await store.get_key_by_secret(secret)).refusal()
            assert expired.refusal(now=past - timedelta(seconds=1)) is None
            assert (await store.update_key(key.id, expires_at=None)).refusal() is None

            revoked = await store.revoke_key(key.id, "left the project")
            assert revoked.revoked_at is not None
            found = await store.get_key_by_secret(secret)
            assert found.refusal() == f"API key {key.id} was revoked: left the project"
            again = await store.revoke_key(key.id, "second reason")  # the first revocation stands
            assert (again.revoked_at, again.revoked_reason) == (revoked.revoked_at, "left the project")
            assert await store.list_keys(include_revoked=False) == []

            with pytest.raises(UnknownKey):
                await store.revoke_key("key_missing", "x")
            with pytest.raises(UnknownKey):
                await store.update_key("key_missing", budget_usd=1)
            for bad in ({"budget_usd": -1}, {"rate_limit": 0}, {"models": []}, {"name": " "}):
                with pytest.raises(ValueError):
                    await store.update_key(key.id, **bad)
            with pytest.raises(ValueError):
                await store.create_key("x", models=[])

    run(scenario())


# -- usage --------------------------------------------------------------------------------------


def test_usage_is_idempotent_and_totals_group_by_model_key_and_day(url):
    async def scenario():
        async with await migrated(url) as store:
            a, _ = await store.create_key("a")
            b, _ = await store.create_key("b")
            day1 = datetime(2026, 12, 1, 23, 30, tzinfo=UTC)
            day2 = day1 + timedelta(hours=1)  # past UTC midnight: the next day
            price, unpriced = cost_usd(2, 0.094), cost_usd(1, None)
            assert price == (0.000188, True) and unpriced == (0.0, False)
            rows = [
                row("r1", key_id=a.id, images=2, cost_usd=price[0], created_at=day1, prompt_tokens=3),
                row("r2", key_id=a.id, images=2, cost_usd=price[0], created_at=day2, completion_tokens=7),
                row("r3", key_id=b.id, model="m/b", images=1, cost_usd=0.0, priced=False, created_at=day2),
                row("r4", model="m/b", images=1, cost_usd=0.5, created_at=day2, status=400),  # no key
            ]
            assert await store.record_usage(rows) == 4
            assert await store.record_usage(rows) == 0  # a retried flush
            assert await store.record_usage([rows[0], rows[0], row("r5", key_id=b.id, created_at=day2)]) == 1
            assert await count_usage(store) == 5

            by_model = {t.group: t for t in await store.usage_totals(group_by="model")}
            assert by_model["m/a"].requests == 3 and by_model["m/a"].images == 4
            assert by_model["m/a"].estimated_cost_usd == pytest.approx(0.000376, abs=1e-12)
            assert by_model["m/a"].prompt_tokens == 3 and by_model["m/a"].completion_tokens == 7
            assert (by_model["m/b"].requests, by_model["m/b"].unpriced_requests) == (2, 1)
            assert by_model["m/b"].estimated_cost_usd == 0.5

            by_key = {t.group: t.requests for t in await store.usage_totals(group_by="key")}
            assert by_key == {a.id: 2, b.id: 2, None: 1}
            by_day = [(t.group, t.requests) for t in await store.usage_totals(group_by="day")]
            assert by_day == [("2026-12-01", 1), ("2026-12-02", 4)]

            only_a = await store.usage_totals(group_by="day", key_id=a.id)
            assert [(t.group, t.images) for t in only_a] == [("2026-12-01", 2), ("2026-12-02", 2)]
            window = await store.usage_totals(start=day2, end=day2 + timedelta(seconds=1), group_by="key")
            assert {t.group: t.requests for t in window} == {a.id: 1, b.id: 2, None: 1}
            assert await store.usage_totals(end=day1) == []  # end is exclusive
            with pytest.raises(ValueError, match="group_by"):
                await store.usage_totals(group_by="hour")

            assert await store.spent_usd(a.id) == pytest.approx(0.000376, abs=1e-12)  # each row once
            assert await store.spent_usd(b.id) == 0.0
            assert not await store.over_budget(a.id, 0.001) and await store.over_budget(a.id, 0.000376)
            assert not await store.over_budget(a.id, None)

    run(scenario())


def test_charges_stop_a_key_at_its_budget_and_rows_correct_them(url):
    async def scenario():
        async with await migrated(url) as store:
            key, secret = await store.create_key("k", budget_usd=1.0)
            assert [await store.charge(key.id, 0.4) for _ in range(4)] == [True, True, True, False]
            assert await store.spent_usd(key.id) == pytest.approx(1.2)
            assert (await store.get_key_by_secret(secret)).budget_exhausted
            # The rows of the three charged requests: two cost what was charged, one failed (cost 0).
            rows = [row(f"c{i}", key_id=key.id, cost_usd=0.4, charged_usd=0.4) for i in range(2)]
            rows.append(row("c2", key_id=key.id, cost_usd=0.0, charged_usd=0.4, status=500))
            assert await store.record_usage(rows) == 3
            assert await store.record_usage(rows) == 0  # no second correction either
            assert await store.spent_usd(key.id) == pytest.approx(0.8)
            totals = await store.usage_totals(group_by="key")
            assert totals[0].estimated_cost_usd == pytest.approx(await store.spent_usd(key.id))
            assert await store.charge(key.id, 0.4)  # back under budget after the refund
            assert not await store.charge(key.id, 0.4)
            await store.update_key(key.id, budget_usd=10)  # a raised budget admits again
            assert await store.charge(key.id, 0.4)
            assert not await store.charge("key_missing", 0.1)
            with pytest.raises(UnknownKey):
                await store.spent_usd("key_missing")

    run(scenario())


def test_two_replicas_charging_at_once_overrun_by_less_than_one_request(url):
    """The bound: every admitted request saw spend < budget, so the overrun is under one request's
    cost per request in flight when the budget was reached; here each charge is one statement."""

    async def scenario():
        first, second = await migrated(url), await migrated(url)
        try:
            key, _ = await first.create_key("shared", budget_usd=1.0)
            attempts = [store.charge(key.id, 0.3) for store in (first, second) for _ in range(10)]
            admitted = sum(await asyncio.gather(*attempts))
            assert admitted == 4  # 0.0, 0.3, 0.6 and 0.9 were each below 1.0
            assert await second.spent_usd(key.id) == pytest.approx(1.2)
        finally:
            await first.close()
            await second.close()

    run(scenario())


# -- buffered usage -----------------------------------------------------------------------------


def test_buffer_flushes_on_its_own_and_on_close(url):
    async def scenario():
        async with await migrated(url) as store:
            buffer = UsageBuffer(store, flush_interval_s=0.2)
            await buffer.start()
            for i in range(50):
                buffer.add(row(f"t{i}"))
            deadline = time.monotonic() + 5
            while await count_usage(store) < 50 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert await count_usage(store) == 50 and buffer.pending == 0

            slow = UsageBuffer(store, flush_interval_s=3600)  # only close() will flush it
            await slow.start()
            for i in range(30):
                slow.add(row(f"c{i}"))
            await asyncio.sleep(0.1)
            assert await count_usage(store) == 50
            assert await slow.close() == 0 and slow.pending == 0
            assert await count_usage(store) == 80
            assert await buffer.close() == 0

    run(scenario())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_buffer_keeps_rows_while_the_database_is_away(backend, request, tmp_path):
    """PostgreSQL: its server is stopped and started again. SQLite: another connection holds the
    write lock. While away, flushes fail and keep their rows (the oldest dropped past max_rows);
    once back, every kept row is written exactly once."""
    if backend == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = request.getfixturevalue("fresh_postgres_url")
        lock = None
    else:
        url = f"sqlite+aiosqlite:///{tmp_path}/gigarouter.sqlite3"

    async def scenario():
        nonlocal lock
        async with await migrated(url, connect_timeout_s=1, sqlite_busy_timeout_s=0.2) as store:
            key, _ = await store.create_key("k")
            buffer = UsageBuffer(store, flush_interval_s=0.1, max_rows=8)
            await buffer.start()
            buffer.add(row("before", key_id=key.id, cost_usd=1.0))
            await buffer.flush()

            if backend == "postgresql":
                server.stop()
            else:
                lock = sqlite3.connect(f"{tmp_path}/gigarouter.sqlite3", isolation_level=None)
                lock.execute("BEGIN EXCLUSIVE")
            try:
                for i in range(10):
                    buffer.add(row(f"away{i}", key_id=key.id, cost_usd=0.25))
                buffer.add(row("before", key_id=key.id, cost_usd=1.0))  # a duplicate, as after a lost answer
                with pytest.raises(StoreUnavailable):
                    await buffer.flush()
                await asyncio.sleep(0.5)  # background flushes fail too
                assert buffer.pending == 8 and buffer.dropped == 3  # away0..away2 dropped: the oldest
                assert buffer.unflushed_cost_usd(key.id) == pytest.approx(7 * 0.25 + 1.0)
            finally:
                if backend == "postgresql":
                    server.start()
                else:
                    lock.close()  # its transaction ends with it

            deadline = time.monotonic() + 15
            while buffer.pending and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert buffer.pending == 0
            assert await buffer.close() == 0
            totals = await store.usage_totals(group_by="key")
            assert totals[0].requests == 8  # "before" and away3..away9
            assert await store.spent_usd(key.id) == pytest.approx(1.0 + 7 * 0.25)

    run(scenario())


def test_an_unreachable_database_fails_fast_with_store_unavailable():
    async def scenario():
        store = Store(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing", connect_timeout_s=1)
        started = time.monotonic()
        try:
            with pytest.raises(StoreUnavailable, match="unavailable"):
                await store.get_key_by_secret("gr-x")
            with pytest.raises(StoreUnavailable):
                await store.migrate()
        finally:
            await store.close()
        assert time.monotonic() - started < 10

    run(scenario())


# -- demand and standby claims from several replicas --------------------------------------------


def test_interest_counts_windows_and_concurrent_replicas(url):
    async def scenario():
        first, second = await migrated(url), await migrated(url)
        try:
            now = datetime.now(UTC)
            assert await first.record_interest("m/old", at=now - timedelta(hours=2)) == 1
            assert await first.record_interest("m/old", window_s=3600) == 1  # the old one is outside
            assert await first.record_interest("m/old") == 3  # all time
            counts = await asyncio.gather(*[s.record_interest("m/hot") for s in (first, second) for _ in range(25)])
            assert max(counts) <= 50 and min(counts) >= 1
            if first.backend == "sqlite":  # writes are serialised: each saw a distinct total
                assert sorted(counts) == list(range(1, 51))
            assert await second.interest_counts() == {"m/old": 3, "m/hot": 50}
            assert await second.interest_counts(window_s=60) == {"m/old": 2, "m/hot": 50}
            assert await first.interest_count("m/hot", window_s=60) == 50
            an_hour_ago = now - timedelta(hours=1)  # as of then: only the old signal, within 2 h
            assert await first.interest_count("m/old", window_s=7200, now=an_hour_ago) == 1
            assert await first.interest_counts(window_s=600, now=an_hour_ago) == {}
            assert await first.interest_count("m/none") == 0
        finally:
            await first.close()
            await second.close()

    run(scenario())


def test_standby_claims_are_won_by_exactly_one_replica(url):
    async def scenario():
        first, second = await migrated(url), await migrated(url)
        try:
            assert await first.last_standby_start("env@node") is None
            attempts = [s.claim_standby("env@node", 100.0, 50.0) for s in (first, second) for _ in range(10)]
            assert sum(await asyncio.gather(*attempts)) == 1
            assert await second.last_standby_start("env@node") == 100.0
            assert not await second.claim_standby("env@node", 101.0, 100.0)  # one at or after 100 exists
            later = [s.claim_standby("env@node", 130.0, 120.0) for s in (first, second) for _ in range(10)]
            assert sum(await asyncio.gather(*later)) == 1
            assert await first.last_standby_start("env@node") == 130.0
            assert await first.claim_standby("env@other", 1.0, 0.0)  # keys are independent
        finally:
            await first.close()
            await second.close()

    run(scenario())


def test_concurrent_flushes_of_the_same_rows_count_them_once(url):
    async def scenario():
        first, second = await migrated(url), await migrated(url)
        try:
            key, _ = await first.create_key("k")
            rows = [row(f"dup{i}", key_id=key.id, cost_usd=0.01) for i in range(200)]
            written = await asyncio.gather(first.record_usage(rows), second.record_usage(rows))
            assert sum(written) == 200
            assert await count_usage(first) == 200
            assert await first.spent_usd(key.id) == pytest.approx(2.0)
        finally:
            await first.close()
            await second.close()

    run(scenario())


# -- command lines ------------------------------------------------------------------------------


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=60, env=environment
    )


def test_keys_cli_end_to_end_on_sqlite(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/cli/gigarouter.sqlite3"
    env = {"GIGAROUTER_DATABASE_URL": url}
    models = "microsoft/Florence-2-large,google/siglip2-base-patch16-naflex"
    options = f"--name team-a --budget-usd 25 --models {models} --rate-limit 5 --expires 2030-01-01 --json"
    created = cli("-m", "serve.keys", "create", *options.split(), env=env)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["secret"].startswith("gr-") and key["budget_usd"] == 25 and key["rate_limit"] == 5
    assert key["models"] == ["microsoft/Florence-2-large", "google/siglip2-base-patch16-naflex"]
    assert key["expires_at"] == "2030-01-01T00:00:00+00:00"

    plain = cli("-m", "serve.keys", "--database-url", url, "create", "--name", "team-b")
    assert plain.returncode == 0 and "secret (shown once" in plain.stdout

    async def lookup():
        async with Store(url) as store:
            return await store.get_key_by_secret(key["secret"])

    assert run(lookup()).id == key["id"]

    listed = cli("-m", "serve.keys", "list", "--json", env=env)
    assert [k["name"] for k in json.loads(listed.stdout)] == ["team-a", "team-b"]
    assert key["secret"] not in listed.stdout

    assert cli("-m", "serve.keys", "set-budget", key["id"], "40", env=env).returncode == 0
    updated = cli("-m", "serve.keys", "update", key["id"], "--models", "all", "--expires", "never", "--json", env=env)
    assert json.loads(updated.stdout)["models"] is None and json.loads(updated.stdout)["budget_usd"] == 40
    revoked = cli("-m", "serve.keys", "revoke", key["id"], "--reason", "rotated", "--json", env=env)
    assert json.loads(revoked.stdout)["revoked_reason"] == "rotated"
    assert "rotated" in run(lookup()).refusal()

    active = cli("-m", "serve.keys", "list", "--active", env=env)
    assert "team-b" in active.stdout and "team-a" not in active.stdout
    missing = cli("-m", "serve.keys", "revoke", "key_missing", "--reason", "x", env=env)
    assert missing.returncode == 1 and "no API key with id 'key_missing'" in missing.stderr
    bad = cli("-m", "serve.keys", "create", "--name", "x", "--expires", "soon", env=env)
    assert bad.returncode == 2 and "not a date" in bad.stderr


def test_store_cli_upgrades_downgrades_and_refuses_a_newer_schema(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/gigarouter.sqlite3"
    up = cli("-m", "serve.store", "upgrade", "--url", url)
    assert up.returncode == 0 and f"at revision {migrations.head()}" in up.stdout, up.stderr
    assert cli("-m", "serve.store", "check", "--url", url).returncode == 0
    down = cli("-m", "serve.store", "downgrade", "--revision", "base", "--url", url)
    assert down.returncode == 0 and "at revision (none)" in down.stdout
    behind = cli("-m", "serve.store", "check", "--url", url)
    assert behind.returncode == 1 and "older than this gigarouter-serve" in behind.stderr
    assert cli("-m", "serve.store", "upgrade", "--url", url).returncode == 0
    with sqlite3.connect(f"{tmp_path}/gigarouter.sqlite3") as db:
        db.execute("UPDATE alembic_version SET version_num = 'ffff'")
    refused = cli("-m", "serve.store", "upgrade", "--url", url)
    assert refused.returncode == 1
    assert "revision ffff, newer than this gigarouter-serve knows" in refused.stderr
