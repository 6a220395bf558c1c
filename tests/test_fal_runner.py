"""The fal queue's job runner (serve/fal/runner.py) on a real SQLite store, without Ray.

The runner is given a stand-in for the gateway service: a model that takes seconds to start and whose
state takes seconds to read, as when a replica loads on a busy 2-core host. The lease is the shortest
allowed (1 s), so a renewal that waited for a state read would come after the lease ran out, and the
store would queue the job again (attempt 2) while the first run goes on.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from pydantic import BaseModel

from serve.fal.runner import JobRunner
from serve.fal.settings import FalQueueConfig
from serve.netguard import HostPolicy
from serve.store import Store

READ_S = 2.5  # one read of the model's state: longer than the whole lease
START_S = 4.0  # the model is up this long after the job was leased


class Caption(BaseModel):
    results: str


class SlowStates:
    """Answers `describe` like serve.control's reader, READ_S after being asked."""

    def __init__(self) -> None:
        self.up = asyncio.Event()
        self.reads = 0

    async def describe(self, deployment: str, fresh: bool = True, max_age_s: float | None = None):
        self.reads += 1
        await asyncio.sleep(READ_S)
        return (1, "ready", None) if self.up.is_set() else (0, "starting", "the replica is loading")


class StartingModel:
    """Stands in for GatewayService: `vision_task` answers once the model is up, START_S after the first call."""

    def __init__(self) -> None:
        self.control = SimpleNamespace(states=SlowStates())
        self.calls = 0

    async def vision_task(self, model, task, request, context):
        self.calls += 1
        await asyncio.sleep(START_S)
        self.control.states.up.set()
        await asyncio.sleep(2 * READ_S)  # the run itself, long enough for the watcher to see the model up
        return SimpleNamespace(body=Caption(results=f"a caption from {model} for {request.image_url[:10]}"))


def test_a_job_waiting_for_a_slow_starting_model_keeps_its_lease(tmp_path):
    async def scenario():
        async with Store(f"sqlite+aiosqlite:///{tmp_path}/state.sqlite3") as store:
            await store.migrate()
            service = StartingModel()
            config = FalQueueConfig(lease_s=1, poll_s=0.1, runner_concurrency=1)
            runner = JobRunner(service, store, config, HostPolicy())
            runner.start()
            try:
                job = await store.submit_job("fal-ai/blip/caption", "blip", "caption", None, {"image_url": "data:x"})
                runner.wake()
                requeued = 0
                for _ in range(300):  # 30 s at most; another runner's upkeep, run often
                    requeued += sum(await store.requeue_expired(config.max_attempts, config.result_ttl_s))
                    record = await store.get_job(job.id, None)
                    if record.status not in ("QUEUED", "IN_PROGRESS"):
                        break
                    await asyncio.sleep(0.1)
            finally:
                await runner.close()
            assert record.status == "COMPLETED", record
            assert requeued == 0 and record.attempts == 1 and service.calls == 1, (requeued, record.logs)
            messages = [line["message"] for line in record.logs]
            assert messages[0].startswith("waiting for the model to start (attempt 1"), messages
            assert "the model is up; running" in messages and messages[-1] == "done", messages
            assert record.result == {"results": "a caption from blip for data:x"}
            assert service.control.states.reads >= 2, "the start was watched"

    asyncio.run(scenario())
