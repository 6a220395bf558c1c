"""Jobs of the fal queue in the store: submitted, leased by one runner at a time, ended once.

    job = await store.submit_job("fal-ai/florence-2-large/caption", "florence-2-large", "caption", key_id, body)
    leased = await store.lease_job(owner="host:pid:abcd", lease_s=30)   # the oldest QUEUED job, now IN_PROGRESS
    await store.renew_lease(leased.id, "host:pid:abcd", 30)             # while it runs
    await store.finish_job(leased.id, "host:pid:abcd", "COMPLETED", result={...}, result_ttl_s=3600)

States: QUEUED -> IN_PROGRESS -> COMPLETED | FAILED, or QUEUED -> CANCELLED. Every change is one
transaction that checks the state it starts from (and, for a runner, that it still holds the lease),
so two runners never both take or end a job:

- `lease_job` picks the oldest QUEUED job with `SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL
  (runners skip each other's rows instead of waiting) and inside one `BEGIN IMMEDIATE` transaction
  on SQLite (one writer at a time), then marks it IN_PROGRESS with an owner and a lease expiry.
- A runner whose process dies stops renewing; `requeue_expired` (run by every runner) puts a job
  whose lease has expired back in the queue, or fails it with a reason once `max_attempts` leases
  have expired. A runner that lost its lease cannot end the job (`finish_job` returns False).
- `release_job` puts a job back at once when its runner stops gracefully (a redeploy).
- `cancel_job` cancels only a QUEUED job; a running one is refused (fal's ALREADY_COMPLETED).
- `expire_jobs` purges the bodies of jobs whose result is past `result_expires_at` (answered 410
  after that) and deletes the rows `tombstone_s` later (answered 404).

Webhook deliveries are leased the same way (`lease_webhooks`: the next try time is pushed ahead
while one runner delivers), and recorded with `webhook_done`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from serve.store.engine import store_operations, transaction
from serve.store.records import utcnow
from serve.store.schema import jobs

JobStatus = Literal["QUEUED", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED"]
ENDED = ("COMPLETED", "FAILED", "CANCELLED")
CancelOutcome = Literal["CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND"]


def log_line(message: str, level: str = "INFO", at: datetime | None = None) -> dict[str, str]:
    return {"message": message, "level": level, "timestamp": (at or utcnow()).isoformat().replace("+00:00", "Z")}


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job as stored. `request` is None once it ended; bodies are None once `expired`."""

    seq: int
    id: str
    app_id: str
    model: str
    task: str
    key_id: str | None
    status: JobStatus
    request: Any
    result: Any
    error: dict[str, Any] | None
    logs: list[dict[str, str]]
    inference_time: float | None
    webhook_url: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    attempts: int
    result_expires_at: datetime | None
    expired: bool
    webhook_state: str | None
    webhook_attempts: int
    webhook_next_at: datetime | None
    webhook_error: str | None

    @classmethod
    def from_row(cls, row: Any) -> JobRecord:
        values = dict(row._mapping)
        values["logs"] = list(values["logs"] or [])
        return cls(**values)

    @property
    def ended(self) -> bool:
        return self.status in ENDED


def _scoped(query: Any, job_id: str, key_id: str | None) -> Any:
    """Only the job of this key (`key_id` None: auth off, the jobs submitted without a key)."""
    owner = jobs.c.key_id.is_(None) if key_id is None else jobs.c.key_id == key_id
    return query.where(jobs.c.id == job_id, owner)


