"""Time to first token of streamed captions: BLIP and Florence-2-base (real size), through the gateway.

    python -m benchmarks.ttft            # the full run, about 10-12 minutes on 2 quiet cores
    python -m benchmarks.ttft --quick    # a smoke run (few samples, flagged), about 4-5 minutes
    python -m benchmarks.ttft --model blip   # one model (repeatable)

The issue: "`stream: true` today sends the finished answer in chunks. Stream captions token by
token; measure time to first token at concurrency 1 and 8 (target: first token <= 1.5x one decoder
step after the encoder, i.e. well under the full answer's time)."

1. In this process, with the same checkpoint and two torch threads (before Ray starts, so nothing
   else of this run runs; the image decoded once beforehand): processor +
   `generate(max_new_tokens=1)` (the encoder and the first decoder step),
   processor + `generate` up to the first *visible* token (Florence-2's first generated token is the
   forced `<s>`, so its first visible token is the second step), and the whole caption of
   `CAPTION_TOKENS` tokens; runs interleaved, medians. A decoder step is (full - one) / (N - 1).
2. Through the gateway on 127.0.0.1 (one local Ray, no dashboard; both models live with one replica
   each, 2 CPUs, `torch_threads: 2`, batches of up to 8, entries built as `benchmarks.run` builds
   them): POST /v1/chat/completions with `"stream": true` and `max_tokens: CAPTION_TOKENS`, read as
   server-sent events as they arrive. Per request: the time to the first non-empty content delta
   (TTFT), to the last one (last token), to `[DONE]`, and the number of content chunks. At
   concurrency 1 and 8 (closed loop, a fixed number of requests after unmeasured warm-ups, each
   phase bounded in time); p50 and p90. One model is under load at a time.
3. Right before and right after each model's c=1 phase, with the gateway's Ray up and idle, the
   one-step reference again in this process (`InProcessCaptioner`): on 2 cores an idle Ray slows the
   same run by 17-38 %, so TTFT over this one holds only the gateway's own hops.

The checkpoints are `blip-stream` and `florence-2-base` of `benchmarks.models`: random weights
whose heads suppress every id that is not a plain word of the small tokenizer, so each of the
`CAPTION_TOKENS` generated tokens is visible text (the throughput benchmark's `blip` checkpoint
decodes to empty captions, which stream nothing).

Headline: TTFT p50 at c=1 over the one-step reference (before Ray), target <= 1.5; beside it the
same over the one step with Ray up. A gateway that sends the
finished answer in pieces shows TTFT ~ the full caption and one or two content chunks: such a result
is flagged "not streamed" (in `validity`), not hidden. Writes benchmarks/results/ttft.{json,md}.
Everything started here is stopped on the way out, also after an error or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import signal
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.host import (
    CpuWitness,
    foreign_reason,
    git_commit,
    load_average,
    log_to_stderr,
    machine,
    package_version,
    run_and_write,
    stop_on_sigterm,
)
from benchmarks.ttft_client import run_phase
from benchmarks.ttft_figures import model_validity, p50_p90, reference_ratios, streaming_flags
from benchmarks.ttft_plan import (
    FULL,
    MAX_BATCH_SIZE,
    MODELS,
    NAME,
    QUICK,
    RESULTS_DIR,
    TARGET_RATIO,
    THREADS,
    Plan,
    StreamModel,
)
from benchmarks.ttft_reference import InProcessCaptioner, measure_reference
from benchmarks.ttft_report import markdown, num, write
from benchmarks.workloads import CAPTION_TOKENS

logger = logging.getLogger("benchmarks.ttft")


def model_entry(model: StreamModel, checkpoint: Path) -> dict[str, Any]:
    """The model's catalog entry, as the throughput benchmark builds its real-size workloads' entries:
    live, one replica asking Ray for `THREADS` CPUs, `torch_threads: THREADS`, batches of up to
    `MAX_BATCH_SIZE`, captions of `CAPTION_TOKENS` tokens with greedy search."""
    return {
        "id": model.model_id,
        "source": str(checkpoint),
        "family": model.family,
        "status": "live",
        "device": "cpu",
        "dtype": "float32",
        "torch_threads": THREADS,
        "batching": {"max_batch_size": MAX_BATCH_SIZE},
        "generation": {"max_new_tokens": CAPTION_TOKENS, "num_beams": 1},
        "deployment": {"num_replicas": 1, "max_ongoing_requests": 64, "ray_actor_options": {"num_cpus": THREADS}},
    }


def app_args(entries: list[dict[str, Any]], database: Path) -> dict[str, Any]:
    """`build_app` arguments: only these models, a store of this run's own, generous timeouts."""
    return {
        "models": entries,
        "gateway": {
            "request_timeout_s": 600,
            "cold_start_timeout_s": 300,
            "database_url": f"sqlite+aiosqlite:///{database}",
        },
    }


