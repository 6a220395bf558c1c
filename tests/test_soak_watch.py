"""The soak's judgement of a growth trend (soak/watch.py): models waking and sleeping is not a leak,
a level that keeps rising is."""

from __future__ import annotations

from soak.watch import Sample, cycles, trend


def series(processes, rss) -> list[Sample]:
    return [Sample(t=10.0 * i, processes=p, rss_mib=r, by_part={}, idle_workers=0) for i, (p, r) in enumerate(zip(processes, rss))]


def test_waking_and_sleeping_models_are_no_trend():
    # a model replica (one process, ~400 MiB) comes and goes every few samples
    awake = [i % 6 < 3 for i in range(60)]
    samples = series([12 + a for a in awake], [4000.0 + 400 * a for a in awake])
    assert trend(samples, warmup_s=100).problems == []


def test_standby_workers_piling_up_are_a_trend():
    # the leak of issue 11: a new idle worker of ~417 MiB every 10 s
    samples = series([12 + i for i in range(60)], [4000.0 + 417 * i for i in range(60)])
    problems = trend(samples, warmup_s=100).problems
    assert any("process count grew" in p for p in problems) and any("RSS grew" in p for p in problems)


def test_slow_memory_growth_without_new_processes_is_a_trend():
    samples = series([12] * 60, [4000.0 + 30 * i for i in range(60)])  # +180 MiB a minute
    problems = trend(samples, warmup_s=100).problems
    assert problems and all("RSS" in p for p in problems)


def test_too_few_samples_after_warm_up_is_reported():
    assert trend(series([12] * 5, [4000.0] * 5), warmup_s=100).problems


def test_wakes_and_sleeps_are_counted_from_replica_counts():
    samples = series([12] * 7, [4000.0] * 7)
    for sample, running in zip(samples, [0, 1, 1, 0, 0, 1, 0]):
        sample.replicas = {"m": running}
    assert cycles(samples, "m") == (2, 2)
