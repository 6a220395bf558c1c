"""The overhead benchmark's pure figures: added latency, targets, window checks, medians over rounds,
the recommendation and the validity reasons."""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.overhead_configs import (
    CONFIGS,
    MAX_ROUND_SPREAD,
    NOISE,
    TARGET_P50_MS,
    TARGET_P99_MS,
    TARGET_RPS,
    Plan,
)
from benchmarks.host import foreign_reason


def minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def added(gateway: dict[str, Any] | None, in_process: dict[str, Any] | None) -> dict[str, float | None]:
    """The gateway's added latency: its p50/p99 minus the in-process p50/p99 of the same call."""
    gateway, in_process = gateway or {}, in_process or {}
    return {
        "p50_ms": minus(gateway.get("p50_ms"), in_process.get("p50_ms")),
        "p99_ms": minus(gateway.get("p99_ms"), in_process.get("p99_ms")),
    }


def targets(added_text: dict[str, float | None], requests_per_s: float | None) -> dict[str, bool | None]:
    """The issue's targets: added p50 <= 6 ms, p99 <= 15 ms, >= 150 requests/s at c=32."""
    p50, p99 = added_text.get("p50_ms"), added_text.get("p99_ms")
    return {
        "p50": None if p50 is None else p50 <= TARGET_P50_MS,
        "p99": None if p99 is None else p99 <= TARGET_P99_MS,
        "requests_per_s": None if requests_per_s is None else requests_per_s >= TARGET_RPS,
    }


def window_reasons(label: str, window: dict[str, Any] | None, min_n: int) -> list[str]:
    """Why a window is not a measurement: too few requests measured, any errors."""
    if not window:
        return [f"{label}: not measured"]
    reasons = []
    if (window.get("n") or 0) < min_n:
        reasons.append(f"{label}: {window.get('n') or 0} requests < {min_n}")
    if window.get("errors"):
        reasons.append(f"{label}: {window['errors']} errors")
    if window.get("timed_out"):
        reasons.append(f"{label}: the window hit its time bound")
    return reasons


def _better(value: float | None, base: float | None, lower_is_better: bool) -> int:
    """+1 better than `base` by more than the noise, -1 worse by more than it, 0 within it (or unknown)."""
    if value is None or base is None or base == 0:
        return 0
    change = (value - base) / abs(base)
    if abs(change) <= NOISE:
        return 0
    return (1 if change < 0 else -1) if lower_is_better else (1 if change > 0 else -1)


def recommend(rows: dict[str, dict[str, Any]], quick: bool) -> str:
    """Which configuration to serve with, from the median figures of each (`default` is the baseline).

    A configuration is adopted only when it beats the default by more than the noise on the text
    call (added p50 at c=1 or requests/s at c=32) without losing on the other, and is not slower by
    more than the noise with the photo (p50 at c=1); among those, the lowest added p50 wins.
    """
    base = rows.get("default")
    suffix = " (a --quick run: re-measure with the full run before acting on it)" if quick else ""
    if not base:
        return "No recommendation: the default configuration was not measured." + suffix

    def figure(row: dict[str, Any], key: str, field: str) -> float | None:
        return (row.get(key) or {}).get(field)

    adoptable, reasons = [], []
    for name, row in rows.items():
        if name == "default":
            continue
        if row.get("failed"):
            reasons.append(f"{name} did not run ({row['failed']})")
            continue
        latency = _better(figure(row, "text_c1_added", "p50_ms"), figure(base, "text_c1_added", "p50_ms"), True)
        rate = _better(figure(row, "text_c32", "items_per_s"), figure(base, "text_c32", "items_per_s"), False)
        photo = _better(figure(row, "photo_c1", "p50_ms"), figure(base, "photo_c1", "p50_ms"), True)
        if photo < 0:
            reasons.append(f"{name} is slower with the photo body (c=1 p50)")
        elif (latency > 0 and rate >= 0) or (rate > 0 and latency >= 0):
            adoptable.append(name)
        elif latency < 0 or rate < 0:
            reasons.append(f"{name} is slower on the small call")
        else:
            reasons.append(f"{name} is within the noise ({NOISE:.0%}) of the default")
    if adoptable:
        best = min(adoptable, key=lambda name: figure(rows[name], "text_c1_added", "p50_ms") or float("inf"))
        also = CONFIGS[best].ports if best in CONFIGS else ""
        return (
            f"Adopt {best}: lower added latency or more requests/s than Serve's default proxy by more than"
            f" {NOISE:.0%}, and not slower with the photo body."
            + (f" It also listens on: {also}; the port we serve on stays one." if also else "")
            + suffix
        )
    why = "; ".join(reasons) if reasons else "nothing else was measured"
    return f"Keep Serve's default proxy: {why}." + suffix


