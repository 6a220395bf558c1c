"""`latest.md`: the tables of a run's summary (`benchmarks.report.summarize`).

`markdown(summary)` renders every section that is there: which sections are valid, the headline
throughput table, the model's busy fraction, each workload's ratios, rounds, concurrency sweep and
CPU time per item, the gateway's own costs, and the other phases' own sections (or why one is
missing). A ratio that is not a valid result is struck through, never shown as a result.
"""

from __future__ import annotations

from typing import Any

from benchmarks.metrics import BOUNDARY_RUNS, BUSY_TARGET, MAX_RATIO_VS_RAW, MAX_ROUND_SPREAD, MIN_RUNS
from benchmarks.report import LABELS, PHASE_SECTIONS, SYSTEM_FIELDS, is_failed


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
    failed = [key for key in summary if key not in ("tiny", *PHASE_SECTIONS) and is_failed(summary[key])]
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
            "Ratios are struck through and marked ⚠ when they are not a valid result (a window of fewer model"
            f" runs than the workload's minimum, {MIN_RUNS} or {BOUNDARY_RUNS} where throughput is counted between"
            f" run boundaries, a served system above {MAX_RATIO_VS_RAW:g} of the raw loop, or per-round"
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
    if is_failed(summary.get("tiny")):
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
        if is_failed(block):
            lines += ["", f"## {title}", "", f"The {phase} phase failed: `{block['error']}`."]
        elif "skipped" in block:
            lines += ["", f"## {title}", "", f"Not measured: {block['skipped']}."]
        elif phase == "photo":
            lines += ["", markdown_section(block, level=2).rstrip()]
        elif isinstance(block.get("markdown"), str):
            lines += ["", block["markdown"].rstrip()]
        else:
            lines += ["", f"## {title}", "", f"No table from this phase; its results are in latest.json's `{phase}`."]
        if not is_failed(block) and "skipped" not in block:
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