@store_operations
class JobStore:
    """The job methods of `serve.store.Store` (a mixin: it provides `self.engine`)."""

    engine: AsyncEngine

    async def submit_job(
        self,
        app_id: str,
        model: str,
        task: str,
        key_id: str | None,
        request: Any,
        webhook_url: str | None = None,
        job_id: str | None = None,
    ) -> JobRecord:
        """A new QUEUED job (its id a UUID unless given)."""
        values = {
            "id": job_id or str(uuid.uuid4()),
            "app_id": app_id,
            "model": model,
            "task": task,
            "key_id": key_id,
            "status": "QUEUED",
            "request": request,
            "logs": [],
            "webhook_url": webhook_url,
            "created_at": utcnow(),
            "attempts": 0,
            "webhook_attempts": 0,
            "expired": False,
        }
        async with transaction(self.engine) as connection:
            row = (await connection.execute(sa.insert(jobs).values(values).returning(*jobs.c))).one()
        return JobRecord.from_row(row)

    async def get_job(self, job_id: str, key_id: str | None, *, any_key: bool = False) -> JobRecord | None:
        """The job with this id if `key_id` submitted it (`any_key`: whoever did); None otherwise."""
        query = sa.select(jobs).where(jobs.c.id == job_id) if any_key else _scoped(sa.select(jobs), job_id, key_id)
        async with transaction(self.engine) as connection:
            row = (await connection.execute(query)).one_or_none()
        return JobRecord.from_row(row) if row else None

    async def queue_position(self, job: JobRecord) -> int:
        """How many QUEUED jobs for the same model are ahead of this one (0: it is next)."""
        query = sa.select(sa.func.count()).where(
            jobs.c.status == "QUEUED", jobs.c.model == job.model, jobs.c.seq < job.seq
        )
        async with transaction(self.engine) as connection:
            return (await connection.execute(query)).scalar_one()

    async def _any(self, *conditions: Any) -> bool:
        """A plain read first, so that idle runners' polls never take SQLite's write lock."""
        async with transaction(self.engine) as connection:
            return (await connection.execute(sa.select(jobs.c.seq).where(*conditions).limit(1))).first() is not None

    async def lease_job(self, owner: str, lease_s: float) -> JobRecord | None:
        """Take the oldest QUEUED job: IN_PROGRESS, held by `owner` for `lease_s`; None if none is queued."""
        if not await self._any(jobs.c.status == "QUEUED"):
            return None
        pick = (
            sa.select(jobs.c.seq)
            .where(jobs.c.status == "QUEUED")
            .order_by(jobs.c.seq)
            .limit(1)
            .with_for_update(skip_locked=True)  # PostgreSQL; SQLite: BEGIN IMMEDIATE already serialises
        )
        async with transaction(self.engine, sqlite_immediate=True) as connection:
            seq = (await connection.execute(pick)).scalar_one_or_none()
            if seq is None:
                return None
            now = utcnow()
            statement = (
                sa.update(jobs)
                .where(jobs.c.seq == seq, jobs.c.status == "QUEUED")
                .values(
                    status="IN_PROGRESS",
                    lease_owner=owner,
                    lease_expires_at=now + timedelta(seconds=lease_s),
                    attempts=jobs.c.attempts + 1,
                    started_at=now,
                )
                .returning(*jobs.c)
            )
            row = (await connection.execute(statement)).one_or_none()
        return JobRecord.from_row(row) if row else None

    async def renew_lease(self, job_id: str, owner: str, lease_s: float) -> bool:
        """Extend the lease; False if `owner` no longer holds it (expired and requeued, or ended)."""
        statement = (
            sa.update(jobs)
            .where(jobs.c.id == job_id, jobs.c.lease_owner == owner, jobs.c.status == "IN_PROGRESS")
            .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
            .returning(jobs.c.id)
        )
        async with transaction(self.engine) as connection:
            return (await connection.execute(statement)).first() is not None

    async def append_job_log(self, job_id: str, owner: str, message: str, level: str = "INFO") -> bool:
        """Add a log line to a job `owner` runs; False if it no longer does."""
        async with transaction(self.engine, sqlite_immediate=True) as connection:
            return await self._append_log(connection, job_id, [log_line(message, level)], owner)

    async def _append_log(
        self, connection: AsyncConnection, job_id: str, lines: list[dict[str, str]], owner: str | None = None
    ) -> bool:
        query = sa.select(jobs.c.logs).where(jobs.c.id == job_id).with_for_update()
        if owner is not None:
            query = query.where(jobs.c.lease_owner == owner, jobs.c.status == "IN_PROGRESS")
        logs = (await connection.execute(query)).scalar_one_or_none()
        if logs is None:
            return False
        await connection.execute(sa.update(jobs).where(jobs.c.id == job_id).values(logs=[*logs, *lines]))
        return True

    async def finish_job(
        self,
        job_id: str,
        owner: str,
        status: Literal["COMPLETED", "FAILED"],
        *,
        result: Any = None,
        error: dict[str, Any] | None = None,
        inference_time: float | None = None,
        result_ttl_s: float = 3600,
        log: str | list[str] | None = None,
    ) -> bool:
        """End a job `owner` runs (with last log lines); False (nothing changed) if it no longer holds its lease."""
        lines = [log_line(line) for line in ([log] if isinstance(log, str) else log or [])]
        async with transaction(self.engine, sqlite_immediate=True) as connection:
            if lines and not await self._append_log(connection, job_id, lines, owner):
                return False
            now = utcnow()
            statement = (
                sa.update(jobs)
                .where(jobs.c.id == job_id, jobs.c.lease_owner == owner, jobs.c.status == "IN_PROGRESS")
                .values({**_ended(status, now, result_ttl_s), "result": result, "error": error, "inference_time": inference_time})
                .returning(jobs.c.id)
            )
            return (await connection.execute(statement)).first() is not None

    async def release_job(self, job_id: str, owner: str, reason: str) -> bool:
        """Put a job `owner` runs back in the queue at once (its runner is stopping gracefully); the
        run counts as an attempt. False if `owner` no longer holds it."""
        async with transaction(self.engine, sqlite_immediate=True) as connection:
            if not await self._append_log(connection, job_id, [log_line(reason, "WARN")], owner):
                return False
            statement = (
                sa.update(jobs)
                .where(jobs.c.id == job_id, jobs.c.lease_owner == owner, jobs.c.status == "IN_PROGRESS")
                .values(status="QUEUED", lease_owner=None, lease_expires_at=None)
            )
            await connection.execute(statement)
        return True

    async def cancel_job(self, job_id: str, key_id: str | None, result_ttl_s: float = 3600) -> CancelOutcome:
        """Cancel a QUEUED job of this key (it will never run); a started or ended one is not stopped."""
        error = {"status": 499, "message": "The request was cancelled before it started.",
                 "error_type": "client_cancelled"}  # fmt: skip
        async with transaction(self.engine, sqlite_immediate=True) as connection:
            statement = (
                _scoped(sa.update(jobs), job_id, key_id)
                .where(jobs.c.status == "QUEUED")
                .values({**_ended("CANCELLED", utcnow(), result_ttl_s), "error": error})
                .returning(jobs.c.id)
            )
            if (await connection.execute(statement)).first() is not None:
                await self._append_log(connection, job_id, [log_line("cancelled by the client")])
                return "CANCELLATION_REQUESTED"
            found = (await connection.execute(_scoped(sa.select(jobs.c.id), job_id, key_id))).first()
        return "ALREADY_COMPLETED" if found else "NOT_FOUND"

    async def requeue_expired(self, max_attempts: int, result_ttl_s: float = 3600) -> tuple[int, int]:
        """Jobs whose runner stopped renewing (its process died): QUEUED again while they have had
        fewer than `max_attempts` leases, else FAILED saying why. Returns (requeued, failed)."""
        requeued = failed = 0
        if not await self._any(jobs.c.status == "IN_PROGRESS", jobs.c.lease_expires_at < utcnow()):
            return 0, 0
        async with transaction(self.engine, sqlite_immediate=True) as connection:
            now = utcnow()
            query = (
                sa.select(jobs.c.id, jobs.c.attempts, jobs.c.lease_owner, jobs.c.logs)
                .where(jobs.c.status == "IN_PROGRESS", jobs.c.lease_expires_at < now)
                .order_by(jobs.c.seq)
                .limit(100)
                .with_for_update(skip_locked=True)
            )
            for job_id, attempts, owner, logs in (await connection.execute(query)).all():
                where = sa.update(jobs).where(jobs.c.id == job_id, jobs.c.status == "IN_PROGRESS")
                if attempts < max_attempts:
                    line = log_line(
                        f"the runner {owner} stopped (lease expired); queued again, attempt"
                        f" {attempts + 1} of {max_attempts}",
                        "WARN",
                    )
                    values = {"status": "QUEUED", "lease_owner": None, "lease_expires_at": None}
                    requeued += 1
                else:
                    message = (
                        f"The request was not finished: the runner running it stopped {attempts} time(s)"
                        f" (the last was {owner}), the most this gateway retries (gateway.fal.max_attempts)."
                    )
                    line = log_line(message, "ERROR")
                    values = {
                        **_ended("FAILED", now, result_ttl_s),
                        "error": {"status": 503, "message": message, "error_type": "runner_disconnected"},
                    }
                    failed += 1
                await connection.execute(where.values({**values, "logs": [*(logs or []), line]}))
        return requeued, failed

    async def expire_jobs(self, tombstone_s: float = 7 * 86400, now: datetime | None = None) -> tuple[int, int]:
        """Purge the bodies of jobs whose results have expired (they answer 410), and delete the rows
        `tombstone_s` after that (404). Jobs with a webhook still to deliver wait. Returns (purged, deleted)."""
        now = now or utcnow()
        deliverable = sa.or_(jobs.c.webhook_state.is_(None), jobs.c.webhook_state != "PENDING")
        purge = (
            sa.update(jobs)
            .where(jobs.c.result_expires_at <= now, jobs.c.expired.is_(sa.false()), deliverable)
            .values(expired=True, request=None, result=None, logs=[])
        )
        delete = sa.delete(jobs).where(
            jobs.c.result_expires_at <= now - timedelta(seconds=tombstone_s), jobs.c.expired.is_(sa.true())
        )
        async with transaction(self.engine) as connection:
            purged = (await connection.execute(purge)).rowcount
            deleted = (await connection.execute(delete)).rowcount
        return purged, deleted

    # -- webhook deliveries --------------------------------------------------------------------

    async def lease_webhooks(self, lease_s: float, limit: int = 10) -> list[JobRecord]:
        """Ended jobs whose webhook is due; each is pushed `lease_s` ahead so no other runner sends it meanwhile."""
        if not await self._any(jobs.c.webhook_state == "PENDING", jobs.c.webhook_next_at <= utcnow()):
            return []
        async with transaction(self.engine, sqlite_immediate=True) as connection:
            now = utcnow()
            query = (
                sa.select(jobs.c.seq)
                .where(jobs.c.webhook_state == "PENDING", jobs.c.webhook_next_at <= now)
                .order_by(jobs.c.webhook_next_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            seqs = list((await connection.execute(query)).scalars())
            if not seqs:
                return []
            statement = (
                sa.update(jobs)
                .where(jobs.c.seq.in_(seqs))
                .values(webhook_next_at=now + timedelta(seconds=lease_s), webhook_attempts=jobs.c.webhook_attempts + 1)
                .returning(*jobs.c)
            )
            return [JobRecord.from_row(row) for row in await connection.execute(statement)]

    async def webhook_done(self, job_id: str, *, delivered: bool, error: str | None = None,
                           retry_at: datetime | None = None) -> None:  # fmt: skip
        """Record a delivery try: delivered, or failed with a next try at `retry_at` (None: given up)."""
        if delivered:
            values: dict[str, Any] = {"webhook_state": "DELIVERED", "webhook_error": None, "webhook_next_at": None}
        else:
            state = "PENDING" if retry_at is not None else "FAILED"
            values = {"webhook_state": state, "webhook_error": (error or "")[:500], "webhook_next_at": retry_at}
        async with transaction(self.engine) as connection:
            await connection.execute(sa.update(jobs).where(jobs.c.id == job_id).values(values))


def _ended(status: str, now: datetime, result_ttl_s: float) -> dict[str, Any]:
    """The values of a job that ends now; a job with a webhook URL gets its delivery due at once."""
    return {
        "status": status,
        "finished_at": now,
        "lease_owner": None,
        "lease_expires_at": None,
        "request": None,
        "result_expires_at": now + timedelta(seconds=result_ttl_s),
        "webhook_state": sa.case((jobs.c.webhook_url.is_not(None), "PENDING"), else_=None),
        "webhook_next_at": sa.case((jobs.c.webhook_url.is_not(None), now), else_=None),
    }
