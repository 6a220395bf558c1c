"""Summaries of a benchmark run: `latest.json` (summary + raw per-round data), `latest.md`, `latest.png`.

One file set for every phase of the run (`benchmarks.phases`): the throughput phase's workloads and
the gateway's own costs, the photo phase under `photo`, time to first token under `ttft`, the
gateway's overhead under `overhead`, each phase's status under `phases`, and `validity`: which
sections are valid measurements. A phase that failed is `{"error": ...}` in its place, and the
other sections are written all the same.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from benchmarks.metrics import BUSY_TARGET, MAX_RATIO_VS_RAW, MAX_ROUND_SPREAD, MIN_RUNS, spread, validity

logger = logging.getLogger("benchmarks.report")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SYSTEM_FIELDS = {
    "gateway": "served_items_per_s",
    "gateway_unbatched": "unbatched_items_per_s",
    "naive": "naive_items_per_s",
    "litserve": "litserve_items_per_s",
}
LABELS = {
    "raw": "raw model (in-process loop)",
    "gateway": "gateway (batched)",
    "gateway_unbatched": "gateway (max_batch_size 1)",
    "naive": "naive FastAPI server",
    "litserve": "LitServe (batched)",
}
BUSY_SYSTEMS = ("gateway", "gateway_unbatched")
"""The systems whose model replica reports its busy time (the gateway's two apps)."""
BUSY_FIELDS = ("busy_fraction", "prepare_fraction", "finish_fraction")
PHASE_SECTIONS = ("photo", "ttft", "overhead")
"""Phases whose results go into latest.json under their own name."""
RATIOS = (
    ("gateway", "raw"),
    ("gateway_unbatched", "raw"),
    ("naive", "raw"),
    ("litserve", "raw"),
    ("gateway", "naive"),
    ("gateway", "litserve"),
)


def _median(values: list[float | None]) -> float | None:
    return spread([v for v in values if v is not None])["median"]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _max_over_min(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None and v > 0]
    return max(known) / min(known) if len(known) >= 2 else None


def workload_summary(measured: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of one workload: medians over rounds, ratios taken within each round."""
    rounds = measured["rounds"]
    headline = measured["headline_concurrency"]
    summary: dict[str, Any] = {
        "concurrency": headline,
        "batch_size": measured["batch_size"],
        "raw_items_per_s": _median([r["raw"]["items_per_s"] for r in rounds]),
    }
    for system, key in SYSTEM_FIELDS.items():
        summary[key] = _median([r[system]["items_per_s"] for r in rounds])
    checked = validity(
        [{system: {"items_per_s": w["items_per_s"], "runs": w.get("runs")} for system, w in r.items()} for r in rounds],
        min_runs=measured.get("min_runs", MIN_RUNS),
        quick=measured.get("quick", False),
        ratios=RATIOS,
    )
    ratios = {}
    for a, b in RATIOS:
        name = f"{a}_vs_{b}"
        per_round = [_ratio(r[a]["items_per_s"], r[b]["items_per_s"]) for r in rounds]
        ratios[name] = {
            **spread(per_round),
            "rounds": per_round,
            "max_over_min": _max_over_min(per_round),
            "valid": checked["ratios"][name]["ok"],
            "reasons": checked["ratios"][name]["reasons"],
        }
    gateway_vs_raw = ratios["gateway_vs_raw"]
    # A flagged ratio is not a result: the headline is null and the measured value kept beside it.
    summary["efficiency_vs_raw"] = gateway_vs_raw["median"] if gateway_vs_raw["valid"] else None
    summary["efficiency_vs_raw_measured"] = gateway_vs_raw["median"]
    summary["efficiency_vs_raw_range"] = [gateway_vs_raw["min"], gateway_vs_raw["max"]]
    summary["ratios"] = ratios
    summary["validity"] = {"ok": checked["ok"], "reasons": checked["reasons"], "rounds": checked["rounds"]}
    summary["windows"] = {
        "run_s": measured.get("run_s"),
        "plan": measured.get("window_plan"),
        "runs_per_round": [{system: w.get("runs") for system, w in r.items()} for r in rounds],
        "min_runs": measured.get("min_runs", MIN_RUNS),
    }
    if not checked["ok"]:
        logger.warning("%s is not a valid measurement: %s", measured["workload"], "; ".join(checked["reasons"]))
    summary["mean_batch_size"] = _median([r["gateway"].get("mean_batch_size") for r in rounds])
    summary["mean_batch_size_unbatched"] = _median([r["gateway_unbatched"].get("mean_batch_size") for r in rounds])
    summary["mean_batch_size_litserve"] = _median([r["litserve"].get("mean_batch_size") for r in rounds])
    summary["busy"] = {system: busy_summary([r[system] for r in rounds]) for system in BUSY_SYSTEMS}
    summary["busy_fraction"] = {system: summary["busy"][system]["busy_fraction"]["median"] for system in BUSY_SYSTEMS}

    by_concurrency: dict[str, dict[str, dict[str, Any]]] = {}
    for system in SYSTEM_FIELDS:
        points: dict[str, dict[str, Any]] = {}
        windows = [r[system] for r in rounds] + [w for w in measured["sweep"] if w["system"] == system]
        for concurrency in sorted({w["concurrency"] for w in windows}):
            same = [w for w in windows if w["concurrency"] == concurrency]
            points[str(concurrency)] = {
                "items_per_s": _median([w["items_per_s"] for w in same]),
                "p50_ms": _median([w["p50_ms"] for w in same]),
                "p99_ms": _median([w["p99_ms"] for w in same]),
                "busy_fraction": _median([(w.get("busy") or {}).get("busy_fraction") for w in same]),
                "requests": sum(w["n"] for w in same),
                "windows": len(same),
            }
        by_concurrency[system] = points
    summary["by_concurrency"] = by_concurrency
    all_windows = [w for r in rounds for s, w in r.items() if s != "raw"] + measured["sweep"]
    summary["failed_requests"] = sum(w["errors"] for w in all_windows)
    tokens = sorted({t for w in all_windows for t in (w.get("completion_tokens") or [])})
    if tokens:
        summary["completion_tokens_seen"] = {
            system: sorted(
                {t for w in all_windows if w["system"] == system for t in (w.get("completion_tokens") or [])}
            )
            for system in SYSTEM_FIELDS
        }
    summary["cpu_ms_per_item"] = {system: _cpu_parts([r[system] for r in rounds]) for system in ("raw", *SYSTEM_FIELDS)}
    summary["memory_mb"] = measured["memory_mb"]
    summary["idle_cpu_percent"] = measured["idle_cpu_percent"]
    summary["startup_s"] = measured["startup_s"]
    summary["probe_items_per_s"] = measured["probe_items_per_s"]
    summary["rounds"] = rounds
    summary["sweep"] = measured["sweep"]
    summary["skipped_windows"] = measured.get("skipped_windows", [])
    return summary


def busy_summary(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """The model's busy fraction over a system's headline windows (one a round): median, range and
    per-round values of `busy_fraction`, `prepare_fraction` and `finish_fraction` (None where the
    replica did not report the counters), and whether the median meets `BUSY_TARGET`."""
    block: dict[str, Any] = {}
    for field in BUSY_FIELDS:
        values = [(w.get("busy") or {}).get(field) for w in windows]
        block[field] = {**spread(values), "rounds": values}
    block["model_runs"] = [w.get("model_runs") for w in windows]
    # whether both readings of a window were taken at the end of a forward pass (read_at_pass_end)
    block["aligned"] = [(w.get("busy") or {}).get("aligned") for w in windows]
    median = block["busy_fraction"]["median"]
    block["target"] = BUSY_TARGET
    block["meets_target"] = None if median is None else median >= BUSY_TARGET
    return block


def _cpu_parts(windows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Median CPU ms per item of each process part over windows."""
    parts = sorted({part for w in windows for part in (w.get("cpu_ms_per_item") or {})})
    return {part: _median([(w.get("cpu_ms_per_item") or {}).get(part) for w in windows]) for part in parts}


def _cold_rows(cold: dict[str, Any]) -> list[str]:
    """Table rows of the cold starts, with a standby worker (the default) and without."""
    rows = []
    labels = {"standby": "with a standby worker (default)", "no_standby": "without (`standby_worker: false`)"}
    for key, label in labels.items():
        run = cold.get(key)
        if not run:
            continue
        where = "the waiting standby process" if run.get("replica_in_standby") else "a new process"
        rows += [
            f"| cold start of a zero-replica model {label}: first response | {_fmt(run['first_response_s'])} s |",
            f"| … of which model load (replica's load_seconds) | {_fmt(run['model_load_s'])} s |",
            f"| … serving overhead (the rest; the replica ran in {where}) | {_fmt(run['overhead_s'])} s |",
        ]
    if cold.get("standby", {}).get("standby_rss_mb"):
        rows.append(f"| memory of the idle standby worker (RSS) | {_fmt(cold['standby']['standby_rss_mb'], 0)} MB |")
    return rows


def tiny_summary(tiny: dict[str, Any]) -> dict[str, Any]:
    """The gateway's own costs: overhead over an in-process call, no-op ceiling, batching tax, cold start."""
    rounds = tiny["rounds"]
    overhead_p50 = spread([r["overhead_p50_ms"] for r in rounds])
    overhead_p99 = spread([r["overhead_p99_ms"] for r in rounds])
    noop = spread([r["http_c32_batched"]["items_per_s"] for r in rounds])
    tax = spread([r["batching_tax_p50_ms"] for r in rounds])
    return {
        "gateway_overhead_ms": {
            "p50": overhead_p50["median"],
            "p99": overhead_p99["median"],
            "p50_range": [overhead_p50["min"], overhead_p50["max"]],
            "p99_range": [overhead_p99["min"], overhead_p99["max"]],
            "unbatched_p50": _median([r["overhead_unbatched_p50_ms"] for r in rounds]),
            "in_process_p50_ms": _median([r["in_process"]["p50_ms"] for r in rounds]),
            "in_process_p99_ms": _median([r["in_process"]["p99_ms"] for r in rounds]),
            "http_p50_ms": _median([r["http_c1_batched"]["p50_ms"] for r in rounds]),
            "http_p99_ms": _median([r["http_c1_batched"]["p99_ms"] for r in rounds]),
            "what": "HTTP latency at concurrency 1 (proxy -> ingress -> model replica, batching on, tiny SigLIP2"
            " text embedding) minus the replica's own predict() called in-process; p99 is the difference of p99s",
        },
        "gateway_noop_rps": noop["median"],
        "gateway_noop_rps_range": [noop["min"], noop["max"]],
        "gateway_noop_what": "requests/s through the full HTTP path at concurrency 32 for the cheapest real model"
        " call: a tiny SigLIP2 text embedding (batched); GET /v1/models calls no model",
        "gateway_noop_cpu_ms_per_request": _cpu_parts([r["http_c32_batched"] for r in rounds]),
        "gateway_c1_cpu_ms_per_request": _cpu_parts([r["http_c1_batched"] for r in rounds]),
        "batching_tax_ms_p50": tax["median"],
        "batching_tax_ms_p50_range": [tax["min"], tax["max"]],
        "cold_start": tiny["cold_start"],
        "tiny_rounds": rounds,
        "tiny_memory_mb": tiny["memory_mb"],
        "tiny_idle_cpu_percent": tiny["idle_cpu_percent"],
    }


def _failed(block: Any) -> bool:
    return isinstance(block, dict) and "error" in block


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """The content of `latest.json`: the throughput phase's summaries, every other phase's results under
    its name, the phases' statuses and `validity`."""
    summary: dict[str, Any] = {"header": results["header"]}
    tiny = results.get("tiny")
    if tiny is not None:
        if _failed(tiny):
            summary["tiny"] = tiny
        else:
            summary.update(tiny_summary(tiny))
    workloads = [key for key in results if key not in ("header", "tiny", "phases", *PHASE_SECTIONS)]
    for key in workloads:
        summary[key] = results[key] if _failed(results[key]) else workload_summary(results[key])
    measured = [key for key in workloads if not _failed(summary[key])]
    largest = max(measured, key=lambda key: summary[key]["memory_mb"].get("whole_stack", 0), default=None)
    if largest and summary[largest]["memory_mb"]:
        memory = summary[largest]["memory_mb"]
        summary["memory_mb"] = {
            "gateway": memory["gateway"],
            "whole_stack": memory["whole_stack"],
            "measured_during": largest,
            "breakdown": memory,
            "what": "summed RSS of the processes (pages shared between processes are counted in each): gateway = Ray's"
            " processes (GCS, raylet, controller, proxy, ingress) + the batched app's model replica;"
            " whole_stack = every process of the run (both gateway apps, naive, LitServe, the driver"
            " holding the raw model, the load generator)",
        }
    for phase in PHASE_SECTIONS:
        if phase in results:
            summary[phase] = results[phase]
    summary["phases"] = results.get("phases", {})
    summary["validity"] = overall_validity(summary, workloads)
    return summary


def _phase_reasons(validity_: Any) -> list[str]:
    """Reasons a phase's own `validity` gives: a list of reasons (strings, or dicts with `ok`/`reason`),
    or a dict with `ok` and `reasons`."""
    if isinstance(validity_, dict):
        return (
            []
            if validity_.get("ok", not validity_.get("reasons"))
            else [str(r) for r in validity_.get("reasons") or ["not ok"]]
        )
    reasons = []
    for item in validity_ or []:
        if isinstance(item, dict):
            if item.get("ok", item.get("valid", False)) is not True:
                reasons.append(str(item.get("reason") or item.get("reasons") or item))
        else:
            reasons.append(str(item))
    return reasons


def overall_validity(summary: dict[str, Any], workloads: list[str]) -> dict[str, Any]:
    """Which sections are valid measurements: per section `{"ok", "reasons"}` (`ok` None for a phase
    that was skipped or gives no validity), and `ok` for the whole run (every section measured and valid)."""
    sections: dict[str, dict[str, Any]] = {}
    if _failed(summary.get("tiny")):
        sections["tiny"] = {"ok": False, "reasons": [f"failed: {summary['tiny']['error']}"]}
    elif summary["header"]["plan"].get("quick") and "gateway_overhead_ms" in summary:
        sections["tiny"] = {"ok": False, "reasons": ["--quick run: short windows, not valid for comparison"]}
    for key in workloads:
        block = summary[key]
        if _failed(block):
            sections[key] = {"ok": False, "reasons": [f"failed: {block['error']}"]}
        else:
            sections[key] = {"ok": block["validity"]["ok"], "reasons": list(block["validity"]["reasons"])}
    for phase in PHASE_SECTIONS:
        block = summary.get(phase)
        if block is None:
            continue
        if _failed(block):
            sections[phase] = {"ok": False, "reasons": [f"failed: {block['error']}"]}
        elif "skipped" in block:
            sections[phase] = {"ok": None, "reasons": [f"skipped: {block['skipped']}"]}
        elif "validity" in block:
            reasons = _phase_reasons(block["validity"])
            sections[phase] = {"ok": not reasons, "reasons": reasons}
        else:
            sections[phase] = {"ok": None, "reasons": ["the phase reports no validity"]}
    known = [section["ok"] for section in sections.values()]
    return {"ok": bool(known) and all(ok is True for ok in known), "sections": sections}


def _belongs_to(part: str, system: str) -> bool:
    """Whether a process part does the work of `system` (Ray's shared processes belong to both gateway apps)."""
    if system == "raw":
        return part == "driver"
    if system in ("naive", "litserve"):
        return part == system
    return part.startswith("ray_") or part in (f"{system}_ingress", f"{system}_model")


def _ratio_cell(ratio: dict[str, Any]) -> str:
    """A ratio's median and per-round range; struck through and flagged when it is not a valid result."""
    cell = f"{_fmt(ratio['median'])}{_range([ratio['min'], ratio['max']])}"
    return cell if ratio.get("valid", True) else f"~~{cell}~~ ⚠ invalid"


def _idle(idle: dict[str, float]) -> str:
    return ", ".join(f"{part} {value:g}" for part, value in sorted(idle.items(), key=lambda kv: -kv[1]) if value >= 0.5)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _range(values: list[float | None], digits: int = 2) -> str:
    low, high = values
    return "" if low is None else f" ({_fmt(low, digits)}–{_fmt(high, digits)})"


def markdown(summary: dict[str, Any]) -> str:
    """The tables of `latest.md`."""
    header = summary["header"]
    lines = [
        "# gigarouter-serve benchmark",
        "",
        (
            f"{header['started_at']}, {header['wall_time_s']:.0f} s wall; {header['machine']['cpu']},"
            f" {header['machine']['logical_cpus']} CPUs, {header['machine']['memory_gb']} GB;"
            f" commit {header['git_commit']}."
        ),
        (
            "Random-weight checkpoints at the published sizes, fp32, 2 torch threads per system;"
            f" medians of up to {header['plan']['rounds']} interleaved rounds a workload,"
            " (min–max) of the per-round values."
        ),
        *(
            ["", "**QUICK RUN: windows of about one model run; these numbers are NOT valid for comparison.**"]
            if header["plan"].get("quick")
            else []
        ),
        *_overview_lines(summary),
    ]
    workloads = [key for key in summary if isinstance(summary[key], dict) and "efficiency_vs_raw" in summary[key]]
    failed = [key for key in summary if key not in ("tiny", *PHASE_SECTIONS) and _failed(summary[key])]
    if workloads or failed:
        lines += _throughput_table(summary, workloads, failed)
    lines += _busy_lines(summary, workloads)
    for key in workloads:
        lines += _validity_lines(key, summary[key])
    for key in workloads:
        block = summary[key]
        lines += [
            "",
            f"## {key}: throughput (items/s) and latency p50 / p99 (ms) by concurrency",
            "",
            "| system | concurrency | items/s | p50 ms | p99 ms | requests |",
            "|---|---|---|---|---|---|",
        ]
        for system, points in block["by_concurrency"].items():
            for concurrency, point in points.items():
                lines.append(
                    f"| {LABELS[system]} | {concurrency} | {_fmt(point['items_per_s'])} | {_fmt(point['p50_ms'], 0)}"
                    f" | {_fmt(point['p99_ms'], 0)} | {point['requests']} |"
                )
        if "completion_tokens_seen" in block:
            seen = ", ".join(f"{s}: {v}" for s, v in block["completion_tokens_seen"].items())
            lines.append(f"\nCompletion tokens reported per caption: {seen}.")
        if block["failed_requests"]:
            lines.append(f"\n**{block['failed_requests']} requests failed.**")
        if block["skipped_windows"]:
            lines.append(f"\nNot measured (over the time budget): {', '.join(block['skipped_windows'])}.")
    for key in workloads:
        block = summary[key]
        lines += [
            "",
            (
                f"## {key}: where the time goes (CPU ms per item at concurrency {block['concurrency']},"
                " medians of the rounds; 2 cores give 2000 CPU-ms per second)"
            ),
            "",
            "| system | wall ms/item | CPU ms/item | by process | load generator | other processes (idle) |",
            "|---|---|---|---|---|---|",
        ]
        for system, parts in block["cpu_ms_per_item"].items():
            rate = block["raw_items_per_s"] if system == "raw" else block[SYSTEM_FIELDS[system]]
            own = {part: value for part, value in parts.items() if value and _belongs_to(part, system)}
            others = sum(
                value for part, value in parts.items() if value and part not in own and part != "load_generator"
            )
            detail = ", ".join(f"{part} {value:.0f}" for part, value in sorted(own.items(), key=lambda kv: -kv[1]))
            lines.append(
                f"| {LABELS[system]} | {_fmt(1000 / rate if rate else None, 0)} | {sum(own.values()):.0f} | {detail}"
                f" | {_fmt(parts.get('load_generator'), 1)} | {others:.0f} |"
            )
        lines.append(
            "\nIdle CPU (% of one core) with every system loaded and none under load:"
            f" {_idle(block['idle_cpu_percent'])}."
        )
    lines += _tiny_lines(summary, workloads)
    lines += _phase_lines(summary)
    notes = header["plan"].get("notes") or []
    if notes:
        lines += ["", *[f"Note: {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def _throughput_table(summary: dict[str, Any], workloads: list[str], failed: list[str]) -> list[str]:
    """The headline table: every workload's systems and ratios at its headline concurrency."""
    lines = [
        "",
        "## Throughput at the headline concurrency (items/s)",
        "",
        (
            "Ratios are struck through and marked ⚠ when they are not a valid result (a window of fewer than"
            f" {MIN_RUNS} model runs, a served system above {MAX_RATIO_VS_RAW:g} of the raw loop, or per-round"
            f" ratios whose max / min exceeds {MAX_ROUND_SPREAD:g}); the reasons are listed below and in"
            " latest.json's `validity`."
        ),
        "",
        (
            "| workload | conc. | batch | raw | gateway | gateway unbatched | naive | LitServe | gateway / raw"
            " | gateway / naive | gateway / LitServe | mean batch gateway / LitServe | model busy gateway / unbatched |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in workloads:
        block = summary[key]
        ratios = block["ratios"]
        busy = block.get("busy_fraction") or {}
        lines.append(
            f"| {key} | {block['concurrency']} | {block['batch_size']} | {_fmt(block['raw_items_per_s'])}"
            f" | {_fmt(block['served_items_per_s'])} | {_fmt(block['unbatched_items_per_s'])}"
            f" | {_fmt(block['naive_items_per_s'])} | {_fmt(block['litserve_items_per_s'])}"
            f" | {_ratio_cell(ratios['gateway_vs_raw'])}"
            f" | {_ratio_cell(ratios['gateway_vs_naive'])} | {_ratio_cell(ratios['gateway_vs_litserve'])}"
            f" | {_fmt(block['mean_batch_size'], 1)} / {_fmt(block['mean_batch_size_litserve'], 1)}"
            f" | {_fmt(busy.get('gateway'))} / {_fmt(busy.get('gateway_unbatched'))} |"
        )
    for key in failed:
        lines.append(f"| {key} | failed: `{summary[key]['error']}` |")
    return lines


def _tiny_lines(summary: dict[str, Any], workloads: list[str]) -> list[str]:
    """The gateway's own costs (the tiny model), or why they are missing."""
    if _failed(summary.get("tiny")):
        return [
            "",
            "## The gateway's own costs (tiny SigLIP2 text embedding)",
            "",
            f"Failed: `{summary['tiny']['error']}`.",
        ]
    if "gateway_overhead_ms" not in summary:
        return []
    lines: list[str] = []
    overhead = summary["gateway_overhead_ms"]
    cold = summary["cold_start"]
    lines += [
        "",
        "## The gateway's own costs (tiny SigLIP2 text embedding)",
        "",
        "| measure | value |",
        "|---|---|",
        (
            f"| added latency p50, c=1 (HTTP − in-process) | {_fmt(overhead['p50'])} ms{_range(overhead['p50_range'])}"
            f" ({_fmt(overhead['http_p50_ms'])} vs {_fmt(overhead['in_process_p50_ms'])}) |"
        ),
        (
            f"| added latency p99, c=1 | {_fmt(overhead['p99'])} ms{_range(overhead['p99_range'])}"
            f" ({_fmt(overhead['http_p99_ms'])} vs {_fmt(overhead['in_process_p99_ms'])}) |"
        ),
        f"| added latency p50 with max_batch_size 1 | {_fmt(overhead['unbatched_p50'])} ms |",
        (
            f"| batching tax p50, c=1 (batched − unbatched) | {_fmt(summary['batching_tax_ms_p50'])} ms"
            f"{_range(summary['batching_tax_ms_p50_range'])} |"
        ),
        (
            f"| no-op ceiling (tiny text embed, c=32) | {_fmt(summary['gateway_noop_rps'], 0)} req/s"
            f"{_range(summary['gateway_noop_rps_range'], 0)} |"
        ),
        *_cold_rows(cold),
        f"| idle CPU of the tiny gateway apps (% of one core) | {_idle(summary['tiny_idle_cpu_percent'])} |",
    ]
    noop_cpu = summary["gateway_noop_cpu_ms_per_request"]
    if noop_cpu:
        detail = ", ".join(
            f"{part} {value:.2f}" for part, value in sorted(noop_cpu.items(), key=lambda kv: -(kv[1] or 0)) if value
        )
        lines.append(f"| CPU ms per request at the no-op ceiling, by process | {detail} |")
    for key in workloads:
        phase = summary[key]["memory_mb"]
        lines.append(
            f"| memory during {key}: gateway stack / whole local stack (RSS) |"
            f" {_fmt(phase['gateway'], 0)} MB / {_fmt(phase['whole_stack'], 0)} MB |"
        )
    return lines


def _overview_lines(summary: dict[str, Any]) -> list[str]:
    """Which sections are valid measurements, and each phase's wall time and outcome."""
    checked = summary.get("validity") or {}
    sections = checked.get("sections") or {}
    if not sections:
        return []
    mark = {True: "valid", False: "⚠ not valid", None: "–"}
    lines = [
        "",
        "## Sections",
        "",
        "The whole run is "
        + ("a valid measurement." if checked.get("ok") else "**not** a valid measurement in every section."),
        "",
        "| section | valid | why not |",
        "|---|---|---|",
    ]
    for name, section in sections.items():
        reasons = "; ".join(section["reasons"][:3]) + (" …" if len(section["reasons"]) > 3 else "")
        lines.append(f"| {name} | {mark[section['ok']]} | {reasons} |")
    phases = summary.get("phases") or {}
    if phases:
        timing = ", ".join(
            f"{name} {status.get('wall_s', 0):.0f} s"
            + ("" if status.get("ok") else (" (failed)" if status.get("ok") is False else " (skipped)"))
            for name, status in phases.items()
        )
        lines += ["", f"Phases: {timing}."]
    return lines


def _busy_lines(summary: dict[str, Any], workloads: list[str]) -> list[str]:
    """The model's busy fraction at the headline concurrency, per workload and gateway app."""
    lines = [
        "",
        "## Model busy fraction at the headline concurrency",
        "",
        (
            "Seconds the gateway's model replica spent in forward passes over the window's wall seconds (its"
            " `stats()` read before and after each window); the CPU work before and after a run (processor,"
            f" decoding, parsing) runs on other threads, overlapping the model. Target >= {BUSY_TARGET:g}."
        ),
        "",
        (
            "| workload | system | busy (range) | per round | before the model | after it | model runs per window"
            " | target met |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in workloads:
        for system, block in (summary[key].get("busy") or {}).items():
            busy = block["busy_fraction"]
            met = {True: "yes", False: "**no**", None: "–"}[block["meets_target"]]
            lines.append(
                f"| {key} | {LABELS[system]} | {_fmt(busy['median'])}{_range([busy['min'], busy['max']])}"
                f" | {', '.join(_fmt(v) for v in busy['rounds'])} | {_fmt(block['prepare_fraction']['median'])}"
                f" | {_fmt(block['finish_fraction']['median'])}"
                f" | {', '.join('–' if v is None else str(v) for v in block['model_runs'])} | {met} |"
            )
    photo = summary.get("photo")
    if isinstance(photo, dict) and "summary" in photo:
        for model, block in photo["summary"]["models"].items():
            busy = block["busy"]["busy_fraction"]
            target = block["targets"]["busy_fraction"]
            met = {True: "yes", False: "**no**", None: "–"}[target["met"]]
            lines.append(
                f"| photo {model} (c=8) | gateway | {_fmt(busy['median'])}{_range([busy['min'], busy['max']])}"
                f" | {', '.join(_fmt(v) for v in busy['rounds'])}"
                f" | {_fmt(block['busy']['prepare_fraction']['median'])}"
                f" | {_fmt(block['busy']['finish_fraction']['median'])} | – | {met} |"
            )
    return lines


def _phase_lines(summary: dict[str, Any]) -> list[str]:
    """The photo, time-to-first-token and overhead phases: their own tables, or why they are missing."""
    from benchmarks.photo_figures import markdown_section

    lines: list[str] = []
    for phase in PHASE_SECTIONS:
        block = summary.get(phase)
        if block is None:
            continue
        title = {"photo": "Photo (12 MP JPEG)", "ttft": "Time to first token", "overhead": "Gateway overhead"}[phase]
        if _failed(block):
            lines += ["", f"## {title}", "", f"The {phase} phase failed: `{block['error']}`."]
        elif "skipped" in block:
            lines += ["", f"## {title}", "", f"Not measured: {block['skipped']}."]
        elif phase == "photo":
            lines += ["", markdown_section(block, level=2).rstrip()]
        elif isinstance(block.get("markdown"), str):
            lines += ["", block["markdown"].rstrip()]
        else:
            lines += ["", f"## {title}", "", f"No table from this phase; its results are in latest.json's `{phase}`."]
        if not _failed(block) and "skipped" not in block:
            reasons = (summary.get("validity") or {}).get("sections", {}).get(phase, {}).get("reasons") or []
            if reasons and phase != "photo":
                lines += ["", f"**{phase}: not a valid measurement:**", *[f"- {r}" for r in reasons]]
    return lines


def _validity_lines(key: str, block: dict[str, Any]) -> list[str]:
    """A workload's validity, every ratio with its per-round values and spread, and each round's windows."""
    checked = block["validity"]
    lines = ["", f"## {key}: validity, ratios and rounds", ""]
    if checked["ok"]:
        lines.append(
            f"Valid: every window spans at least {block['windows']['min_runs']} model runs, no served system is"
            f" above {MAX_RATIO_VS_RAW:g} of the raw loop, every ratio's max / min over rounds is at most"
            f" {MAX_ROUND_SPREAD:g}."
        )
    else:
        lines.append("**Not a valid measurement:**")
        lines += [f"- {reason}" for reason in checked["reasons"]]
    lines += [
        "",
        "| ratio | median | per round | range | max / min | valid |",
        "|---|---|---|---|---|---|",
    ]
    for name, ratio in block["ratios"].items():
        per_round = ", ".join(_fmt(v) for v in ratio["rounds"])
        low, high = ratio["min"], ratio["max"]
        lines.append(
            f"| {name.replace('_vs_', ' / ')} | {_fmt(ratio['median'])} | {per_round}"
            f" | {_fmt(low)}–{_fmt(high)} | {_fmt(ratio['max_over_min'])} | {'yes' if ratio['valid'] else '⚠ no'} |"
        )
    systems = ("raw", *SYSTEM_FIELDS)
    run_s = block["windows"].get("run_s") or {}
    timed = ", ".join(f"batch {size}: {_fmt(seconds)} s" for size, seconds in run_s.items())
    lines += [
        "",
        f"Items/s per round, with the model runs each window spans in brackets (one run timed: {timed or '–'}):",
        "",
        "| round | " + " | ".join(LABELS[s] for s in systems) + " |",
        "|---" * (len(systems) + 1) + "|",
    ]
    for number, measured in enumerate(block["rounds"], start=1):
        cells = []
        for system in systems:
            window = measured.get(system, {})
            runs = window.get("runs")
            cells.append(f"{_fmt(window.get('items_per_s'))} ({_fmt(runs, 1)})")
        lines.append(f"| {number} | " + " | ".join(cells) + " |")
    return lines


def plot(summary: dict[str, Any], path: Path) -> None:
    """Throughput and p50/p99 latency against concurrency, one line per system, one row per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = [key for key in summary if isinstance(summary[key], dict) and "by_concurrency" in summary[key]]
    photo = summary.get("photo")
    photo_rows = isinstance(photo, dict) and "summary" in photo and bool(photo["summary"]["models"])
    rows = len(workloads) + (1 if photo_rows else 0)
    figure, axes = plt.subplots(max(rows, 1), 2, figsize=(12, 4.2 * max(rows, 1)), squeeze=False)
    if rows == 0:
        axes[0][0].text(0.5, 0.5, "nothing measured (see latest.md)", ha="center", va="center")
    if photo_rows:
        _plot_photo(axes[len(workloads)], photo)
    colors = {"gateway": "C0", "gateway_unbatched": "C1", "naive": "C2", "litserve": "C3", "raw": "black"}
    for row, key in zip(axes, workloads):
        block = summary[key]
        throughput_axis, latency_axis = row
        for system, points in block["by_concurrency"].items():
            for axis, field, style, label in (
                (throughput_axis, "items_per_s", "o-", LABELS[system]),
                (latency_axis, "p50_ms", "o-", LABELS[system]),
                (latency_axis, "p99_ms", "x--", None),
            ):
                known = [(int(c), point[field]) for c, point in points.items() if point[field]]
                if known:
                    xs, ys = zip(*known)
                    axis.plot(xs, ys, style, color=colors[system], label=label, alpha=1.0 if label else 0.6)
        if block["raw_items_per_s"]:
            throughput_axis.axhline(
                block["raw_items_per_s"],
                color=colors["raw"],
                linestyle=":",
                label=f"{LABELS['raw']}, batch {block['batch_size']}",
            )
        throughput_axis.set(
            title=f"{key}: throughput", xlabel="concurrency", ylabel="items/s", xscale="log", ylim=(0, None)
        )
        latency_axis.set(
            title=f"{key}: latency (p50 solid, p99 dashed)", xlabel="concurrency", ylabel="ms", xscale="log"
        )
        if latency_axis.lines:
            latency_axis.set_yscale("log")
        for axis in row:
            concurrencies = sorted({int(c) for points in block["by_concurrency"].values() for c in points})
            axis.set_xticks(concurrencies, [str(c) for c in concurrencies])
            axis.minorticks_off()
            axis.grid(True, alpha=0.3)
        throughput_axis.legend(fontsize=7)
        latency_axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_photo(row: Any, photo: dict[str, Any]) -> None:
    """The photo phase: images/s at concurrency 8 and p50 at concurrency 1, per model and system (medians,
    range as error bars)."""
    from benchmarks.photo_figures import LABELS as PHOTO_LABELS

    models = photo["summary"]["models"]
    systems = list(next(iter(models.values()))["systems"])
    colors = {"raw": "black", "gateway": "C0", "naive": "C2", "litserve": "C3"}
    width = 0.8 / len(systems)
    for axis, field, title, unit in (
        (row[0], "c8_images_per_s", "photo: throughput at concurrency 8", "images/s"),
        (row[1], "c1_p50_ms", "photo: latency p50 at concurrency 1", "ms"),
    ):
        for index, system in enumerate(systems):
            xs, ys, low, high = [], [], [], []
            for position, block in enumerate(models.values()):
                value = block["systems"][system][field]
                if value["median"] is None:
                    continue
                xs.append(position + (index - (len(systems) - 1) / 2) * width)
                ys.append(value["median"])
                low.append(value["median"] - value["min"])
                high.append(value["max"] - value["median"])
            axis.bar(xs, ys, width, yerr=[low, high], color=colors.get(system), label=PHOTO_LABELS[system], capsize=3)
        axis.set_xticks(range(len(models)), [f"{model} (12 MP JPEG)" for model in models])
        axis.set(title=title + (" (QUICK RUN)" if photo["header"].get("quick") else ""), ylabel=unit)
        axis.grid(True, axis="y", alpha=0.3)
        axis.legend(fontsize=7)


def write(results: dict[str, Any], directory: Path = RESULTS_DIR) -> str:
    """Write latest.json, latest.md and latest.png into `directory`; return the markdown."""
    directory.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    (directory / "latest.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    text = markdown(summary)
    (directory / "latest.md").write_text(text, encoding="utf-8")
    plot(summary, directory / "latest.png")
    logger.info("wrote %s/latest.{json,md,png}", directory)
    return text
