"""The time-to-first-token benchmark's pure figures: percentiles, one phase's summary, the streaming
checks, the ratios to the in-process reference and the validity reasons."""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

from benchmarks.ttft_plan import BURST_GAP_MS, TARGET_RATIO


def p50_p90(values: list[float]) -> dict[str, float | int | None]:
    """p50, p90, min and max of durations in seconds, given in milliseconds; `n` the sample size."""
    if not values:
        return {"p50_ms": None, "p90_ms": None, "min_ms": None, "max_ms": None, "n": 0}
    array = np.asarray(values, dtype=float) * 1000.0
    return {
        "p50_ms": float(np.percentile(array, 50)),
        "p90_ms": float(np.percentile(array, 90)),
        "min_ms": float(array.min()),
        "max_ms": float(array.max()),
        "n": len(values),
    }


def summarize(timings: list[dict[str, Any]]) -> dict[str, Any]:
    """One phase's measured requests: TTFT, last token and done percentiles over the requests that
    answered 200 without errors and with some content; content chunks and tokens seen."""
    good = [t for t in timings if t["status"] == 200 and not t["errors"] and t["ttft_s"] is not None]
    chunks = [t["content_chunks"] for t in good]
    return {
        "requests": len(timings),
        "ok": len(good),
        "errors": len(timings) - len(good),
        "error_samples": sorted({e for t in timings for e in t["errors"]})[:5],
        "ttft": p50_p90([t["ttft_s"] for t in good]),
        "last_token": p50_p90([t["last_token_s"] for t in good]),
        "done": p50_p90([t["done_s"] for t in good if t["done_s"] is not None]),
        "first_to_last": p50_p90([t["last_token_s"] - t["ttft_s"] for t in good]),
        "content_chunks": {
            "median": statistics.median(chunks) if chunks else None,
            "min": min(chunks) if chunks else None,
            "max": max(chunks) if chunks else None,
        },
        "sse": all(t["streamed"] for t in timings) if timings else None,
        "completion_tokens": sorted({t["completion_tokens"] for t in good if t["completion_tokens"] is not None}),
        "finish_reasons": sorted({t["finish_reason"] for t in good if t["finish_reason"]}),
    }


def streaming_flags(summary: dict[str, Any]) -> list[str]:
    """Why a phase's answers were not streamed token by token (empty when they were).

    One content chunk is not a stream; nor are several that arrive together: a mean gap between
    them below `BURST_GAP_MS` (medians of the first-to-last span and of the chunk count).
    """
    if not summary["ok"]:
        return ["no answer with content"]
    flags = []
    if summary.get("sse") is False:
        flags.append("not streamed: answered as one JSON body, not server-sent events")
    chunks = summary["content_chunks"]["median"]
    if chunks is not None and chunks <= 1:
        flags.append("not streamed: one content chunk")
    span = summary["first_to_last"]["p50_ms"]
    if chunks is not None and chunks > 1 and span is not None and span / (chunks - 1) < BURST_GAP_MS:
        flags.append(
            f"not streamed: {chunks:g} content chunks within {span:.1f} ms (a mean gap under"
            f" {BURST_GAP_MS:g} ms: sent together, not as the tokens were made)"
        )
    return flags


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def reference_ratios(
    c1_ttft_ms: float | None,
    c8_ttft_ms: float | None,
    reference: dict[str, Any],
    ray_up: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """TTFT over the in-process references, and the target check (TTFT p50 at c=1 <= 1.5 x one step).

    `meets_target` is against the one step measured before Ray started (what the model takes in a
    user's own process); `meets_target_ray_up` against the one step timed around the c=1 phase with
    the gateway's Ray up (`ray_up`), which leaves only the gateway's own hops in the ratio."""
    one = (reference.get("one_step") or {}).get("p50_ms")
    one_ray_up = (ray_up or {}).get("p50_ms")
    c1_vs_ray_up = ratio(c1_ttft_ms, one_ray_up)
    visible = (reference.get("first_visible") or {}).get("p50_ms")
    full = (reference.get("full") or {}).get("p50_ms")
    batch_one = (reference.get("batch_one_step") or {}).get("p50_ms")
    c1_vs_one = ratio(c1_ttft_ms, one)
    return {
        "c1_ttft_vs_one_step": c1_vs_one,
        "c1_ttft_vs_first_visible": ratio(c1_ttft_ms, visible),
        "c1_ttft_vs_full": ratio(c1_ttft_ms, full),
        "c8_ttft_vs_one_step": ratio(c8_ttft_ms, one),
        "c8_ttft_vs_batch_one_step": ratio(c8_ttft_ms, batch_one),
        "c8_ttft_vs_full": ratio(c8_ttft_ms, full),
        "c1_ttft_vs_one_step_ray_up": c1_vs_ray_up,
        "target": TARGET_RATIO,
        "meets_target": None if c1_vs_one is None else c1_vs_one <= TARGET_RATIO,
        "meets_target_ray_up": None if c1_vs_ray_up is None else c1_vs_ray_up <= TARGET_RATIO,
    }


def model_validity(
    label: str,
    phases: dict[int, dict[str, Any]],
    reference: dict[str, Any] | None,
    minimum: dict[int, int],
    expected_tokens: int,
) -> list[str]:
    """Why one model's figures are not a valid measurement (empty when they are)."""
    reasons = []
    if not reference or not (reference.get("one_step") or {}).get("p50_ms"):
        failed = f" ({reference['failed']})" if reference and reference.get("failed") else ""
        reasons.append(f"{label}: no in-process reference{failed}")
    elif (reference.get("decoder_step_ms") or 0) <= 0:
        reasons.append(
            f"{label}: in-process reference inconsistent: one step {reference['one_step']['p50_ms']:.0f} ms >= the"
            f" full caption {(reference.get('full') or {}).get('p50_ms') or 0:.0f} ms (other load on the machine)"
        )
    for concurrency, summary in sorted(phases.items()):
        where = f"{label} c={concurrency}"
        if summary.get("failed"):
            reasons.append(f"{where}: phase failed: {summary['failed']}")
            continue
        if summary["ok"] < minimum.get(concurrency, 1):
            reasons.append(f"{where}: {summary['ok']} good requests < {minimum.get(concurrency, 1)}")
        if summary["errors"]:
            reasons.append(f"{where}: {summary['errors']} requests failed ({'; '.join(summary['error_samples'])})")
        reasons += [f"{where}: {flag}" for flag in streaming_flags(summary)]
        tokens = summary.get("completion_tokens") or []
        if tokens and tokens != [expected_tokens]:
            reasons.append(f"{where}: completion tokens {tokens}, expected {expected_tokens}")
    return reasons
