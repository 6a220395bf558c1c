"""`Store`: the gateway's durable state behind one small async interface.

    store = Store("sqlite+aiosqlite:///data/gigarouter.sqlite3")
    await store.migrate()
    key, secret = await store.create_key("team-a", budget_usd=25, models=["microsoft/Florence-2-large"])
    assert (await store.get_key_by_secret(secret)).id == key.id
    await store.record_usage([UsageRow(request_id="req-1", model="m", endpoint="chat.completions",
                                       status=200, latency_ms=41.0, key_id=key.id, images=1, cost_usd=0.0006)])
    await store.close()

Every method is one short transaction. A database that cannot be reached raises
`StoreUnavailable` (connects and pool waits time out after `connect_timeout_s`), so callers can
answer 503 instead of hanging. Several `Store`s (ingress replicas, the keys CLI) may share one
database: the writes that must not race (standby claims, budget charges, idempotent usage) are
single atomic statements.

Budgets. `api_keys.spent_nanousd` is the key's recorded cost, kept in the same transaction as the
usage rows that add to it, so checking a budget reads one row. Two ways to use it:

- `over_budget(key_id, budget)` before a request, with usage recorded after it (through a
  `UsageBuffer`): a key is refused once its recorded spend reaches the budget. Bound: the spend
  can pass the budget by the cost of the requests admitted before the last of them is recorded,
  that is, the requests in flight plus the rows still in buffers (at most one flush interval's
  worth per replica).
- `charge(key_id, cost)` at admission: an atomic "add if not yet exhausted", and the usage row
  then carries `charged_usd` so it is not counted twice. Bound: the spend passes the budget by
  at most the cost of the requests in flight when it was reached, from all replicas together (each
  of them saw spend < budget when it was admitted); rows still in buffers are already counted.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection

from serve.store import migrate as migrations
from serve.store.engine import StoreError, default_url, make_engine, redacted, store_operations, transaction
from serve.store.jobs import JobStore
from serve.store.records import (
    GroupBy,
    KeyRecord,
    UsageRow,
    UsageTotal,
    as_day,
    check_key_fields,
    display_prefix,
    hash_secret,
    new_secret,
    utcnow,
)
from serve.store.schema import api_keys, from_nano, interest, standby_claims, to_nano, usage


class UnknownKey(StoreError, LookupError):
    """No API key with that id."""


class _Unset(Enum):
    UNSET = "unset"


UNSET = _Unset.UNSET  # update_key: leave this field as it is


def _insert(connection: AsyncConnection, table: sa.Table) -> Any:
    """The dialect's INSERT, which has ON CONFLICT (both SQLite and PostgreSQL spell it the same)."""
    return (postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert)(table)


def _within(query: sa.Select[Any], window_s: float | None, now: datetime | None) -> sa.Select[Any]:
    """Interest signals of the `window_s` seconds up to `now` (None: all time; up to the present)."""
    if window_s is not None:
        query = query.where(interest.c.created_at >= (now or utcnow()) - timedelta(seconds=window_s))
    if now is not None:
        query = query.where(interest.c.created_at <= now)
    return query


