"""The store's tables, as SQLAlchemy Core metadata (the migrations in `migrations/versions/` create them).

Conventions that hold on SQLite and PostgreSQL alike:

- Times are UTC. `UTCDateTime` writes aware datetimes (naive ones are taken as UTC) and always
  reads back aware ones: SQLite keeps no zone, PostgreSQL's `timestamptz` does.
- Money is integer nano-dollars (`*_nanousd`, 1e-9 USD), so sums are exact on both backends
  (a price of $0.094 per 1,000 images is 94,000 nano-dollars per image); the `Store` interface
  speaks float USD.
- Surrogate keys are `BIGINT` on PostgreSQL and `INTEGER` on SQLite (only `INTEGER PRIMARY KEY`
  auto-increments there).

A change to these tables needs a new migration (`python -m serve.store revision` is not offered:
write it by hand next to `0001_initial.py`); `tests/test_store.py` checks that the migrated
database and this metadata agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

NANO = 1_000_000_000  # nano-dollars per dollar


def to_nano(usd: float | None) -> int | None:
    return None if usd is None else round(usd * NANO)


def from_nano(nano: int | None) -> float | None:
    return None if nano is None else nano / NANO


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        # SQLite stores the text of a naive datetime: keep every stored value in UTC so that text
        # comparisons are time comparisons.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def surrogate_id() -> sa.types.TypeEngine[Any]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


metadata = sa.MetaData()

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # "key_" + 16 hex digits
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),  # sha256 hex of the secret
    sa.Column("secret_prefix", sa.String(16), nullable=False),  # for display: "gr-AbCdEfGh"
    sa.Column("models", sa.JSON, nullable=True),  # allowed model ids; NULL: all
    sa.Column("rate_limit", sa.Double, nullable=True),  # requests per second; NULL: the gateway's default
    sa.Column("budget_nanousd", sa.BigInteger, nullable=True),  # NULL: no budget
    # The recorded cost of the key's usage rows plus what `Store.charge` took for requests whose row
    # is not recorded yet: what budgets are checked against, in one row read.
    sa.Column("spent_nanousd", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("expires_at", UTCDateTime, nullable=True),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    sa.Column("revoked_reason", sa.String(500), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

usage = sa.Table(
    "usage",
    metadata,
    sa.Column("id", surrogate_id(), primary_key=True, autoincrement=True),
    # One row per served request: a flush retried after a lost answer inserts nothing twice.
    sa.Column("request_id", sa.String(128), nullable=False, unique=True),
    sa.Column("key_id", sa.String(32), nullable=True),  # NULL: no key (auth off) or a bootstrap key
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("endpoint", sa.String(100), nullable=False),  # e.g. "chat.completions", "embeddings"
    sa.Column("task", sa.String(100), nullable=True),  # e.g. "<OD>"
    sa.Column("images", sa.Integer, nullable=False, server_default="0"),
    sa.Column("prompt_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("completion_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("status", sa.Integer, nullable=False),  # the HTTP status answered
    sa.Column("latency_ms", sa.Double, nullable=False),
    sa.Column("cost_nanousd", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("priced", sa.Boolean, nullable=False, server_default=sa.true()),  # False: the model has no price
    sa.Column("charged_nanousd", sa.BigInteger, nullable=False, server_default="0"),  # taken by Store.charge
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("day", sa.Date, nullable=False),  # the UTC day of created_at, for group_by=day on any backend
    sa.Index("usage_key_created", "key_id", "created_at"),
    sa.Index("usage_created", "created_at"),
    sa.Index("usage_day", "day"),
)

interest = sa.Table(
    "interest",
    metadata,
    sa.Column("id", surrogate_id(), primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("interest_model_created", "model", "created_at"),
)

standby_claims = sa.Table(
    "standby_claims",
    metadata,
    sa.Column("key", sa.String(500), primary_key=True),  # runtime env + node
    sa.Column("started_at", sa.Double, nullable=False),  # epoch seconds, as serve.standby passes them
)

JOB_STATUSES = ("QUEUED", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED")
WEBHOOK_STATES = ("PENDING", "DELIVERED", "FAILED")

jobs = sa.Table(
    "jobs",
    metadata,
    # FIFO order: `seq` increments on both backends (INTEGER PRIMARY KEY on SQLite), ids are UUIDs
    sa.Column("seq", surrogate_id(), primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),  # the request id clients see
    sa.Column("app_id", sa.String(300), nullable=False),  # as submitted, e.g. fal-ai/florence-2-large/caption
    sa.Column("model", sa.String(200), nullable=False),  # the deployment name
    sa.Column("task", sa.String(100), nullable=False),  # the task endpoint name
    sa.Column("key_id", sa.String(64), nullable=True),  # NULL: auth off
    sa.Column("status", sa.String(16), nullable=False),  # JOB_STATUSES
    sa.Column("request", sa.JSON, nullable=True),  # the body; NULL once the job ended (not needed again)
    sa.Column("result", sa.JSON, nullable=True),  # COMPLETED: the response body
    sa.Column("error", sa.JSON, nullable=True),  # FAILED/CANCELLED: {"status", "body", "message", "error_type"}
    sa.Column("logs", sa.JSON, nullable=False),  # [{"message", "level", "timestamp"}]
    sa.Column("inference_time", sa.Double, nullable=True),  # seconds
    sa.Column("webhook_url", sa.String(2048), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Column("lease_owner", sa.String(200), nullable=True),  # the runner holding it while IN_PROGRESS
    sa.Column("lease_expires_at", UTCDateTime, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),  # times leased to a runner
    sa.Column("result_expires_at", UTCDateTime, nullable=True),  # kept until then, answered 410 after
    sa.Column("expired", sa.Boolean, nullable=False, server_default=sa.false()),  # bodies purged
    sa.Column("webhook_state", sa.String(16), nullable=True),  # WEBHOOK_STATES; NULL: no webhook (yet)
    sa.Column("webhook_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("webhook_next_at", UTCDateTime, nullable=True),  # next try; also a delivery's lease
    sa.Column("webhook_error", sa.String(500), nullable=True),  # why the last try failed
    sa.Index("jobs_status_model_seq", "status", "model", "seq"),
    sa.Index("jobs_status_lease", "status", "lease_expires_at"),
    sa.Index("jobs_webhook_due", "webhook_state", "webhook_next_at"),
    sa.Index("jobs_result_expires", "result_expires_at"),
)
