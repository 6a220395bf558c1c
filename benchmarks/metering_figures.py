"""The metering benchmark's figures: what each metered configuration adds to `plain` within a round,
the median and range over rounds, and the markdown of metering.md.

Pure functions of the measured rounds (no gateway, no store): `benchmarks.metering_gateway`
measures, this module summarises and writes the tables.
"""

from __future__ import annotations

import json
from typing import Any

from benchmarks.metering_plan import C32, CONFIGS, THREADS
from benchmarks.metrics import spread


def minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else a / b


def added(measured: dict[str, Any]) -> dict[str, Any]:
    """Within one round, each metered configuration against `plain`."""
    c1, c32 = measured["c1"], measured["c32"]
    return {
        config: {
            "c1_p50_ms": minus(c1[config]["p50_ms"], c1["plain"]["p50_ms"]),
            "c1_p99_ms": minus(c1[config]["p99_ms"], c1["plain"]["p99_ms"]),
            "c32_requests_per_s_ratio": ratio(c32[config]["requests_per_s"], c32["plain"]["requests_per_s"]),
        }
        for config in CONFIGS[1:]
    }


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per configuration and figure, and per difference to `plain`: median, min and max over rounds."""
    figures = {
        config: {
            "c1_p50_ms": spread([r["c1"][config]["p50_ms"] for r in rounds]),
            "c1_p99_ms": spread([r["c1"][config]["p99_ms"] for r in rounds]),
            "c32_requests_per_s": spread([r["c32"][config]["requests_per_s"] for r in rounds]),
        }
        for config in CONFIGS
    }
    differences = {
        config: {name: spread([r["added"][config][name] for r in rounds]) for name in rounds[0]["added"][config]}
        for config in CONFIGS[1:]
    }
    return {"figures": figures, "added": differences}


LABELS = {
    "plain": "plain: metering off, auth off",
    "metered": "metered: key lookup + admission + usage row",
    "metered_budget": "metered, key with a budget (+ a charge in the store)",
}


def markdown(results: dict[str, Any]) -> str:
    head, gate, summary = results["header"], results["gateway"], results["summary"]
    machine, plan, check = head["machine"], head["plan"], gate["usage_check"]
    figures, differences = summary["figures"], summary["added"]

    def ranged(figure: dict[str, float | None], digits: int, signed: bool = False) -> str:
        def fmt(value: float | None) -> str:
            return _num(value, digits, signed)

        return f"{fmt(figure['median'])} ({fmt(figure['min'])} to {fmt(figure['max'])})"

    loads = ", ".join(f"{r['load_average'][0]:.1f}→{r['load_average_end'][0]:.1f}" for r in gate["rounds"])
    lines = [
        "# Metering benchmark" + (" (--quick: a smoke run, not a measurement)" if head["quick"] else ""),
        "",
        f"Tiny SigLIP2 text embedding (`POST /v1/embeddings` {json.dumps(head['body'])}), one model replica,"
        f" {THREADS} torch threads; {plan['rounds']} interleaved rounds, per configuration and round"
        f" {plan['c1_requests']} requests at concurrency 1 and a {plan['c32_window_s']:g} s window at concurrency"
        f" {C32}; medians over rounds (range). {machine['cpus_usable']} CPUs ({machine['cpu']});"
        f" 1-minute load average at start {machine['load_average_at_start'][0]:.1f}, per round (start→end) {loads},"
        f" at the end {machine['load_average_at_end'][0]:.1f}. Run {head['started_at']}, commit"
        f" {head['git_commit']}, {results['wall_time_s']:.0f} s.",
        "",
        "| configuration | c=1 p50 ms | c=1 p99 ms | c=32 requests/s |",
        "|---|---:|---:|---:|",
    ]
    for config in CONFIGS:
        figure = figures[config]
        lines.append(
            f"| {LABELS[config]} | {ranged(figure['c1_p50_ms'], 2)} | {ranged(figure['c1_p99_ms'], 1)}"
            f" | {ranged(figure['c32_requests_per_s'], 1)} |"
        )
    lines += [
        "",
        "| added to plain, within a round | c=1 p50 ms | c=1 p99 ms | c=32 requests/s, metered / plain | target |",
        "|---|---:|---:|---:|---|",
    ]
    for config in CONFIGS[1:]:
        difference = differences[config]
        lines.append(
            f"| {config} | **{ranged(difference['c1_p50_ms'], 2, True)}** | {ranged(difference['c1_p99_ms'], 1, True)}"
            f" | {ranged(difference['c32_requests_per_s_ratio'], 2)} | p50 <= 1 ms |"
        )
    lines += [
        "",
        "Per round (c=1 p50 ms / c=32 requests/s):",
        "",
        "| round | order | " + " | ".join(CONFIGS) + " |",
        "|---|---|" + "---:|" * len(CONFIGS),
    ]
    for number, measured in enumerate(gate["rounds"], 1):
        cells = [
            f"{_num(measured['c1'][c]['p50_ms'], 2)} / {_num(measured['c32'][c]['requests_per_s'], 1)}" for c in CONFIGS
        ]
        lines.append(f"| {number} | {', '.join(measured['order'])} | " + " | ".join(cells) + " |")
    verdict = "exact" if check["exact"] else "**MISMATCH**"
    lines += [
        "",
        f"Usage rows ({verdict}): {check['requests_sent_metered']} requests sent with a key (warm-ups included),"
        f" {check['rows_before_stop']} rows in the store {gate['rows_wait_s']:.1f} s after the measurements ended,"
        f" {check['rows_after_stop']} after the gateway stopped; per key: "
        + "; ".join(
            f"{key} sent {v['sent']}, rows {v['rows_before_stop']}/{v['rows_after_stop']}"
            for key, v in check["per_key"].items()
        )
        + f". Rows without a key: {check['rows_without_key']}; the plain gateway's store: {check['plain_store_rows']}."
        f" Answers by status: {json.dumps(gate['sent']['statuses'])}.",
        "",
        "`python -m benchmarks.metering` (see its docstring for the method); JSON beside this file.",
        "",
    ]
    return "\n".join(lines)


def _num(value: float | None, digits: int, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