def measure_gateway(models: list[StreamModel], checkpoints: dict[str, Path], plan: Plan) -> dict[str, Any]:
    """Both models live in one gateway app on a local Ray; c=1 then c=8 for each, one at a time."""
    from benchmarks.servers import WORK_DIR, GatewayStack

    entries = [model_entry(model, checkpoints[model.key]) for model in models]
    app = "bench-ttft"
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    database = WORK_DIR / f"ttft-{os.getpid()}.sqlite3"
    results: dict[str, Any] = {"entries": entries}
    previous = signal.getsignal(signal.SIGTERM)
    stack = GatewayStack(num_cpus=2 * THREADS * len(models) + 2)
    try:
        # ray.init installs a SIGTERM handler that ends the process without cleanup: ours stops Ray.
        signal.signal(signal.SIGTERM, stop_on_sigterm)
        results["deploy_s"] = stack.deploy(app, app_args(entries, database))
        results["ready_s"] = stack.wait_ready(timeout_s=plan.ready_timeout_s)
        url = f"{stack.url}/v1/chat/completions"
        for model in models:
            body = model.request_body(model.image_url())
            phases: dict[str, Any] = {}
            steps = ((1, plan.c1_warmup, plan.c1_requests), (8, plan.c8_warmup, plan.c8_requests))
            one_step = ray_up_reference(model, checkpoints[model.key], plan.ray_up_runs)
            for concurrency, warmup, measured in steps:
                try:
                    summary = asyncio.run(run_phase(url, body, concurrency, warmup, measured, plan.phase_max_s))
                except Exception as error:  # noqa: BLE001 - one failed phase is reported, the others still run
                    logger.exception("%s c=%d failed", model.label, concurrency)
                    summary = {"failed": f"{type(error).__name__}: {error}"[:300], "concurrency": concurrency}
                phases[str(concurrency)] = summary
                _log_phase(model.label, concurrency, summary)
                if concurrency == 1 and one_step:
                    phases["one_step_ray_up"] = one_step.finish()
            results[model.key] = phases
    finally:
        with contextlib.suppress(Exception):
            stack.delete(app)
        stack.shutdown()
        signal.signal(signal.SIGTERM, previous)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
    return results


class RayUpReference:
    """The one-step reference (`InProcessCaptioner`, warmed by one run) timed `runs` times before the
    c=1 phase (at construction) and `runs` times after it (`finish`), so that it brackets the phase."""

    def __init__(self, model: StreamModel, checkpoint: Path, runs: int) -> None:
        self.label = model.label
        self.runs = runs
        self.captioner = InProcessCaptioner(model, checkpoint)
        self.captioner.generate(1)  # the first run of a fresh model sets up its kernels and buffers
        self.before = [self.captioner.timed(1) for _ in range(runs)]

    def finish(self) -> dict[str, Any]:
        after = [self.captioner.timed(1) for _ in range(self.runs)]
        self.captioner.close()
        milliseconds = [round(1000.0 * s, 1) for s in self.before + after]
        logger.info("%s in-process with Ray up: one step %s ms (before, after the c=1 phase)", self.label, milliseconds)
        return {
            **p50_p90(self.before + after),
            "before_ms": milliseconds[: self.runs],
            "after_ms": milliseconds[self.runs :],
        }


def ray_up_reference(model: StreamModel, checkpoint: Path, runs: int) -> RayUpReference | None:
    """The bracketing reference, or None when not planned or when it fails (logged; the phases run)."""
    if runs <= 0:
        return None
    try:
        return RayUpReference(model, checkpoint, runs)
    except Exception:  # noqa: BLE001 - a reference that fails leaves the gateway's figures standing
        logger.exception("%s: the in-process reference with Ray up failed", model.label)
        return None


def _log_phase(label: str, concurrency: int, summary: dict[str, Any]) -> None:
    if summary.get("failed"):
        return
    logger.info(
        "%s c=%d: %d/%d ok, TTFT p50 %s ms, last token p50 %s ms, done p50 %s ms, content chunks %s%s",
        label,
        concurrency,
        summary["ok"],
        summary["requests"],
        num(summary["ttft"]["p50_ms"], 0),
        num(summary["last_token"]["p50_ms"], 0),
        num(summary["done"]["p50_ms"], 0),
        summary["content_chunks"]["median"],
        "".join(f" [{flag}]" for flag in streaming_flags(summary)),
    )


