"""What the throughput phase of `benchmarks.run` measures: workloads, rounds, windows and the time budget.

`FULL` is `make bench`'s plan and `QUICK` the smoke run's. Windows are counted in model runs
(`window_plan`), sized from timed raw runs; see benchmarks/README.md, "Windows and validity".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from benchmarks.metrics import (
    BOUNDARY_RUNS,
    BUSY_TARGET,
    MAX_RATIO_VS_RAW,
    MAX_ROUND_SPREAD,
    MIN_RUNS,
    window_seconds,
)

THREADS = 2
"""Torch threads of every system, and the CPUs the gateway's model replica asks Ray for."""
MAX_ONGOING = 64
"""The model deployment's `max_ongoing_requests`: above every concurrency, so batches can fill and
the counters can be read while a window runs."""
TINY_TEXT = "a photo of a cat sitting on a wooden table"
STANDBY_WAIT_S = 120
"""How long the cold start waits for the zero-replica model's standby worker to be ready."""
TINY_MODELS = {
    "batched": "bench/tiny-siglip2",
    "unbatched": "bench/tiny-siglip2-unbatched",
    "cold": "bench/tiny-siglip2-cold",
    "cold_plain": "bench/tiny-siglip2-cold-no-standby",
}
SYSTEMS = ("gateway", "gateway_unbatched", "naive", "litserve")


@dataclass(frozen=True)
class WorkloadPlan:
    """How one workload is measured.

    Windows are given in model runs, not seconds: the batch-size probe times raw runs at the chosen
    batch size and at batch size 1 (`timing_runs` more are timed for a size it did not try), and
    every window spans `runs` runs of the
    system's own model call (the headline batch for the raw loop, the gateway and LitServe; one item
    for the gateway with `max_batch_size: 1` and the naive server), at least `min_window_s`. Warm-ups
    last `warmup_runs` runs of the headline batch; sweep windows (latency by concurrency, not used
    for ratios) span `sweep_runs`. `max_job_s` only bounds a window that hangs. `estimate_s` is what
    the workload's mandatory part (start-up, probe, timed runs and `Plan.min_rounds` rounds) is
    expected to take on the 2-core machine: the budget keeps that much free for each workload still
    to come before it allows an optional round or sweep window.
    """

    workload: str
    headline: int
    concurrencies: tuple[int, ...]
    runs: float
    warmup_runs: float
    sweep_runs: float
    min_window_s: float
    probe_s: float
    max_job_s: float
    probe_sizes: tuple[int, ...] = (1, 8, 16)
    timing_runs: int = 3
    estimate_s: float = 0.0
    min_runs: float = MIN_RUNS
    """Model runs a headline window must span to count (`metrics.validity`)."""
    rounds: int | None = None
    min_rounds: int | None = None
    """This workload's rounds, and those always measured; None: the plan's."""
    raw_after_gateway: bool = False
    """Measure the raw loop again right after the gateway and take each round's raw figure from both
    windows (items over their summed run times), so that a machine whose speed drifts between
    windows moves both sides of gateway / raw alike."""

    def round_counts(self, plan: Plan) -> tuple[int, int]:
        """(rounds at most, rounds always measured) of this workload under `plan`."""
        rounds = self.rounds if self.rounds is not None else plan.rounds
        min_rounds = self.min_rounds if self.min_rounds is not None else plan.min_rounds
        return rounds, min(min_rounds, rounds)


@dataclass(frozen=True)
class Plan:
    """The whole run: rounds, windows and the time budget.

    `min_rounds` rounds are always measured; a further round (up to `rounds`) and the sweep only when
    the time they are estimated to take, plus the `estimate_s` of every workload still to come, fits
    `budget_s` (seconds from the start of the throughput phase). `quick` marks every result as not
    valid for comparison.
    """

    rounds: int
    tiny_window_s: float
    tiny_in_process_s: float
    workloads: tuple[WorkloadPlan, ...]
    budget_s: float
    min_rounds: int = 2
    quick: bool = False
    notes: list[str] = field(default_factory=list)


