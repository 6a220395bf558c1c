"""The gateway's durable store: API keys, the usage ledger, demand signals and standby claims.

One database behind SQLAlchemy 2 (async) and Alembic migrations: SQLite by default
(`sqlite+aiosqlite:///data/gigarouter.sqlite3`, no server), PostgreSQL on a cluster
(`postgresql+asyncpg://user:password@host:5432/db`, shared by every ingress replica).

- `Store` (store.py): the typed interface; `UsageBuffer` (buffer.py): batched usage writes.
- `migrate.py` + `migrations/`: the schema's revisions; `python -m serve.store upgrade --url URL`.
- `jobs.py`: the fal queue's jobs (leases, cancel, retries, expiry, webhook deliveries).
- `schema.py`: the tables; `records.py`: the records the interface returns.
"""

from serve.store.buffer import UsageBuffer
from serve.store.engine import (
    DATABASE_URL_ENV,
    DEFAULT_DATABASE_URL,
    SchemaBehind,
    SchemaTooNew,
    StoreError,
    StoreUnavailable,
    default_url,
)
from serve.store.jobs import JobRecord, log_line
from serve.store.records import KeyRecord, UsageRow, UsageTotal, budget_exhausted, cost_usd, hash_secret
from serve.store.store import UNSET, Store, UnknownKey

__all__ = [
    "DATABASE_URL_ENV",
    "DEFAULT_DATABASE_URL",
    "UNSET",
    "JobRecord",
    "KeyRecord",
    "SchemaBehind",
    "SchemaTooNew",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "UnknownKey",
    "UsageBuffer",
    "UsageRow",
    "UsageTotal",
    "budget_exhausted",
    "cost_usd",
    "default_url",
    "hash_secret",
    "log_line",
]