@store_operations
class Store(JobStore):
    """The gateway's database (keys, usage, demand, standby claims, fal queue jobs: `serve.store.jobs`);
    see the module docstring."""

    def __init__(
        self, url: str | URL | None = None, *, connect_timeout_s: float = 5.0, sqlite_busy_timeout_s: float = 10.0
    ) -> None:
        self.engine = make_engine(
            url or default_url(), connect_timeout_s=connect_timeout_s, sqlite_busy_timeout_s=sqlite_busy_timeout_s
        )

    @property
    def url(self) -> str:
        """The database URL, password hidden."""
        return redacted(self.engine.url)

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.engine.dispose()

    # -- schema ------------------------------------------------------------------------------

    async def migrate(self) -> str | None:
        """Bring the schema to this code's revision (refusing a newer one); returns the revision."""
        return await migrations.upgrade(self.engine)

    async def check_schema(self) -> None:
        """Raise `SchemaBehind` / `SchemaTooNew` unless the schema is this code's (no changes made)."""
        await migrations.check(self.engine)

    # -- keys --------------------------------------------------------------------------------

    async def create_key(
        self,
        name: str,
        budget_usd: float | None = None,
        models: Sequence[str] | None = None,
        rate_limit: float | None = None,
        expires_at: datetime | None = None,
    ) -> tuple[KeyRecord, str]:
        """A new key and its secret. The secret is not stored (only its hash): show it once."""
        models = list(models) if models is not None else None
        check_key_fields(
            {
                "name": name,
                "budget_usd": budget_usd,
                "models": models,
                "rate_limit": rate_limit,
                "expires_at": expires_at,
            }
        )
        secret, now = new_secret(), utcnow()
        values = {
            "id": "key_" + secrets.token_hex(8),
            "name": name.strip(),
            "secret_hash": hash_secret(secret),
            "secret_prefix": display_prefix(secret),
            "models": models,
            "rate_limit": rate_limit,
            "budget_nanousd": to_nano(budget_usd),
            "spent_nanousd": 0,
            "expires_at": expires_at,
            "created_at": now,
            "updated_at": now,
        }
        async with transaction(self.engine) as connection:
            row = (await connection.execute(sa.insert(api_keys).values(values).returning(*api_keys.c))).one()
        return KeyRecord.from_row(row), secret

    async def list_keys(self, include_revoked: bool = True) -> list[KeyRecord]:
        query = sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        async with transaction(self.engine) as connection:
            return [KeyRecord.from_row(row) for row in await connection.execute(query)]

    async def get_key(self, key_id: str) -> KeyRecord | None:
        async with transaction(self.engine) as connection:
            row = (await connection.execute(sa.select(api_keys).where(api_keys.c.id == key_id))).one_or_none()
        return KeyRecord.from_row(row) if row else None

    async def get_key_by_secret(self, secret: str) -> KeyRecord | None:
        """The key whose secret this is (revoked and expired ones too: see `KeyRecord.refusal`)."""
        query = sa.select(api_keys).where(api_keys.c.secret_hash == hash_secret(secret))
        async with transaction(self.engine) as connection:
            row = (await connection.execute(query)).one_or_none()
        return KeyRecord.from_row(row) if row else None

    async def revoke_key(self, key_id: str, reason: str) -> KeyRecord:
        """Revoke a key for good (a second revoke keeps the first time and reason)."""
        statement = (
            sa.update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=utcnow(), revoked_reason=reason or None, updated_at=utcnow())
        )
        async with transaction(self.engine) as connection:
            await connection.execute(statement)
            return await self._key_in(connection, key_id)

    async def update_key(
        self,
        key_id: str,
        *,
        name: str | _Unset = UNSET,
        budget_usd: float | None | _Unset = UNSET,
        models: Sequence[str] | None | _Unset = UNSET,
        rate_limit: float | None | _Unset = UNSET,
        expires_at: datetime | None | _Unset = UNSET,
    ) -> KeyRecord:
        """Change some of a key's settings (None clears one: no budget, every model, ...)."""
        fields = {
            name_: value
            for name_, value in (
                ("name", name),
                ("budget_usd", budget_usd),
                ("models", models if models is None or models is UNSET else list(models)),
                ("rate_limit", rate_limit),
                ("expires_at", expires_at),
            )
            if value is not UNSET
        }
        check_key_fields(fields)
        values: dict[str, Any] = {"updated_at": utcnow()}
        for field, value in fields.items():
            if field == "budget_usd":
                values["budget_nanousd"] = to_nano(value)
            else:
                values[field] = value.strip() if field == "name" else value
        async with transaction(self.engine) as connection:
            await connection.execute(sa.update(api_keys).where(api_keys.c.id == key_id).values(values))
            return await self._key_in(connection, key_id)

    async def _key_in(self, connection: AsyncConnection, key_id: str) -> KeyRecord:
        row = (await connection.execute(sa.select(api_keys).where(api_keys.c.id == key_id))).one_or_none()
        if row is None:
            raise UnknownKey(f"no API key with id {key_id!r}")
        return KeyRecord.from_row(row)

    # -- budgets -----------------------------------------------------------------------------

    async def spent_usd(self, key_id: str) -> float:
        """The key's recorded cost (plus what `charge` took for requests not recorded yet)."""
        async with transaction(self.engine) as connection:
            spent = (
                await connection.execute(sa.select(api_keys.c.spent_nanousd).where(api_keys.c.id == key_id))
            ).scalar_one_or_none()
        if spent is None:
            raise UnknownKey(f"no API key with id {key_id!r}")
        return from_nano(spent) or 0.0

    async def over_budget(self, key_id: str, budget_usd: float | None) -> bool:
        """Whether the key's spend has reached `budget_usd` (None: no budget, never)."""
        return budget_usd is not None and await self.spent_usd(key_id) >= budget_usd

    async def charge(self, key_id: str, cost_usd: float) -> bool:
        """Add `cost_usd` to the key's spend unless its budget is already reached; False: refused
        (or no such key). Record the request's row with `charged_usd=cost_usd`."""
        spent = api_keys.c.spent_nanousd
        statement = (
            sa.update(api_keys)
            .where(api_keys.c.id == key_id)
            .where(sa.or_(api_keys.c.budget_nanousd.is_(None), spent < api_keys.c.budget_nanousd))
            .values(spent_nanousd=spent + to_nano(cost_usd))
            .returning(api_keys.c.id)
        )
        async with transaction(self.engine) as connection:
            return (await connection.execute(statement)).first() is not None

    # -- usage -------------------------------------------------------------------------------

    async def record_usage(self, rows: Iterable[UsageRow]) -> int:
        """Insert usage rows in one transaction; a row whose request_id is already recorded is
        skipped (so a retried flush counts nothing twice). Returns how many rows were new."""
        values: dict[str, dict[str, Any]] = {}
        for row in rows:
            created = row.created_at.astimezone(UTC) if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
            values.setdefault(
                row.request_id,
                {
                    "request_id": row.request_id,
                    "key_id": row.key_id,
                    "model": row.model,
                    "endpoint": row.endpoint,
                    "task": row.task,
                    "images": row.images,
                    "prompt_tokens": row.prompt_tokens,
                    "completion_tokens": row.completion_tokens,
                    "status": row.status,
                    "latency_ms": row.latency_ms,
                    "cost_nanousd": to_nano(row.cost_usd),
                    "priced": row.priced,
                    "charged_nanousd": to_nano(row.charged_usd),
                    "created_at": created,
                    "day": created.date(),
                },
            )
        if not values:
            return 0
        async with transaction(self.engine) as connection:
            statement = (
                _insert(connection, usage)
                .on_conflict_do_nothing(index_elements=[usage.c.request_id])
                .returning(usage.c.key_id, usage.c.cost_nanousd, usage.c.charged_nanousd)
            )
            inserted = (await connection.execute(statement, list(values.values()))).all()
            deltas: dict[str, int] = defaultdict(int)
            for key_id, cost, charged in inserted:
                if key_id is not None:
                    deltas[key_id] += cost - charged
            for key_id in sorted(deltas):  # one order for every writer: no deadlocks between flushes
                if deltas[key_id]:
                    await connection.execute(
                        sa.update(api_keys)
                        .where(api_keys.c.id == key_id)
                        .values(spent_nanousd=api_keys.c.spent_nanousd + deltas[key_id])
                    )
        return len(inserted)

    async def usage_totals(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        group_by: GroupBy = "model",
        key_id: str | None = None,
    ) -> list[UsageTotal]:
        """Usage summed per model, key or UTC day, over `start <= created_at < end` (either open),
        for one key or all; ordered by group."""
        columns = {"model": usage.c.model, "key": usage.c.key_id, "day": usage.c.day}
        if group_by not in columns:
            raise ValueError(f"group_by must be one of {', '.join(columns)}, not {group_by!r}")
        group = columns[group_by]
        query = sa.select(
            group,
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(usage.c.images), 0),
            sa.func.coalesce(sa.func.sum(usage.c.prompt_tokens), 0),
            sa.func.coalesce(sa.func.sum(usage.c.completion_tokens), 0),
            sa.func.coalesce(sa.func.sum(usage.c.cost_nanousd), 0),
            sa.func.coalesce(sa.func.sum(sa.case((usage.c.priced.is_(False), 1), else_=0)), 0),
        )
        if start is not None:
            query = query.where(usage.c.created_at >= start)
        if end is not None:
            query = query.where(usage.c.created_at < end)
        if key_id is not None:
            query = query.where(usage.c.key_id == key_id)
        query = query.group_by(group).order_by(group)
        async with transaction(self.engine) as connection:
            rows = (await connection.execute(query)).all()
        return [
            UsageTotal(
                group=as_day(name) if group_by == "day" else name,
                requests=int(requests),
                images=int(images),
                prompt_tokens=int(prompt),
                completion_tokens=int(completion),
                estimated_cost_usd=from_nano(int(cost)) or 0.0,
                unpriced_requests=int(unpriced),
            )
            for name, requests, images, prompt, completion, cost, unpriced in rows
        ]

    # -- demand ("tell us you want it") ------------------------------------------------------

    async def record_interest(self, model: str, window_s: float | None = None, at: datetime | None = None) -> int:
        """Add one interest signal for a model; returns its count within the last `window_s`
        seconds (None: all time), this signal included."""
        at = at or utcnow()
        async with transaction(self.engine) as connection:
            await connection.execute(sa.insert(interest).values(model=model, created_at=at))
            query = sa.select(sa.func.count()).select_from(interest).where(interest.c.model == model)
            if window_s is not None:
                query = query.where(interest.c.created_at >= at - timedelta(seconds=window_s))
            return int((await connection.execute(query)).scalar_one())

    async def interest_counts(self, window_s: float | None = None, now: datetime | None = None) -> dict[str, int]:
        """Interest per model within the last `window_s` seconds (None: all time); `now`: as of
        that time instead (signals after it are left out)."""
        query = _within(sa.select(interest.c.model, sa.func.count()), window_s, now).group_by(interest.c.model)
        async with transaction(self.engine) as connection:
            return {model: int(count) for model, count in await connection.execute(query)}

    async def interest_count(self, model: str, window_s: float | None = None, now: datetime | None = None) -> int:
        """One model's interest within the last `window_s` seconds (what the demand policy reads)."""
        query = _within(sa.select(sa.func.count()).select_from(interest), window_s, now)
        query = query.where(interest.c.model == model)
        async with transaction(self.engine) as connection:
            return int((await connection.execute(query)).scalar_one())

    # -- standby claims (serve.standby's ledger) ---------------------------------------------

    async def claim_standby(self, key: str, now: float, started_before: float) -> bool:
        """Record a standby start at `now` unless one was recorded at or after `started_before`;
        True if recorded. One atomic upsert: of several replicas claiming at once, one wins."""
        async with transaction(self.engine) as connection:
            statement = (
                _insert(connection, standby_claims)
                .values(key=key, started_at=now)
                .on_conflict_do_update(
                    index_elements=[standby_claims.c.key],
                    set_={"started_at": now},
                    where=standby_claims.c.started_at < started_before,
                )
                .returning(standby_claims.c.key)
            )
            return (await connection.execute(statement)).first() is not None

    async def last_standby_start(self, key: str) -> float | None:
        """When a standby was last started for `key`, if ever (epoch seconds)."""
        query = sa.select(standby_claims.c.started_at).where(standby_claims.c.key == key)
        async with transaction(self.engine) as connection:
            return (await connection.execute(query)).scalar_one_or_none()
