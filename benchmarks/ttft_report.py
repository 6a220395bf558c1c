"""The time-to-first-token benchmark's report: the markdown section and the result files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.host import write_results
from benchmarks.ttft_plan import MAX_BATCH_SIZE, NAME, TARGET_RATIO, THREADS, StreamModel
from benchmarks.workloads import CAPTION_TOKENS


def num(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def pair(figure: dict[str, Any] | None, digits: int = 0) -> str:
    figure = figure or {}
    return f"{num(figure.get('p50_ms'), digits)} / {num(figure.get('p90_ms'), digits)}"


def times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def markdown(results: dict[str, Any], chosen: list[StreamModel]) -> str:
    """The benchmark's markdown section."""
    head = results["header"]
    lines = [
        "## Time to first token (streamed captions)",
        "",
    ]
    if results["quick"]:
        lines += ["**QUICK RUN: few samples; these figures are not valid for comparison.**", ""]
    lines += [
        f"Captions of {CAPTION_TOKENS} tokens (real-size random-weight checkpoints whose every generated token is"
        f" visible text), POST /v1/chat/completions with `stream: true` on 127.0.0.1; one replica per model"
        f" (2 CPUs, {THREADS} torch threads, batches of up to {MAX_BATCH_SIZE}). TTFT: the first non-empty content"
        " delta; last token: the last one; done: `[DONE]`. Times in ms, p50 / p90.",
        "",
        "| model | concurrency | requests ok | TTFT | last token | done | content chunks (median) |"
        " TTFT / one step | TTFT / one step of a batch of 8 | TTFT / full caption |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in chosen:
        ratios = results["ratios"][model.key]
        for concurrency in ("1", "8"):
            phase = results["http"][model.key].get(concurrency) or {}
            if phase.get("failed") or not phase:
                failed = phase.get("failed", "not run")
                lines.append(f"| {model.label} | {concurrency} | failed: {failed} | | | | | | | |")
                continue
            vs_one = ratios["c1_ttft_vs_one_step" if concurrency == "1" else "c8_ttft_vs_one_step"]
            vs_batch = None if concurrency == "1" else ratios["c8_ttft_vs_batch_one_step"]
            vs_full = ratios["c1_ttft_vs_full" if concurrency == "1" else "c8_ttft_vs_full"]
            lines.append(
                f"| {model.label} | {concurrency} | {phase['ok']}/{phase['requests']} | {pair(phase['ttft'])} |"
                f" {pair(phase['last_token'])} | {pair(phase['done'])} | {num(phase['content_chunks']['median'])} |"
                f" {times(vs_one)} | {times(vs_batch)} | {times(vs_full)} |"
            )
    lines += [
        "",
        f"In-process reference (processor + `generate`, {THREADS} torch threads, the same checkpoint, p50 ms):",
        "",
        "| model | one step (encoder + first token) | first visible token (step) | full caption |"
        " decoder step | one step, batch of 8 | one step with Ray up, around the c=1 phase |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in chosen:
        ref = results["reference"][model.key]
        ray_up = (results["http"].get(model.key) or {}).get("one_step_ray_up") or {}
        if ref.get("failed"):
            lines.append(f"| {model.label} | failed: {ref['failed']} | | | | | {num(ray_up.get('p50_ms'))} |")
            continue
        lines.append(
            f"| {model.label} | {num((ref.get('one_step') or {}).get('p50_ms'))} |"
            f" {num((ref.get('first_visible') or {}).get('p50_ms'))} ({ref.get('first_visible_step')}) |"
            f" {num((ref.get('full') or {}).get('p50_ms'))} | {num(ref.get('decoder_step_ms'))} |"
            f" {num((ref.get('batch_one_step') or {}).get('p50_ms'))} | {num(ray_up.get('p50_ms'))} |"
        )
    lines += [
        "",
        f"Target: TTFT p50 at concurrency 1 <= {TARGET_RATIO} x the one-step reference. Against the one step"
        " measured before Ray started (the model in a user's own process), and against the one step timed in"
        " this process right before and after the c=1 phase while the gateway's Ray runs: an idle Ray's"
        " processes take ~0.25 of 2 cores and slow every torch run beside them, so the second ratio holds only"
        " the gateway's own hops (proxy, ingress, replica, streamer).",
    ]
    verdicts = {True: "meets it", False: "misses it", None: "not measured"}
    for model in chosen:
        ratios = results["ratios"][model.key]
        lines.append(
            f"- {model.label}: {times(ratios['c1_ttft_vs_one_step'])} the one step before Ray —"
            f" {verdicts[ratios['meets_target']]}; {times(ratios.get('c1_ttft_vs_one_step_ray_up'))} the one step"
            f" with Ray up — {verdicts[ratios.get('meets_target_ray_up')]}."
        )
    lines += [
        "",
        "Florence-2's first generated token is the forced `<s>`; its first visible token is the second"
        " decoder step. At concurrency 8 the requests share batches: the first token of a batch comes after"
        " the whole batch's encoder.",
        "",
    ]
    if results["validity"]:
        lines += ["**Not a valid measurement:**", ""] + [f"- {reason}" for reason in results["validity"]] + [""]
    else:
        lines += ["Every figure is a valid measurement.", ""]
    load = head["machine"]
    other = results.get("other_load") or {}
    lines.append(
        f"Machine: {load['cpu']}, {load['logical_cpus']} logical CPUs, load average {load['load_average_start']}"
        f" at the start, {load['load_average_end']} at the end; other processes used"
        f" {num((other.get('reference') or {}).get('foreign_cores'), 2)} cores on average during the reference and"
        f" {num((other.get('gateway') or {}).get('foreign_cores'), 2)} during the gateway phases; wall time"
        f" {head['wall_time_s']:.0f} s; commit {head['git_commit']}."
    )
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], results_dir: Path) -> tuple[Path, Path]:
    return write_results(results, results_dir, NAME, "Time to first token")
