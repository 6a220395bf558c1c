"""The fal queue's jobs in the store (serve/store/jobs.py), on SQLite and on a real PostgreSQL server.

Leases are raced by several `Store`s at once (as ingress replicas do), expired leases are made by
moving the clock of the row, not by mocking time.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
import sqlalchemy as sa

from serve.store import Store
from serve.store import migrate as migrations
from serve.store.records import utcnow
from serve.store.schema import jobs


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/state/gigarouter.sqlite3"
    return request.getfixturevalue("fresh_postgres_url")


def run(coroutine):
    return asyncio.run(coroutine)


async def migrated(url: str) -> Store:
    store = Store(url)
    await store.migrate()
    return store


async def submit(store: Store, model: str = "florence-2-large", key: str | None = "key_a", **kw):
    return await store.submit_job(f"fal-ai/{model}/caption", model, "caption", key, {"image_url": "data:x"}, **kw)


async def set_columns(store: Store, job_id: str, **values) -> None:
    async with store.engine.begin() as connection:
        await connection.execute(sa.update(jobs).where(jobs.c.id == job_id).values(**values))


def test_the_jobs_migration_goes_up_and_down(url):
    async def scenario():
        async with Store(url) as store:
            assert await migrations.upgrade(store.engine, "0001") == "0001"
            assert await migrations.upgrade(store.engine) == "0002"
            job = await submit(store)
            assert (await store.get_job(job.id, "key_a")).status == "QUEUED"
            assert await migrations.downgrade(store.engine, "0001") == "0001"
            async with store.engine.connect() as connection:
                names = await connection.run_sync(lambda sync: sa.inspect(sync).get_table_names())
            assert "jobs" not in names and "api_keys" in names
            assert await store.migrate() == "0002"
            assert await store.get_job(job.id, "key_a") is None

    run(scenario())


def test_submit_get_scoped_to_the_key_and_real_queue_positions(url):
    async def scenario():
        async with await migrated(url) as store:
            first, other_model, second, third = (
                await submit(store), await submit(store, "blip"), await submit(store), await submit(store, key=None)
            )
            assert first.status == "QUEUED" and first.attempts == 0 and first.logs == []
            assert await store.get_job(first.id, "key_b") is None, "someone else's request id"
            assert await store.get_job(first.id, None) is None
            assert (await store.get_job(third.id, None)).id == third.id
            assert [await store.queue_position(j) for j in (first, second, third, other_model)] == [0, 1, 2, 0]
            assert await store.cancel_job(first.id, "key_a") == "CANCELLATION_REQUESTED"
            assert await store.queue_position(second) == 0, "a cancelled job is not ahead any more"

    run(scenario())


def test_leases_renewals_logs_and_the_end_of_a_job(url):
    async def scenario():
        async with await migrated(url) as store:
            job = await submit(store, webhook_url="https://example.com/hook")
            leased = await store.lease_job("runner-1", lease_s=30)
            assert (leased.id, leased.status, leased.attempts, leased.lease_owner) == (job.id, "IN_PROGRESS", 1, "runner-1")
            assert await store.lease_job("runner-2", lease_s=30) is None
            assert await store.renew_lease(job.id, "runner-1", 30)
            assert not await store.renew_lease(job.id, "runner-2", 30)
            assert await store.append_job_log(job.id, "runner-1", "running")
            assert not await store.append_job_log(job.id, "runner-2", "not mine")
            assert await store.cancel_job(job.id, "key_a") == "ALREADY_COMPLETED", "a running job is not stopped"
            assert not await store.finish_job(job.id, "runner-2", "COMPLETED", result={"x": 1})
            assert await store.finish_job(job.id, "runner-1", "COMPLETED", result={"results": "a cat"},
                                          inference_time=0.25, result_ttl_s=60, log="done")  # fmt: skip
            done = await store.get_job(job.id, "key_a")
            assert (done.status, done.result, done.request, done.lease_owner) == ("COMPLETED", {"results": "a cat"}, None, None)
            assert [line["message"] for line in done.logs] == ["running", "done"]
            assert done.webhook_state == "PENDING" and done.webhook_next_at is not None
            assert timedelta(seconds=59) < done.result_expires_at - done.finished_at <= timedelta(seconds=61)
            assert not await store.finish_job(job.id, "runner-1", "FAILED", error={}), "ended once"
            assert await store.cancel_job(job.id, "key_a") == "ALREADY_COMPLETED"
            assert await store.cancel_job(job.id, "key_b") == "NOT_FOUND"
            assert await store.cancel_job("no-such-id", "key_a") == "NOT_FOUND"

    run(scenario())


def test_concurrent_runners_never_lease_the_same_job(url):
    async def scenario():
        stores = [await migrated(url) for _ in range(4)]
        try:
            submitted = {(await submit(stores[0])).id for _ in range(30)}

            async def runner(store: Store, name: str) -> list[str]:
                taken = []
                while (job := await store.lease_job(name, lease_s=30)) is not None:
                    taken.append(job.id)
                return taken

            taken = await asyncio.gather(*(runner(s, f"runner-{i}-{j}") for i, s in enumerate(stores) for j in range(3)))
            flat = [job_id for part in taken for job_id in part]
            assert sorted(flat) == sorted(submitted), "every job leased exactly once"
            async with stores[0].engine.connect() as connection:
                attempts = (await connection.execute(sa.select(sa.func.max(jobs.c.attempts)))).scalar_one()
            assert attempts == 1
        finally:
            for store in stores:
                await store.close()

    run(scenario())


def test_an_expired_lease_is_run_again_then_failed_with_a_reason(url):
    async def scenario():
        async with await migrated(url) as store:
            job = await submit(store)
            past = utcnow() - timedelta(seconds=1)
            for attempt in (1, 2):
                leased = await store.lease_job(f"dead-{attempt}", lease_s=30)
                assert leased.id == job.id and leased.attempts == attempt
                assert await store.requeue_expired(max_attempts=2) == (0, 0), "a live lease is left alone"
                await set_columns(store, job.id, lease_expires_at=past)
                expected = (1, 0) if attempt == 1 else (0, 1)
                assert await store.requeue_expired(max_attempts=2) == expected
                assert not await store.finish_job(job.id, f"dead-{attempt}", "COMPLETED", result={}), "lost its lease"
            failed = await store.get_job(job.id, "key_a")
            assert failed.status == "FAILED" and failed.error["error_type"] == "runner_disconnected"
            assert "stopped 2 time(s)" in failed.error["message"] and "dead-2" in failed.error["message"]
            assert "queued again, attempt 2 of 2" in failed.logs[0]["message"]

    run(scenario())


def test_results_expire_to_a_tombstone_then_go(url):
    async def scenario():
        async with await migrated(url) as store:
            job = await submit(store)
            hooked = await submit(store, webhook_url="https://example.com/hook")
            for _ in range(2):
                leased = await store.lease_job("runner", 30)
                await store.finish_job(leased.id, "runner", "COMPLETED", result={"big": "x" * 1000}, result_ttl_s=0)
            assert await store.expire_jobs(tombstone_s=3600) == (1, 0), "a webhook still to send keeps its job"
            gone = await store.get_job(job.id, "key_a")
            assert gone.expired and gone.result is None and gone.status == "COMPLETED"
            await store.webhook_done(hooked.id, delivered=True)
            assert await store.expire_jobs(tombstone_s=3600) == (1, 0)
            later = utcnow() + timedelta(seconds=3601)
            assert await store.expire_jobs(tombstone_s=3600, now=later) == (0, 2)
            assert await store.get_job(job.id, "key_a") is None

    run(scenario())


def test_webhook_deliveries_are_leased_retried_and_recorded(url):
    async def scenario():
        stores = [await migrated(url), await migrated(url)]
        try:
            job = await submit(stores[0], webhook_url="https://example.com/hook")
            leased = await stores[0].lease_job("runner", 30)
            await stores[0].cancel_job(job.id, "key_a")  # running: refused, the webhook is not due yet
            assert await stores[0].lease_webhooks(lease_s=30) == []
            await stores[0].finish_job(leased.id, "runner", "FAILED", error={"status": 422, "message": "bad"})
            first, second = await asyncio.gather(*(s.lease_webhooks(lease_s=30) for s in stores))
            assert len(first) + len(second) == 1, "one runner delivers it"
            (due,) = first or second
            assert due.webhook_attempts == 1 and due.error["status"] == 422
            await stores[0].webhook_done(job.id, delivered=False, error="HTTP 500", retry_at=utcnow())
            (again,) = await stores[1].lease_webhooks(lease_s=30)
            assert again.webhook_attempts == 2 and again.webhook_error == "HTTP 500"
            await stores[1].webhook_done(job.id, delivered=False, error="HTTP 500", retry_at=None)
            assert (await stores[0].get_job(job.id, "key_a")).webhook_state == "FAILED"
            assert await stores[0].lease_webhooks(lease_s=30) == []
        finally:
            for store in stores:
                await store.close()

    run(scenario())


def test_a_gracefully_stopped_runner_puts_its_job_back_at_once(url):
    async def scenario():
        async with await migrated(url) as store:
            job = await submit(store)
            await store.lease_job("stopping", 30)
            assert not await store.release_job(job.id, "someone-else", "no")
            assert await store.release_job(job.id, "stopping", "the runner stopping stopped; queued again")
            back = await store.get_job(job.id, "key_a")
            assert (back.status, back.lease_owner, back.attempts) == ("QUEUED", None, 1)
            assert back.logs[-1]["level"] == "WARN"
            assert (await store.lease_job("next", 30)).attempts == 2

    run(scenario())


def test_a_caller_cancelled_mid_transaction_leaves_the_database_writable(url):
    """Cancelled callers (a client gone, a runner stopping its lease watcher) are common. Without
    `finish_when_cancelled` a task cancelled inside a transaction left SQLite's write lock held by a
    pooled connection, and every other writer failed "database is locked" from then on."""

    async def scenario():
        async with await migrated(url) as store, Store(url, sqlite_busy_timeout_s=2) as other:
            job = await submit(store)
            await store.lease_job("runner", 60)

            async def log_forever():
                while True:
                    await store.append_job_log(job.id, "runner", "a line")

            cancelled_inside = 0
            for trial in range(60):
                task = asyncio.get_running_loop().create_task(log_forever())
                await asyncio.sleep(0.001 * (trial % 7))
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task  # the caller still sees its cancellation
                cancelled_inside += task.cancelled()
                # another connection, as another ingress replica: it can write at once
                assert await other.record_interest("florence-2-large") == trial + 1
                assert await other.append_job_log(job.id, "runner", f"other {trial}")
            assert cancelled_inside == 60
            lines = (await other.get_job(job.id, "key_a")).logs
            assert sum(line["message"].startswith("other ") for line in lines) == 60

    run(scenario())
