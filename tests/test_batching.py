"""Batching by work: one model run at a time, each taking what queued meanwhile up to a work budget; results mapped back."""

from __future__ import annotations

import asyncio

import pytest

from deployments.batching import Coalescer, RunStages, run_groups, scatter, take


def test_items_that_wait_while_the_model_runs_share_the_next_run():
    runs: list[list[int]] = []

    async def execute(items: list[int]) -> list[int]:
        runs.append(list(items))
        await asyncio.sleep(0.05)
        return [item * 10 for item in items]

    async def scenario() -> list[list[int]]:
        coalescer = Coalescer(execute, max_work=8)
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
        coalescer = Coalescer(execute, max_work=2)
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
        coalescer = Coalescer(execute, max_work=4, fill_wait_ratio=ratio)
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


def test_clients_arriving_after_a_lone_request_still_fill_whole_batches():
    """Eight closed-loop clients that start after a lone request (a warm-up, a quiet hour) must
    settle into runs of eight. A rule that skipped the fill wait after a run of one item (to spare a
    lone streamed caption its wait) started the burst's first item alone, and the groups then
    alternated as 1 and 7 for good: each returned while the other ran and was taken just in time.
    It cost BLIP at concurrency 8 10-17 % of its throughput (2026-12-01)."""
    sizes: list[int] = []

    async def execute(items: list[int]) -> list[int]:
        sizes.append(len(items))
        await asyncio.sleep(0.02 + 0.01 * len(items))  # a run grows with its batch
        return items

    async def scenario() -> None:
        coalescer = Coalescer(execute, max_work=8, fill_wait_ratio=0.5)
        await coalescer.run([0])  # the lone request

        async def client(i: int) -> None:
            await asyncio.sleep(0.001 * i)
            for _ in range(6):
                await coalescer.run([i])
                await asyncio.sleep(0.005)  # the round trip before the next request

        await asyncio.gather(*(client(i) for i in range(8)))

    asyncio.run(scenario())
    assert sizes[0] == 1
    # after at most one run to gather the burst, every run is full
    assert sizes[-4:] == [8, 8, 8, 8], sizes


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
        coalescer = Coalescer(execute, max_work=2, fill_wait_ratio=0.5)  # a wait would last 0.1 s
        await asyncio.gather(send(coalescer, 0), send(coalescer, 1))
        await asyncio.gather(send(coalescer, 5), send(coalescer, 6), send(coalescer, 7, delay=0.05))

    asyncio.run(scenario())
    assert seen_at_start[1] == [0, 1, 5, 6], "the full batch [5, 6] started before item 7 arrived"


# ----- budgets count work, not requests -----


class Work:
    def __init__(self, name: str, work: int) -> None:
        self.name, self.work = name, work

    def __repr__(self) -> str:
        return self.name


def test_take_fills_a_run_up_to_the_work_budget_and_never_takes_nothing():
    items = [Work("a", 3), Work("b", 4), Work("c", 2), Work("d", 1)]
    assert take(items, 8) == 2  # 3 + 4 fit, + 2 would be 9
    assert take(items, 9) == 3
    assert take(items, 100) == 4
    assert take([Work("huge", 50), Work("b", 1)], 8) == 1  # an item over the budget runs alone
    assert take([], 8) == 0


def test_runs_are_capped_by_work_not_by_count():
    runs: list[list[str]] = []

    async def execute(items):
        runs.append([item.name for item in items])
        await asyncio.sleep(0.02)
        return [item.name.upper() for item in items]

    async def scenario():
        coalescer = Coalescer(execute, max_work=10)
        first = asyncio.create_task(coalescer.run([Work("warm", 1)]))
        await asyncio.sleep(0.005)  # busy: the rest queues behind it
        rest = asyncio.gather(*(coalescer.run([Work(n, w)]) for n, w in (("a", 6), ("b", 6), ("c", 3), ("d", 1))))
        return await first, await rest

    first, rest = asyncio.run(scenario())
    assert first == ["WARM"] and rest == [["A"], ["B"], ["C"], ["D"]]
    assert runs == [["warm"], ["a"], ["b", "c", "d"]]