def stack_cpu(cpu_by_part: dict[str, float] | None) -> float | None:
    """CPU ms per request of the serving stack: every part but the load generator."""
    if not cpu_by_part:
        return None
    return sum(ms for part, ms in cpu_by_part.items() if part != "load_generator")


def median_of(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def summarize(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per configuration, the median over rounds of every figure the table shows."""
    rows: dict[str, dict[str, Any]] = {}
    names = [name for name in CONFIGS if any(name in r for r in rounds)]
    for name in names:
        runs = [r[name] for r in rounds if name in r]
        good = [run for run in runs if not run.get("failed")]
        if not good:
            rows[name] = {"failed": runs[0].get("failed") if runs else "not run"}
            continue
        row: dict[str, Any] = {"rounds": len(good)}
        for key, fields in (
            ("text_in_process", ("p50_ms", "p99_ms")),
            ("text_c1", ("p50_ms", "p99_ms", "n", "errors")),
            ("text_c1_added", ("p50_ms", "p99_ms")),
            ("text_c32", ("items_per_s", "p50_ms", "p99_ms", "n", "errors")),
            ("photo_in_process", ("p50_ms", "p99_ms")),
            ("photo_c1", ("p50_ms", "p99_ms", "n", "errors")),
            ("photo_c1_added", ("p50_ms", "p99_ms")),
            ("photo_c8", ("items_per_s", "p50_ms", "p99_ms", "n", "errors")),
            ("direct_c1", ("p50_ms", "p99_ms", "n", "errors")),
            ("direct_c1_added", ("p50_ms", "p99_ms")),
            ("direct_c32", ("items_per_s", "n", "errors")),
        ):
            present = [run[key] for run in good if run.get(key)]
            if present:
                row[key] = {field: median_of([p.get(field) for p in present]) for field in fields}
        spread = [run["text_c1_added"]["p50_ms"] for run in good if (run.get("text_c1_added") or {}).get("p50_ms")]
        row["text_c1_added_p50_rounds"] = spread
        for window_name in ("c32", "c8"):
            cpu = [run.get(f"cpu_ms_per_request_{window_name}") or {} for run in good]
            row[f"cpu_ms_per_request_{window_name}"] = {
                part: median_of([c.get(part) for c in cpu]) for part in sorted({p for c in cpu for p in c})
            }
            row[f"stack_cpu_ms_{window_name}"] = median_of([stack_cpu(c) for c in cpu])
        row["other_load_cores"] = median_of([(run.get("other_load") or {}).get("foreign_cores") for run in good])
        row["targets"] = targets(row.get("text_c1_added") or {}, (row.get("text_c32") or {}).get("items_per_s"))
        rows[name] = row
    return rows


def validity(
    rounds: list[dict[str, dict[str, Any]]], rows: dict[str, dict[str, Any]], plan: Plan, quick: bool
) -> list[str]:
    """Why the figures are not a valid measurement: a --quick run, a failed configuration, windows
    with too few requests or with errors, no in-process reference, other processes taking CPU, or
    rounds that disagree."""
    reasons = ["--quick run: short windows, not valid for comparison"] if quick else []
    for number, measured in enumerate(rounds, start=1):
        for name, run in measured.items():
            where = f"round {number} {name}"
            if run.get("failed"):
                reasons.append(f"{where}: failed: {run['failed']}")
                continue
            reasons += window_reasons(f"{where} text c=1", run.get("text_c1"), plan.min_c1)
            reasons += window_reasons(f"{where} text c=32", run.get("text_c32"), plan.min_c32)
            reasons += window_reasons(f"{where} photo c=1", run.get("photo_c1"), plan.min_photo_c1)
            reasons += window_reasons(f"{where} photo c=8", run.get("photo_c8"), plan.min_photo_c8)
            if not (run.get("text_in_process") or {}).get("p50_ms"):
                reasons.append(f"{where}: no in-process reference")
            reasons += foreign_reason(where, run.get("other_load"))
    for name, row in rows.items():
        spread = [v for v in row.get("text_c1_added_p50_rounds") or [] if v and v > 0]
        if len(spread) >= 2 and max(spread) / min(spread) > MAX_ROUND_SPREAD:
            reasons.append(
                f"{name}: added p50 spread {min(spread):.1f}–{max(spread):.1f} ms across rounds"
                f" (max/min > {MAX_ROUND_SPREAD:g})"
            )
    return reasons
