"""The coalescer behind @serve.batch: one model run at a time, each taking everything that queued meanwhile."""

from __future__ import annotations

import asyncio

from deployments.batching import Coalescer


def test_items_that_wait_while_the_model_runs_share_the_next_run():
    runs: list[list[int]] = []

    async def execute(items: list[int]) -> list[int]:
        runs.append(list(items))
        await asyncio.sleep(0.05)
        return [item * 10 for item in items]

    async def scenario() -> list[list[int]]:
        coalescer = Coalescer(execute, max_items=8)
        first = asyncio.create_task(coalescer.run([0]))
        await asyncio.sleep(0.01)  # the model is now busy with [0]
        rest = [asyncio.create_task(coalescer.run([i])) for i in range(1, 6)]
        return [await first] + [await task for task in rest]

    results = asyncio.run(scenario())
    assert results == [[0], [10], [20], [30], [40], [50]]
    assert runs == [[0], [1, 2, 3, 4, 5]]


def test_runs_are_capped_and_failures_stay_in_their_run():
    runs: list[list[int]] = []

    async def execute(items: list[int]) -> list[int]:
        runs.append(list(items))
        await asyncio.sleep(0)
        if 3 in items:
            raise ValueError("bad run")
        return items

    async def scenario():
        coalescer = Coalescer(execute, max_items=2)
        return await asyncio.gather(*(coalescer.run([i]) for i in range(5)))

    results = asyncio.run(scenario())
    assert runs == [[0, 1], [2, 3], [4]]
    assert results[0] == [0] and results[4] == [4]
    assert isinstance(results[3][0], ValueError) and isinstance(results[2][0], ValueError)