def test_run_groups_and_scatter_give_each_item_its_own_result():
    items = ["cat:1", "dog:2", "cat:3", "bird:4", "dog:5"]
    planned = run_groups(items, key=lambda item: item.split(":")[0])
    assert [indices for indices, _ in planned] == [[0, 2], [1, 4], [3]]
    # each group's "model" answers with its own items reversed in case, in order
    outputs = [(indices, [item.upper() for item in group]) for indices, group in planned]
    assert scatter(len(items), outputs) == [item.upper() for item in items]


def test_scatter_refuses_a_group_that_lost_or_gained_results():
    planned = run_groups(["a", "b", "a"], key=lambda item: item)
    with pytest.raises(RuntimeError, match="2 items gave 1 results"):
        scatter(3, [(planned[0][0], ["A"]), (planned[1][0], ["B"])])


# ----- the stages: the next run is prepared, and the last one finished, while the model runs -----


def test_the_next_run_is_prepared_and_the_last_finished_while_the_model_runs():
    """Each stage waits for a sign that only overlapping stages can give: run 1's model call ends
    only once run 2 is being prepared, and run 1 is finished only once run 2 is in the model. Run
    one after another, the stages would never see those signs (bounded by a timeout)."""
    log: list[str] = []
    second_prepared = asyncio.Event()
    second_in_core = asyncio.Event()

    async def prepare(items: list[int]) -> list[int]:
        log.append(f"prepare {items}")
        if items[0] == 2:
            second_prepared.set()
        return items

    async def core(items: list[int]) -> list[int]:
        log.append(f"core {items}")
        if items[0] == 1:
            await asyncio.wait_for(second_prepared.wait(), 5)
        else:
            second_in_core.set()
        return items

    async def finish(items: list[int]) -> list[int]:
        if items[0] == 1:
            await asyncio.wait_for(second_in_core.wait(), 5)
        log.append(f"finish {items}")
        return [item * 10 for item in items]

    async def scenario():
        coalescer = Coalescer(RunStages(prepare, core, finish), max_work=1)
        return await asyncio.gather(coalescer.run([1]), coalescer.run([2]))

    assert asyncio.run(scenario()) == [[10], [20]]
    assert log.index("prepare [2]") < log.index("finish [1]")
    assert log.index("core [2]") < log.index("finish [1]")


def test_only_one_run_is_in_the_model_at_a_time():
    inside = 0
    most = 0

    async def core(items: list[int]) -> list[int]:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        await asyncio.sleep(0.01)
        inside -= 1
        return items

    async def slow_finish(items: list[int]) -> list[int]:
        await asyncio.sleep(0.03)  # longer than a model run: finishes pile up, model runs must not
        return items

    async def scenario():
        coalescer = Coalescer(RunStages(_same, core, slow_finish), max_work=2)
        return await asyncio.gather(*(coalescer.run([i]) for i in range(12)))

    assert asyncio.run(scenario()) == [[i] for i in range(12)]
    assert most == 1


def test_a_stage_that_fails_fails_only_its_own_run():
    async def prepare(items: list[int]) -> list[int]:
        if 3 in items:
            raise ValueError("bad input")
        return items

    async def finish(items: list[int]) -> list[int]:
        if 5 in items:
            raise KeyError("bad output")
        return items

    async def scenario():
        coalescer = Coalescer(RunStages(prepare, _same, finish), max_work=1)
        return await asyncio.gather(*(coalescer.run([i]) for i in range(7)))

    results = asyncio.run(scenario())
    assert isinstance(results[3][0], ValueError) and isinstance(results[5][0], KeyError)
    assert [r[0] for i, r in enumerate(results) if i not in (3, 5)] == [0, 1, 2, 4, 6]


async def _same(value):
    return value
