"""Adaptive batching behind `@serve.batch`: no wait when the model is idle, natural batches when it is busy.

Serve's batch queue forms a batch as soon as its wait ends and then queues that batch behind the
one still running, so under load it splits arrivals into many small batches, and its fixed wait
taxes every request when the load is low. Here `@serve.batch` runs with no wait and several
batches may be handed over at once; `Coalescer` then merges everything that arrived while the
model was busy into the next model run, capped at `max_items`.

Clients that were answered by one run send their next requests a few milliseconds apart, so the
first of them would start a run alone and the others would wait a whole run behind it. Before a
run that is not full, the coalescer therefore waits for more items, at most `fill_wait_ratio` of
the previous run's duration: a bounded share of a slow model's run (a 2 s caption batch: ~100 ms
at the default 5 %) and next to nothing for a fast one, so low load pays no fixed wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

# `@serve.batch` may hand over this many batches at once; they are merged again below. Serve
# warns when max_batch_size * max_concurrent_batches exceeds max_ongoing_requests, which is
# only true of its own queue, not of the model runs here.
CONCURRENT_BATCHES = 64


class _QuietBatchWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "max_concurrent_batches" not in record.getMessage()


logging.getLogger("ray.serve").addFilter(_QuietBatchWarning())


class Coalescer:
    """Runs items on the model one run at a time, each run taking every item that waited for it."""

    def __init__(
        self, execute: Callable[[list[Any]], Awaitable[list[Any]]], max_items: int, fill_wait_ratio: float = 0.0
    ) -> None:
        self.execute = execute
        self.max_items = max_items
        self.fill_wait_ratio = fill_wait_ratio
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._wakeup = asyncio.Event()
        self._arrived = asyncio.Event()
        self._runner: asyncio.Task | None = None
        self._last_run_s = 0.0

    async def run(self, items: list[Any]) -> list[Any]:
        """Queue items for the next model run and wait for their results (exceptions are returned, not raised)."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._pending.extend(zip(items, futures))
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run_forever())
        self._wakeup.set()
        self._arrived.set()
        return list(await asyncio.gather(*futures))

    async def _run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                await self._fill(loop)
                taken, self._pending = self._pending[: self.max_items], self._pending[self.max_items :]
                started = loop.time()
                try:
                    results = await self.execute([item for item, _ in taken])
                except Exception as error:  # a broken run fails its own items, never the runner
                    results = [error] * len(taken)
                self._last_run_s = loop.time() - started
                for (_, future), result in zip(taken, results):
                    if not future.done():
                        future.set_result(result)

    async def _fill(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until a full batch is pending or `fill_wait_ratio` of the last run's duration has passed."""
        deadline = loop.time() + self.fill_wait_ratio * self._last_run_s
        while len(self._pending) < self.max_items:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return
