"""Summaries of a benchmark run: `latest.json` (summary + raw per-round data), `latest.md`, `latest.png`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from benchmarks.metrics import MAX_RATIO_VS_RAW, MAX_ROUND_SPREAD, MIN_RUNS, spread, validity

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


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """The content of `latest.json`."""
    summary: dict[str, Any] = {"header": results["header"]}
    summary.update(tiny_summary(results["tiny"]))
    workloads = [key for key in results if key not in ("header", "tiny")]
    for key in workloads:
        summary[key] = workload_summary(results[key])
    largest = max(workloads, key=lambda key: summary[key]["memory_mb"]["whole_stack"], default=None)
    if largest:
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
    return summary


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
            " | gateway / naive | gateway / LitServe | mean batch gateway / LitServe |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    workloads = [key for key in summary if isinstance(summary[key], dict) and "efficiency_vs_raw" in summary[key]]
    for key in workloads:
        block = summary[key]
        ratios = block["ratios"]
        lines.append(
            f"| {key} | {block['concurrency']} | {block['batch_size']} | {_fmt(block['raw_items_per_s'])}"
            f" | {_fmt(block['served_items_per_s'])} | {_fmt(block['unbatched_items_per_s'])}"
            f" | {_fmt(block['naive_items_per_s'])} | {_fmt(block['litserve_items_per_s'])}"
            f" | {_ratio_cell(ratios['gateway_vs_raw'])}"
            f" | {_ratio_cell(ratios['gateway_vs_naive'])} | {_ratio_cell(ratios['gateway_vs_litserve'])}"
            f" | {_fmt(block['mean_batch_size'], 1)} / {_fmt(block['mean_batch_size_litserve'], 1)} |"
        )
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
    notes = header["plan"].get("notes") or []
    if notes:
        lines += ["", *[f"Note: {note}" for note in notes]]
    return "\n".join(lines) + "\n"


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
    figure, axes = plt.subplots(len(workloads), 2, figsize=(12, 4.2 * len(workloads)), squeeze=False)
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
