"""The throughput phase's batch-size probe (benchmarks/throughput.py), on the tiny SigLIP2 checkpoint
loaded as the benchmark loads the real size, without Ray."""

from __future__ import annotations

import pytest

from benchmarks.throughput import PROBE_RUNS, probe_batch_sizes
from benchmarks.workloads import WORKLOADS, ModelRunner, decode_data_url


class CountingRunner(ModelRunner):
    """The real runner, keeping the batch size of every call."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []

    def run(self, images):
        self.calls.append(len(images))
        return super().run(images)


@pytest.fixture(scope="module")
def runner(checkpoints) -> CountingRunner:
    return CountingRunner(WORKLOADS["siglip2_embed"], checkpoints / "siglip2", threads=1)


def test_the_probe_warms_each_size_and_measures_several_runs_of_it(runner):
    image = decode_data_url(WORKLOADS["siglip2_embed"].image_url())
    runner.calls.clear()
    batch, rates, run_s = probe_batch_sizes(runner, image, (1, 2, 4, 64), seconds=0.0, concurrency=4)
    assert set(rates) == {1, 2, 4}, "a size the concurrency cannot fill is not probed"
    assert batch in rates and all(rate > 0 for rate in rates.values())
    # each size's median run time, which sizes the windows: consistent with its rate
    assert set(run_s) == set(rates)
    for size, seconds in run_s.items():
        assert size / seconds == pytest.approx(rates[size], rel=0.5)
    for size in (1, 2, 4):
        # one unmeasured run, then the measured ones
        assert runner.calls.count(size) == 1 + PROBE_RUNS, runner.calls
    # every size warmed first, then passes over all sizes in turn: a drift of the machine's speed
    # during the probe falls on every size alike, not on whichever was probed in a slow minute
    assert runner.calls == [1, 2, 4] + [1, 2, 4] * PROBE_RUNS
    assert 64 not in runner.calls


def test_when_no_size_can_be_filled_every_size_is_probed(runner):
    image = decode_data_url(WORKLOADS["siglip2_embed"].image_url())
    runner.calls.clear()
    _, rates, _ = probe_batch_sizes(runner, image, (2, 4), seconds=0.0, concurrency=1)
    assert set(rates) == {2, 4}
