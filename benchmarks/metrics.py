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
