"""Batching by work: no wait when the model is idle, natural batches when it is busy, capped by items of work.

One queue: every call's items go to `Coalescer`, which runs the model one run at a time, each run
taking everything that arrived while the previous one was busy, up to `max_work` items of work
(one per image or text; see `serve.config.BatchConfig`). An item worth more than the cap on its
own runs alone (families split what they can split before queueing, see `VisionModel.split`).

A run has three stages (`RunStages`): `prepare` (CPU work: the processor turning images and texts
into tensors), `core` (the model) and `finish` (CPU work: decoding, parsing, normalising). Only
`core` holds the model: the next run is taken and prepared while the current one is in the model,
and a run is finished while the next one is in the model, so the model does not wait for the CPU
work around it. The next run is taken "just in time": when a full run's work is pending, or when
the current core run has as little time left (judged by the last run) as preparing takes, so that
it is as large as it can be and still ready when the model is free.

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
from dataclasses import dataclass
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


@dataclass
class RunStages:
    """The three stages of a model run, each an async callable (they put their work on threads).

    `prepare(items) -> state`, `core(state) -> state` (the only stage that uses the model; one
    at a time) and `finish(state) -> results` (one result or exception per item, in order). An
    exception raised by a stage fails every item of that run."""

    prepare: Callable[[list[Any]], Awaitable[Any]]
    core: Callable[[Any], Awaitable[Any]]
    finish: Callable[[Any], Awaitable[list[Any]]]


async def _same(value: Any) -> Any:
    return value


class Coalescer:
    """Runs items on the model one run at a time, each run taking every item that waited for it."""

    def __init__(
        self,
        execute: RunStages | Callable[[list[Any]], Awaitable[list[Any]]],
        max_work: int,
        fill_wait_ratio: float = 0.0,
    ) -> None:
        """`execute`: the run's stages, or one async callable doing all of it (run as the core)."""
        self.stages = execute if isinstance(execute, RunStages) else RunStages(_same, execute, _same)
        self.max_work = max_work
        self.fill_wait_ratio = fill_wait_ratio
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._wakeup: asyncio.Event | None = None
        self._arrived: asyncio.Event | None = None
        self._core_free: asyncio.Event | None = None
        self._runner: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_run_s = 0.0
        self._last_prepare_s = 0.0
        self._core_started = 0.0

    async def run(self, items: list[Any]) -> list[Any]:
        """Queue items for the next model runs and wait for their results (exceptions are returned, not raised)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # made on the loop that runs the model (the replica's), not where the model was
            # constructed; a new loop (a model used from several `asyncio.run`s) starts afresh
            self._loop, self._runner, self._pending, self._running = loop, None, [], set()
            self._wakeup, self._arrived, self._core_free = asyncio.Event(), asyncio.Event(), asyncio.Event()
            self._core_free.set()
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
                    state = await self.stages.prepare([item for item, _ in taken])
                except Exception as error:  # a broken run fails its own items, never the runner
                    _settle(taken, [error] * len(taken))
                    continue
                self._last_prepare_s = loop.time() - started
                await self._core_free.wait()
                self._core_free.clear()
                self._core_started = loop.time()
                task = loop.create_task(self._core_and_finish(taken, state))
                self._running.add(task)  # held: a task nobody references may be collected mid-run
                task.add_done_callback(self._running.discard)

    async def _core_and_finish(self, taken: list[tuple[Any, asyncio.Future]], state: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            try:
                state = await self.stages.core(state)
            finally:
                self._last_run_s = loop.time() - self._core_started
                self._core_free.set()
            results = await self.stages.finish(state)
        except Exception as error:
            results = [error] * len(taken)
        _settle(taken, results)

    async def _fill(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for more work before taking a run that is not full.

        The model busy: until the current run has about as long left as preparing the next takes
        (until it ends, while no run's duration is known yet). The model idle: at most
        `fill_wait_ratio` of the last run's duration."""
        busy = not self._core_free.is_set()
        if busy:
            known = self._last_run_s > 0
            deadline = self._core_started + self._last_run_s - self._last_prepare_s if known else None
        else:
            deadline = loop.time() + self.fill_wait_ratio * self._last_run_s
        while self._pending_work() < self.max_work:
            if busy and self._core_free.is_set():
                return
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return
            self._arrived.clear()
            waits = [asyncio.ensure_future(self._arrived.wait())]
            if busy:
                waits.append(asyncio.ensure_future(self._core_free.wait()))
            try:
                await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waits:
                    waiter.cancel()


def _settle(taken: list[tuple[Any, asyncio.Future]], results: list[Any]) -> None:
    if len(results) != len(taken):
        results = [RuntimeError(f"a run of {len(taken)} items gave {len(results)} results")] * len(taken)
    for (_, future), result in zip(taken, results):
        if not future.done():
            future.set_result(result)
