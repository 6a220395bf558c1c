"""Summaries of a benchmark run, and `write`, which puts them in `latest.json` (summary + raw per-round
data), `latest.md` (`benchmarks.report_markdown`) and `latest.png` (`benchmarks.report_plot`).

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

from benchmarks.metrics import BUSY_TARGET, MIN_RUNS, spread, validity

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
"""Each system's name in `latest.md` and `latest.png`."""
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


def is_failed(block: Any) -> bool:
    """Whether a part's or phase's results are the `{"error": ...}` of one that failed."""
    return isinstance(block, dict) and "error" in block


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """The content of `latest.json`: the throughput phase's summaries, every other phase's results under
    its name, the phases' statuses and `validity`."""
    summary: dict[str, Any] = {"header": results["header"]}
    tiny = results.get("tiny")
    if tiny is not None:
        if is_failed(tiny):
            summary["tiny"] = tiny
        else:
            summary.update(tiny_summary(tiny))
    workloads = [key for key in results if key not in ("header", "tiny", "phases", *PHASE_SECTIONS)]
    for key in workloads:
        summary[key] = results[key] if is_failed(results[key]) else workload_summary(results[key])
    measured = [key for key in workloads if not is_failed(summary[key])]
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
    if is_failed(summary.get("tiny")):
        sections["tiny"] = {"ok": False, "reasons": [f"failed: {summary['tiny']['error']}"]}
    elif summary["header"]["plan"].get("quick") and "gateway_overhead_ms" in summary:
        sections["tiny"] = {"ok": False, "reasons": ["--quick run: short windows, not valid for comparison"]}
    for key in workloads:
        block = summary[key]
        if is_failed(block):
            sections[key] = {"ok": False, "reasons": [f"failed: {block['error']}"]}
        else:
            sections[key] = {"ok": block["validity"]["ok"], "reasons": list(block["validity"]["reasons"])}
    for phase in PHASE_SECTIONS:
        block = summary.get(phase)
        if block is None:
            continue
        if is_failed(block):
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


def write(results: dict[str, Any], directory: Path = RESULTS_DIR) -> str:
    """Write latest.json, latest.md and latest.png into `directory`; return the markdown."""
    # Imported here, not at the top: both modules import this one's tables of systems and phases.
    from benchmarks.report_markdown import markdown
    from benchmarks.report_plot import plot

    directory.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    (directory / "latest.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    text = markdown(summary)
    (directory / "latest.md").write_text(text, encoding="utf-8")
    plot(summary, directory / "latest.png")
    logger.info("wrote %s/latest.{json,md,png}", directory)
    return text
