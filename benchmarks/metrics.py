"""Throughput and latency of one measurement window, and the statistics across rounds.

Throughput from completion times: batching servers answer in lumps (a batch of 16 finishes at
once), so counting completions in a fixed window is off by up to one lump. Completions closer
together than a quarter of the mean gap are grouped into one event; throughput is the number of
items in every event after the first, divided by the time from the first event to the last. For
evenly spaced completions this is the plain rate; for periodic lumps it counts whole periods. When
the events span less than half of the measured time (one lump split in pieces), the plain rate,
completions over the measured time, is used instead.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np


def completion_events(times: list[float]) -> list[tuple[float, int]]:
    """Completion times grouped into (time of the group's first completion, items) events."""
    times = sorted(times)
    if len(times) < 2:
        return [(t, 1) for t in times]
    gap = 0.25 * (times[-1] - times[0]) / (len(times) - 1)
    events: list[list[float]] = [[times[0], 1]]
    previous = times[0]
    for t in times[1:]:
        if t - previous <= gap:
            events[-1][1] += 1
        else:
            events.append([t, 1])
        previous = t
    return [(t, int(n)) for t, n in events]


def throughput(completed: list[float], start: float) -> float:
    """Items per second from the completion times at or after `start` (one item each)."""
    times = [t for t in completed if t >= start]
    if not times or max(times) <= start:
        return 0.0
    plain = len(times) / (max(times) - start)
    events = completion_events(times)
    between_events = events[-1][0] - events[0][0] if len(events) >= 2 else 0.0
    # With whole periods between the first and last event, that span covers at least half of the
    # window; a shorter one means a single lump split in pieces, where only the plain rate is sound.
    if between_events < 0.5 * (max(times) - start):
        return plain
    return sum(n for _, n in events[1:]) / between_events


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """p50, p99 and mean of latencies in seconds, given in milliseconds; `n` is the sample size."""
    if not values:
        return {"p50_ms": None, "p99_ms": None, "mean_ms": None, "n": 0}
    array = np.asarray(values) * 1000.0
    return {
        "p50_ms": float(np.percentile(array, 50)),
        "p99_ms": float(np.percentile(array, 99)),
        "mean_ms": float(array.mean()),
        "n": len(values),
    }


def http_window(done: dict[str, Any]) -> dict[str, Any]:
    """Summary of one load-generator job: throughput, latency, errors and generated tokens."""
    records = done["records"]
    start = done["measuring_at"]
    if start is None:
        return {
            "items_per_s": 0.0,
            "errors": len(records),
            "requests": len(records),
            "timed_out": True,
            "elapsed_s": done["elapsed_s"],
            **percentiles([]),
        }
    ok = [r for r in records if r[2] == 200]
    measured = [r for r in ok if r[0] >= start]
    tokens = sorted({int(r[3]) for r in measured if r[3] >= 0})
    return {
        "items_per_s": throughput([r[1] for r in ok], start),
        **percentiles([r[1] - r[0] for r in measured]),
        "requests": len(records),
        "completed_after_start": sum(1 for r in ok if r[1] >= start),
        "errors": sum(1 for r in records if r[2] != 200),
        "completion_tokens": tokens or None,
        "span_s": (max(r[1] for r in ok) - start) if ok else 0.0,
        "elapsed_s": done["elapsed_s"],
        "timed_out": done["timed_out"],
    }


def spread(values: list[float]) -> dict[str, float | None]:
    """Median, min and max of per-round values (None when there are none)."""
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# ----- window sizing and validity -----
#
# A throughput window is only as good as the number of model runs it holds: a batching server
# answers in lumps of one batch, so a window holding one or two runs measures its edges, not the
# server (an earlier run reported the gateway at 1.39x the raw loop that way). Windows are therefore
# sized from a measured duration of one model run at the headline batch size, and every ratio is
# checked before it is reported.

MIN_RUNS = 10
"""Model runs (at the headline batch size) a throughput window must span to count as a measurement."""
BOUNDARY_RUNS = 4
"""The fewest model runs a window of a slow model may span: its throughput is counted between run
boundaries (the raw loop sums whole runs; `throughput` counts whole periods between the first and
last completion event), so no window edge enters it, and 4 runs leave 3 whole periods. Used where
ten runs would take minutes a window (a BLIP batch of 8 takes ~20 s on 2 cores)."""
MAX_RATIO_VS_RAW = 1.05
"""A served system faster than the raw loop by more than this is a measurement error until explained."""
MAX_ROUND_SPREAD = 1.15
"""Largest max/min of a per-round ratio before the rounds disagree too much to report a median."""
SERVED_SYSTEMS = ("gateway", "gateway_unbatched", "naive", "litserve")


def window_seconds(run_s: float, runs: float, minimum_s: float = 0.0, maximum_s: float | None = None) -> float:
    """The length of a window that spans `runs` model runs of `run_s` seconds each.

    `minimum_s` keeps windows of very fast models from being a few milliseconds; `maximum_s` bounds
    a window of a slow model (a window cut short by it is flagged afterwards, by `validity`).
    """
    if run_s <= 0:
        raise ValueError(f"run_s must be positive, got {run_s}")
    seconds = max(minimum_s, runs * run_s)
    return seconds if maximum_s is None else min(seconds, maximum_s)


def runs_spanned(span_s: float | None, run_s: float) -> float | None:
    """How many model runs of `run_s` seconds fit in a measured span (None when nothing was measured)."""
    if span_s is None or run_s <= 0:
        return None
    return span_s / run_s


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def validity(
    rounds: list[dict[str, dict[str, Any]]],
    min_runs: float = MIN_RUNS,
    max_ratio_vs_raw: float = MAX_RATIO_VS_RAW,
    max_spread: float = MAX_ROUND_SPREAD,
    quick: bool = False,
    ratios: tuple[tuple[str, str], ...] = tuple((system, "raw") for system in SERVED_SYSTEMS),
) -> dict[str, Any]:
    """Whether the rounds of one workload are a measurement, and if not, why.

    `rounds` holds, per round, each system's window: `items_per_s` and `runs` (the model runs at the
    headline batch size that the window spans). Flags: a window of fewer than `min_runs` runs; a
    served system above `max_ratio_vs_raw` of the raw loop, per round and for the median; a ratio
    whose rounds spread wider than `max_spread` (max / min); a `quick` run. Returns
    `{"ok", "reasons", "rounds": [{"ok", "reasons"}, ...], "ratios": {"a_vs_b": {"ok", "reasons"}}}`.
    """
    reasons: list[str] = []
    ratio_reasons: dict[str, list[str]] = {f"{a}_vs_{b}": [] for a, b in ratios}
    per_round = []
    for number, windows in enumerate(rounds, start=1):
        found = []
        for system, window in windows.items():
            runs = window.get("runs")
            if runs is None or runs < min_runs:
                shown = "unknown" if runs is None else f"{runs:.1f}"
                found.append(f"round {number}: {system} window too short ({shown} runs < {min_runs:g})")
                for a, b in ratios:
                    if system in (a, b):
                        ratio_reasons[f"{a}_vs_{b}"].append(f"round {number}: {system} window too short")
        for a, b in ratios:
            value = _ratio(windows.get(a, {}).get("items_per_s"), windows.get(b, {}).get("items_per_s"))
            if b == "raw" and value is not None and value > max_ratio_vs_raw:
                text = f"round {number}: {a} / raw = {value:.3f} > {max_ratio_vs_raw:g} (faster than the raw loop)"
                found.append(text)
                ratio_reasons[f"{a}_vs_{b}"].append(text)
        per_round.append({"ok": not found, "reasons": found})
        reasons += found
    for a, b in ratios:
        name = f"{a}_vs_{b}"
        values = [
            _ratio(windows.get(a, {}).get("items_per_s"), windows.get(b, {}).get("items_per_s")) for windows in rounds
        ]
        known = [v for v in values if v is not None and v > 0]
        if b == "raw" and known:
            median = statistics.median(known)
            if median > max_ratio_vs_raw:
                text = f"median {a} / raw = {median:.3f} > {max_ratio_vs_raw:g}"
                reasons.append(text)
                ratio_reasons[name].append(text)
        if len(known) >= 2 and max(known) / min(known) > max_spread:
            text = (
                f"{a} / {b} spread {min(known):.2f}–{max(known):.2f} across rounds"
                f" (max/min {max(known) / min(known):.2f} > {max_spread:g})"
            )
            reasons.append(text)
            ratio_reasons[name].append(text)
        if len(known) < 2:
            text = f"{a} / {b}: fewer than 2 rounds, no spread"
            reasons.append(text)
            ratio_reasons[name].append(text)
    if quick:
        text = "--quick run: short windows, not valid for comparison"
        reasons.insert(0, text)
        for found in ratio_reasons.values():
            found.insert(0, text)
    return {
        "ok": not reasons,
        "reasons": reasons,
        "rounds": per_round,
        "ratios": {name: {"ok": not found, "reasons": found} for name, found in ratio_reasons.items()},
    }


# ----- the model's busy fraction -----
#
# A model replica's `stats()` carries cumulative counters: `busy_s` (seconds in its forward passes,
# on the model's own thread), `prepare_s` and `finish_s` (the CPU work before and after a run, on
# other threads, overlapping the model) and `runs`. Their change over a window, divided by the
# window's wall seconds, is the share of the window the model computed (or its helpers worked): at
# the headline concurrency a batching server should keep the model busy nearly all the time.

BUSY_TARGET = 0.95
"""The model's busy fraction a served system should reach at the headline concurrency."""
BUSY_KEYS = ("busy_s", "prepare_s", "finish_s")


def _delta(before: dict[str, Any] | None, after: dict[str, Any] | None, key: str) -> float | None:
    """`after[key] - before[key]`, or None when either is missing or the counter went back (a new replica)."""
    if not before or not after:
        return None
    first, last = before.get(key), after.get(key)
    if not isinstance(first, (int, float)) or not isinstance(last, (int, float)) or last < first:
        return None
    return float(last - first)


def busy_fraction(before: dict[str, Any] | None, after: dict[str, Any] | None, wall_s: float | None) -> dict[str, Any]:
    """The model's busy fraction over a window from two `stats()` readings `wall_s` seconds apart.

    `busy_fraction` = Δbusy_s / wall_s; `prepare_fraction` and `finish_fraction` likewise (their
    threads overlap the model, so the three need not sum to at most 1); `runs` = Δruns and
    `busy_per_run_s` the mean forward pass. A figure is None when a counter is absent from either
    reading (a replica without it), went back, or the wall time is not positive.
    """
    wall = wall_s if wall_s is not None and wall_s > 0 else None
    deltas = {key: _delta(before, after, key) for key in BUSY_KEYS}
    runs = _delta(before, after, "runs")
    busy = deltas["busy_s"]
    return {
        "busy_fraction": None if busy is None or wall is None else busy / wall,
        "prepare_fraction": None if deltas["prepare_s"] is None or wall is None else deltas["prepare_s"] / wall,
        "finish_fraction": None if deltas["finish_s"] is None or wall is None else deltas["finish_s"] / wall,
        "busy_s": busy,
        "runs": None if runs is None else int(runs),
        "busy_per_run_s": busy / runs if busy is not None and runs else None,
        "wall_s": wall,
    }


def batch_counts(before: dict[str, Any], after: dict[str, Any], runs_key: str = "batches") -> dict[str, Any]:
    """Model runs and their mean size between two readings of cumulative counters (a replica's
    `stats()` or LitServe's batch log): `{"model_runs": Δruns_key, "mean_batch_size": Δitems / Δruns}`,
    the size None when no run ended between them."""
    runs = after[runs_key] - before[runs_key]
    return {"model_runs": runs, "mean_batch_size": (after["items"] - before["items"]) / runs if runs else None}
