"""The fal queue's job runner: one per ingress replica, leasing jobs from the store.

Every ingress replica runs one (`Gateway.__init__` starts it, `__del__` closes it), so jobs run
wherever there is an ingress, and as many at once as `gateway.fal.runner_concurrency` per replica.
A job runs through `GatewayService.vision_task` with a `CallerContext` of the key that submitted it,
like the HTTP request it stands for: the same admission (allowed models, budget), batching, usage row
(under the job's request id; a rerun's under `{id}.{attempt}`) and
cold-start wait (a model at zero replicas is woken and waited for with no client connection open).

Safety comes from the store (serve/store/jobs.py): a job is leased by one runner, which renews the
lease while the job runs and can only end it while it holds it. If the process dies, the lease runs
out and any runner's upkeep puts the job back in the queue (or fails it after
`gateway.fal.max_attempts` runs). The same upkeep expires old results and delivers webhooks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from datetime import timedelta
from typing import Any

from pydantic import ValidationError

from serve.accounts import Caller, unauthorized
from serve.context import CallerContext
from serve.errors import APIError
from serve.fal import webhooks
from serve.fal.errors import fal_error, fal_validation_error
from serve.fal.settings import FalQueueConfig
from serve.netguard import HostPolicy
from serve.protocol import VisionTaskRequest
from serve.store import JobRecord, Store, StoreError
from serve.store.records import utcnow

logger = logging.getLogger("gigarouter.fal.runner")

UPKEEP_S = 1.0
EXPIRE_EVERY_S = 60.0
WATCH_S = 1.0  # how often a running job's model state is read (for its "running" log line)


def error_record(error: APIError | ValidationError, request_id: str) -> dict[str, Any]:
    """How a failed job keeps its error: the status and fal-shaped body its result answers with."""
    if isinstance(error, ValidationError):
        errors = error.errors(include_url=False, include_input=False, include_context=False)
        response = fal_validation_error(errors, None, request_id)
        message = "the request body is not valid"
    else:
        response = fal_error(error, request_id)
        message = error.message
    parsed = json.loads(response.body)
    return {
        "status": response.status_code,
        "message": message,
        "error_type": parsed.get("error_type") if isinstance(parsed, dict) else None,
        "body": parsed,
    }


class JobRunner:
    def __init__(self, service: Any, store: Store, config: FalQueueConfig, policy: HostPolicy) -> None:
        self.service = service  # GatewayService
        self.store = store
        self.config = config
        self.policy = policy
        # who holds a lease: the process (a test kills it by this pid) and a unique part
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._slots = asyncio.Semaphore(config.runner_concurrency)
        self._wake = asyncio.Event()
        self._running: dict[str, asyncio.Task] = {}
        self._tasks: list[asyncio.Task] = []
        self._deliveries: set[asyncio.Task] = set()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._lease_forever()), loop.create_task(self._upkeep_forever())]

    def wake(self) -> None:
        """A job was just submitted here: look now rather than at the next poll."""
        self._wake.set()

    async def close(self) -> None:
        """Stop leasing; jobs still running are stopped and put back in the queue for another runner."""
        running = list(self._running)
        tasks = [*self._tasks, *self._running.values(), *self._deliveries]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for job_id in running:  # back in the queue now rather than when the lease runs out
            try:
                await self.store.release_job(job_id, self.owner, f"the runner {self.owner} stopped; queued again")
            except StoreError as error:
                logger.warning("could not release job %s (its lease will expire): %s", job_id, error)

    # ----- leasing -----

    async def _lease_forever(self) -> None:
        while True:
            await self._slots.acquire()
            job = None
            try:
                job = await self.store.lease_job(self.owner, self.config.lease_s)
            except StoreError as error:
                logger.warning("could not lease a job: %s", error)
            except Exception:
                logger.exception("could not lease a job")
            if job is None:
                self._slots.release()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.config.poll_s)
                except TimeoutError:
                    pass
                self._wake.clear()
                continue
            task = asyncio.get_running_loop().create_task(self._run(job))
            self._running[job.id] = task
            task.add_done_callback(lambda _, job_id=job.id: (self._running.pop(job_id, None), self._slots.release()))

    async def _caller(self, key_id: str | None) -> Caller | None:
        """The key's permissions now (a key revoked since the submit is refused)."""
        if key_id is None:
            return None
        record = await self.store.get_key(key_id)
        if record is None:
            return Caller(key_id=key_id)  # a bootstrap key of gateway.auth: every model, no budget
        refusal = record.refusal()
        if refusal is not None:
            raise unauthorized(refusal, "api_key_revoked" if record.revoked_at else "api_key_expired")
        models = frozenset(record.models) if record.models is not None else None
        return Caller(record.id, models, record.budget_usd, record.rate_limit)

    async def _run(self, job: JobRecord) -> None:
        loop = asyncio.get_running_loop()
        keeper = loop.create_task(self._keep_lease(job))  # first: reading the model's state can take seconds
        watch: asyncio.Task | None = None
        started = time.perf_counter()
        status, result, error, log = "FAILED", None, None, None
        try:
            state = {"waiting": not await self._model_up(job.model)}
            first = "waiting for the model to start" if state["waiting"] else "running"
            await self._log(job.id, f"{first} (attempt {job.attempts}, runner {self.owner})")
            if state["waiting"]:
                watch = loop.create_task(self._watch_start(job, state))
            # one usage row per run that reached the model: the first under the job's id, a rerun's
            # under `{id}.{attempt}` (a row of an interrupted run must not swallow the rerun's)
            usage_id = job.id if job.attempts == 1 else f"{job.id}.{job.attempts}"
            context = CallerContext(request_id=usage_id, key_id=job.key_id, caller=await self._caller(job.key_id))
            request = VisionTaskRequest.model_validate(job.request)
            served = await self.service.vision_task(job.model, job.task, request, context)
            status, result, log = "COMPLETED", served.body.model_dump(exclude_none=True), ["done"]
            if state["waiting"]:  # it came up between two looks of the watcher
                log.insert(0, "the model is up; running")
        except (APIError, ValidationError) as failure:
            error = error_record(failure, job.id)
            log = f"failed: {error['message']}"
        except StoreError as failure:
            error = error_record(APIError(503, f"the gateway's database is unavailable: {failure}"), job.id)
            log = "failed: the database is unavailable"
        except Exception:
            logger.exception("job %s failed", job.id)
            error = error_record(APIError(500, "The server failed to run the request.", type="server_error"), job.id)
            log = "failed: internal error"
        finally:
            keeper.cancel()
            if watch is not None:
                watch.cancel()
        try:
            ended = await self.store.finish_job(
                job.id, self.owner, status, result=result, error=error, inference_time=time.perf_counter() - started,
                result_ttl_s=self.config.result_ttl_s, log=log,
            )  # fmt: skip
            if not ended:
                logger.warning("job %s ended here but its lease was lost: another runner has it", job.id)
        except StoreError as failure:
            logger.warning("could not record the end of job %s (its lease will expire): %s", job.id, failure)

    async def _model_up(self, model: str) -> bool:
        try:
            replicas, _, _ = await self.service.control.states.describe(model)
            return replicas >= 1
        except Exception:
            return True

    async def _log(self, job_id: str, message: str, level: str = "INFO") -> None:
        try:
            await self.store.append_job_log(job_id, self.owner, message, level)
        except StoreError as error:
            logger.warning("could not log to job %s: %s", job_id, error)

    async def _keep_lease(self, job: JobRecord) -> None:
        """Renew the lease every third of it while the job runs. Nothing else is awaited here: a renewal
        that waited for a read of the model's state (seconds while a replica starts on a busy host) could
        come after the lease ran out, and the job would run twice."""
        while True:
            await asyncio.sleep(self.config.lease_s / 3)
            try:
                if not await self.store.renew_lease(job.id, self.owner, self.config.lease_s):
                    logger.warning("lost the lease of job %s", job.id)
                    return
            except StoreError as error:
                logger.warning("could not renew the lease of job %s: %s", job.id, error)

    async def _watch_start(self, job: JobRecord, state: dict[str, bool]) -> None:
        """While the job waits for its model, log when the model is up (and clear `state["waiting"]`)."""
        while state["waiting"]:
            await asyncio.sleep(WATCH_S)
            if state["waiting"] and await self._model_up(job.model):
                await self._log(job.id, "the model is up; running")
                state["waiting"] = False  # after the line is written: a run that ends first adds it itself

    # ----- upkeep: orphaned jobs, expired results, webhooks -----

    async def _upkeep_forever(self) -> None:
        expired_at = 0.0
        while True:
            try:
                requeued, failed = await self.store.requeue_expired(self.config.max_attempts, self.config.result_ttl_s)
                if requeued or failed:
                    logger.warning("jobs whose runner died: %d queued again, %d failed", requeued, failed)
                    self.wake()
                if time.monotonic() - expired_at > EXPIRE_EVERY_S:
                    await self.store.expire_jobs(self.config.tombstone_s)
                    expired_at = time.monotonic()
                if len(self._deliveries) < self.config.runner_concurrency:
                    lease_s = 2 * self.config.webhook_timeout_s + 5
                    for job in await self.store.lease_webhooks(lease_s, self.config.runner_concurrency):
                        task = asyncio.get_running_loop().create_task(self._deliver(job))
                        self._deliveries.add(task)
                        task.add_done_callback(self._deliveries.discard)
            except StoreError as error:
                logger.warning("job upkeep: %s", error)
            except Exception:
                logger.exception("job upkeep failed")
            await asyncio.sleep(UPKEEP_S)

    async def _deliver(self, job: JobRecord) -> None:
        secret = self.config.webhook_secret()
        error = None
        try:
            if secret is None:
                raise webhooks.WebhookRefused(f"no webhook secret: ${self.config.webhook_secret_env} is not set")
            body = webhooks.payload(job)
            headers = webhooks.signed_headers(secret, job.id, body)
            assert job.webhook_url is not None
            await webhooks.deliver(job.webhook_url, body, headers, self.policy, self.config.webhook_timeout_s)
        except (webhooks.DeliveryFailed, webhooks.WebhookRefused) as failure:
            error = str(failure)
        except Exception as failure:
            logger.exception("webhook of job %s", job.id)
            error = f"{type(failure).__name__}: {failure}"
        retry_at = None
        if error is not None and job.webhook_attempts < self.config.webhook_max_attempts:
            wait = min(self.config.webhook_backoff_s * 2 ** (job.webhook_attempts - 1), self.config.webhook_backoff_max_s)
            retry_at = utcnow() + timedelta(seconds=wait)
        if error is not None:
            logger.info("webhook of job %s failed (try %d): %s", job.id, job.webhook_attempts, error)
        try:
            await self.store.webhook_done(job.id, delivered=error is None, error=error, retry_at=retry_at)
        except StoreError as failure:
            logger.warning("could not record the webhook of job %s: %s", job.id, failure)