# ----- the run -----


def run(quick: bool, model_keys: list[str] | None = None) -> dict[str, Any]:
    """The whole benchmark; a JSON-able dict with `markdown` (a ready section) and `validity` (reasons
    the figures are not a valid measurement; empty when they are). Needs a process without a running
    Ray (it starts and stops its own); builds the checkpoints it needs first (seconds when current)."""
    import ray

    from benchmarks import models as checkpoints_module

    if ray.is_initialized():
        raise RuntimeError("benchmarks.ttft.run starts its own Ray: call it when this process has none running")
    plan = QUICK if quick else FULL
    chosen = [MODELS[key] for key in (model_keys or list(MODELS))]
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    load_start = load_average()
    checkpoints = {model.key: checkpoints_module.build_checkpoint(model.checkpoint) for model in chosen}
    reference = {}
    witness = CpuWitness()
    for model in chosen:
        try:
            reference[model.key] = measure_reference(model, checkpoints[model.key], plan)
        except Exception as error:  # noqa: BLE001 - reported as invalid; the gateway part still runs
            logger.exception("%s: the in-process reference failed", model.label)
            reference[model.key] = {"failed": f"{type(error).__name__}: {error}"[:300]}
    other_load = {"reference": witness.stop()}
    witness = CpuWitness()
    gateway = measure_gateway(chosen, checkpoints, plan)
    other_load["gateway"] = witness.stop()
    results: dict[str, Any] = {
        "name": NAME,
        "quick": quick,
        "reference": reference,
        "http": {model.key: gateway.get(model.key, {}) for model in chosen},
        "gateway": {k: v for k, v in gateway.items() if k not in MODELS},
    }
    results["other_load"] = other_load
    validity = ["--quick run: few samples, not valid for comparison"] if quick else []
    validity += foreign_reason("in-process reference", other_load["reference"])
    validity += foreign_reason("gateway phases", other_load["gateway"])
    results["ratios"] = {}
    for model in chosen:
        phases = results["http"][model.key]
        c1, c8 = phases.get("1", {}), phases.get("8", {})
        results["ratios"][model.key] = reference_ratios(
            (c1.get("ttft") or {}).get("p50_ms"),
            (c8.get("ttft") or {}).get("p50_ms"),
            reference[model.key],
            phases.get("one_step_ray_up"),
        )
        validity += model_validity(
            model.label,
            {1: c1, 8: c8},
            reference[model.key],
            {1: plan.min_c1, 8: plan.min_c8},
            CAPTION_TOKENS,
        )
    results["validity"] = validity
    results["header"] = header(plan, quick, started_at, time.perf_counter() - started, load_start, chosen, checkpoints)
    results["markdown"] = markdown(results, chosen)
    return results


def header(
    plan: Plan,
    quick: bool,
    started_at: datetime,
    wall_s: float,
    load_start: list[float],
    chosen: list[StreamModel],
    checkpoints: dict[str, Path],
) -> dict[str, Any]:
    packages = ("torch", "transformers", "ray", "httpx")
    fingerprints = {}
    for model in chosen:
        with contextlib.suppress(OSError, ValueError):
            marker = json.loads((checkpoints[model.key] / "real_checkpoint.json").read_text())
            fingerprints[model.checkpoint] = marker.get("fingerprint")
    return {
        "started_at": started_at.isoformat(timespec="seconds"),
        "wall_time_s": wall_s,
        "quick": quick,
        "plan": asdict(plan),
        "caption_tokens": CAPTION_TOKENS,
        "threads": THREADS,
        "max_batch_size": MAX_BATCH_SIZE,
        "target": f"TTFT p50 at c=1 <= {TARGET_RATIO} x the one-step reference (encoder + first decoder step)",
        "checkpoints": {model.key: str(checkpoints[model.key]) for model in chosen},
        "fingerprints": fingerprints,
        "machine": machine(load_start),
        "python": platform.python_version(),
        "versions": {package: package_version(package) for package in packages},
        "git_commit": git_commit(),
    }



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few samples: a smoke run, flagged as not valid")
    parser.add_argument("--model", action="append", choices=sorted(MODELS), help="only this model (repeatable)")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="where ttft.{json,md} go")
    args = parser.parse_args(argv)
    log_to_stderr()
    return run_and_write(
        lambda: run(args.quick, args.model), lambda results: write(results, args.results), logger, "Ray is down"
    )


if __name__ == "__main__":
    raise SystemExit(main())
