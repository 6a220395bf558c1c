"""Batching by work: no wait when the model is idle, natural batches when it is busy, capped by items of work.

One queue: every call's items go to `Coalescer`, which runs the model one run at a time, each run
taking everything that arrived while the previous one was busy, up to `max_work` items of work
(one per image or text; see `serve.config.BatchConfig`). An item worth more than the cap on its
own runs alone (families split what they can split before queueing, see `VisionModel.split`).

Clients that were answered by one run send their next requests a few milliseconds apart, so the
first of them would start a run alone and the others would wait a whole run behind it. Before a
run that is not full, the coalescer therefore waits for more items, at most `fill_wait_ratio` of
the previous run's duration: a bounded share of a slow model's run (a 2 s caption batch: ~100 ms
at the default 5 %) and next to nothing for a fast one, so low load pays no fixed wait.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any


def work_of(item: Any) -> int:
    """Items of work an item is worth: its `work` attribute, else 1."""
    return max(1, int(getattr(item, "work", 1)))


def take(pending: list[Any], max_work: int, work: Callable[[Any], int] = work_of) -> int:
    """How many items from the head of `pending` one run takes: as many as fit `max_work`, at least one."""
    total = 0
    for count, item in enumerate(pending):
        total += work(item)
        if total > max_work:
            return max(1, count)
    return len(pending)


def run_groups(items: list[Any], key: Callable[[Any], Hashable]) -> list[tuple[list[int], list[Any]]]:
    """Plan of one model run: items grouped by `key` in order of first arrival, as (indices, group)."""
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        groups[key(item)].append(index)
    return [(indices, [items[i] for i in indices]) for indices in groups.values()]


def scatter(size: int, planned: list[tuple[list[int], list[Any]]]) -> list[Any]:
    """Results of a run in item order: each group's outputs go back to its items' positions."""
    results: list[Any] = [None] * size
    filled = 0
    for indices, outputs in planned:
        if len(outputs) != len(indices):
            raise RuntimeError(f"a group of {len(indices)} items gave {len(outputs)} results")
        for i, output in zip(indices, outputs):
            results[i] = output
            filled += 1
    if filled != size:
        raise RuntimeError(f"{size - filled} items of a run were in no group")
    return results


class Coalescer:
    """Runs items on the model one run at a time, each run taking every item that waited for it."""

    def __init__(
        self, execute: Callable[[list[Any]], Awaitable[list[Any]]], max_work: int, fill_wait_ratio: float = 0.0
    ) -> None:
        self.execute = execute
        self.max_work = max_work
        self.fill_wait_ratio = fill_wait_ratio
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._wakeup: asyncio.Event | None = None
        self._arrived: asyncio.Event | None = None
        self._runner: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_run_s = 0.0

    async def run(self, items: list[Any]) -> list[Any]:
        """Queue items for the next model runs and wait for their results (exceptions are returned, not raised)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # made on the loop that runs the model (the replica's), not where the model was
            # constructed; a new loop (a model used from several `asyncio.run`s) starts afresh
            self._loop, self._runner, self._pending = loop, None, []
            self._wakeup, self._arrived = asyncio.Event(), asyncio.Event()
        futures = [loop.create_future() for _ in items]
        self._pending.extend(zip(items, futures))
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run_forever())
        self._wakeup.set()
        self._arrived.set()
        return list(await asyncio.gather(*futures))

    def _pending_work(self) -> int:
        return sum(work_of(item) for item, _ in self._pending)

    async def _run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                await self._fill(loop)
                count = take([item for item, _ in self._pending], self.max_work)
                taken, self._pending = self._pending[:count], self._pending[count:]
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
        """Wait until a full run's work is pending or `fill_wait_ratio` of the last run's duration has passed."""
        deadline = loop.time() + self.fill_wait_ratio * self._last_run_s
        while self._pending_work() < self.max_work:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return