FULL = Plan(
    rounds=3,
    tiny_window_s=3.0,
    tiny_in_process_s=2.0,
    workloads=(
        WorkloadPlan(
            "siglip2_embed",
            32,
            (1, 8, 32),
            runs=MIN_RUNS,
            warmup_runs=3,
            sweep_runs=4,
            min_window_s=6.0,
            probe_s=2.5,
            max_job_s=600.0,
            estimate_s=8 * 60,
            rounds=4,
            min_rounds=3,
            raw_after_gateway=True,
        ),
        WorkloadPlan(
            "blip_caption",
            8,
            (1, 8),
            runs=BOUNDARY_RUNS,
            warmup_runs=1,
            sweep_runs=2,
            min_window_s=10.0,
            probe_s=2.0,
            max_job_s=900.0,
            estimate_s=14 * 60,
            min_runs=BOUNDARY_RUNS,
            rounds=2,
        ),
    ),
    budget_s=30 * 60,
    notes=[
        (
            "BLIP is swept at concurrency 1 and 8 only: on 2 cores one caption takes ~2 s, so at 32 a request"
            " waits 40-70 s."
        ),
        (
            "The batch size of the raw loop, the gateway and LitServe is the best of the probed sizes that the"
            " headline concurrency can fill (all probed sizes are in probe_items_per_s)."
        ),
        (
            f"Every headline window spans at least {MIN_RUNS} runs of the system's own model call (SigLIP2), or"
            f" {BOUNDARY_RUNS} for BLIP, whose batch of 8 takes ~20 s: its throughput is counted between run"
            " boundaries (whole runs for the raw loop, whole periods between the first and last batch of answers"
            " for the servers), so no window edge enters it. Windows are sized from the probe's timed raw runs"
            " (run_s); warm-ups last several headline runs. A window measures from the first response after its"
            " warm-up until the last request issued in the window has answered (see benchmarks/metrics.py)."
            " Sweep windows are shorter (latency by concurrency, not used for ratios)."
        ),
        (
            "SigLIP2's raw loop is measured right before and right after the gateway in every round, and the"
            " round's raw figure is taken from both windows: the machine's speed drifts by up to ~30 % between"
            " windows a minute apart (2 shared cores), and a raw window on each side moves with it. The median"
            " of its rounds (three, and a fourth within the budget) is what `python -m benchmarks.check`"
            " compares with."
        ),
        (
            f"A ratio is flagged, not reported as a result, when a window spans fewer than {MIN_RUNS} runs,"
            f" a served system is above {MAX_RATIO_VS_RAW} of the raw loop, or its rounds spread wider than"
            f" max/min {MAX_ROUND_SPREAD} (see `validity` in latest.json)."
        ),
        (
            "Peer servers not under test are paused (SIGSTOP) so their idle loops do not run beside the system"
            " under test; Ray cannot be paused, its idle CPU is in the 'other processes' column."
        ),
        (
            "The sweep of other concurrencies runs only while the throughput phase stays within its 30-minute"
            " budget, with the estimated time of the workloads still to come kept free; on 2 cores there is"
            " seldom room for it (skipped_windows in latest.json)."
        ),
        (
            f"Model busy fraction: the gateway replica's seconds in forward passes over the window's wall seconds"
            f" (stats() before and after each window); target >= {BUSY_TARGET:g} at the headline concurrency."
        ),
    ],
)
QUICK = Plan(
    rounds=2,
    tiny_window_s=1.0,
    tiny_in_process_s=0.5,
    workloads=(
        WorkloadPlan(
            "siglip2_embed",
            8,
            (1, 8),
            runs=1,
            warmup_runs=0,
            sweep_runs=1,
            min_window_s=1.0,
            probe_s=0.5,
            max_job_s=120.0,
            probe_sizes=(1, 8),
            timing_runs=1,
        ),
        WorkloadPlan(
            "blip_caption",
            2,
            (2,),
            runs=1,
            warmup_runs=0,
            sweep_runs=1,
            min_window_s=0.5,
            probe_s=0.5,
            max_job_s=240.0,
            probe_sizes=(1, 2),
            timing_runs=1,
        ),
    ),
    budget_s=8 * 60,
    quick=True,
    notes=["--quick: a smoke run with windows of about one model run; its numbers are NOT valid for comparison."],
)


def system_batch(system: str, batch: int) -> int:
    """The items of one model run of `system`: the headline batch, or 1 for the systems that never batch."""
    return 1 if system in ("gateway_unbatched", "naive") else batch


def window_plan(wplan: WorkloadPlan, run_s: dict[int, float], batch: int) -> dict[str, Any]:
    """Each system's run, warm-up and window seconds from the timed runs, and a round's estimated duration.

    A system's unit is its own model run: the headline batch for the raw loop, the gateway and
    LitServe, one item for the systems that never batch. Its window spans `wplan.runs` of them (at
    least `min_window_s`), its warm-up `wplan.warmup_runs`; the estimate adds the drain (one run per
    batch of the requests in flight when the window ends).
    """
    systems = {}
    round_s = 0.0
    for system in ("raw", *SYSTEMS):
        size = system_batch(system, batch)
        own_run_s = run_s[size]
        window_s = window_seconds(own_run_s, wplan.runs, wplan.min_window_s)
        # the raw loop warms up with one unmeasured run; an HTTP system with `warmup_runs` of its own
        warmup_s = own_run_s if system == "raw" else wplan.warmup_runs * own_run_s
        drain_s = 0.0 if system == "raw" else own_run_s * math.ceil(wplan.headline / size)
        systems[system] = {"run_s": own_run_s, "window_s": window_s, "warmup_s": warmup_s}
        round_s += warmup_s + window_s + drain_s
    if wplan.raw_after_gateway:
        round_s += systems["raw"]["warmup_s"] + systems["raw"]["window_s"]
    return {"runs": wplan.runs, "warmup_runs": wplan.warmup_runs, "systems": systems, "round_s": round_s}


def job_limit_s(wplan: WorkloadPlan, warmup_s: float, window_s: float, run_s: float, concurrency: int) -> float:
    """A bound on one load-generator job that only a hung system reaches: warm-up, window and a drain
    of one headline run per request in flight, twice over; never below the plan's `max_job_s`."""
    return max(wplan.max_job_s, 2 * (warmup_s + window_s + run_s * concurrency) + 60)


def probe_sizes(wplan: WorkloadPlan) -> tuple[int, ...]:
    """The batch sizes to probe: those the headline concurrency can fill (a larger one can never be
    chosen, and BLIP's batch of 16 alone would take ~30 s to probe)."""
    return tuple(size for size in wplan.probe_sizes if size <= wplan.headline) or wplan.probe_sizes[:1]


def later_estimate_s(plan: Plan, workload: str) -> float:
    """The summed `estimate_s` of the workloads that come after `workload` in `plan`."""
    names = [w.workload for w in plan.workloads]
    later = plan.workloads[names.index(workload) + 1 :] if workload in names else ()
    return sum(w.estimate_s for w in later)


def fits_budget(plan: Plan, elapsed_s: float, extra_s: float, workload: str) -> bool:
    """Whether something optional of `extra_s` seconds, started `elapsed_s` into the phase, still leaves
    the estimated time of the workloads after `workload` within `plan.budget_s`."""
    return elapsed_s + extra_s + later_estimate_s(plan, workload) <= plan.budget_s
