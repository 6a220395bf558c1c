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


def test_a_batch_that_is_not_full_waits_a_share_of_the_last_run_for_more():
    """Clients answered by one run come back a little apart; the next run waits for them, briefly."""
    runs: list[list[int]] = []

    async def execute(items: list[int]) -> list[int]:
        runs.append(list(items))
        await asyncio.sleep(0.2)
        return items

    async def scenario(ratio: float) -> None:
        coalescer = Coalescer(execute, max_items=4, fill_wait_ratio=ratio)
        await asyncio.gather(*(coalescer.run([i]) for i in range(4)))  # one full run: its duration is known

        async def late(i: int, delay: float) -> None:
            await asyncio.sleep(delay)
            await coalescer.run([i])

        await asyncio.gather(late(10, 0.0), late(11, 0.01), late(12, 0.02))

    asyncio.run(scenario(0.5))  # may wait up to 0.1 s: the stragglers join the first item's run
    assert runs == [[0, 1, 2, 3], [10, 11, 12]]

    runs.clear()
    asyncio.run(scenario(0.0))  # no fill wait: the first item runs alone
    assert runs == [[0, 1, 2, 3], [10], [11, 12]]


def test_a_full_batch_starts_without_a_fill_wait():
    arrived: list[int] = []
    seen_at_start: list[list[int]] = []

    async def execute(items: list[int]) -> list[int]:
        seen_at_start.append(list(arrived))
        await asyncio.sleep(0.2)
        return items

    async def send(coalescer: Coalescer, item: int, delay: float = 0.0) -> None:
        await asyncio.sleep(delay)
        arrived.append(item)
        await coalescer.run([item])

    async def scenario() -> None:
        coalescer = Coalescer(execute, max_items=2, fill_wait_ratio=0.5)  # a wait would last 0.1 s
        await asyncio.gather(send(coalescer, 0), send(coalescer, 1))
        await asyncio.gather(send(coalescer, 5), send(coalescer, 6), send(coalescer, 7, delay=0.05))

    asyncio.run(scenario())
    assert seen_at_start[1] == [0, 1, 5, 6], "the full batch [5, 6] started before item 7 arrived"
