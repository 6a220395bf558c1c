"""The photo benchmark's raw loop: the user's code in the benchmark's own process, and the timing of
back-to-back calls that the served systems' concurrency-1 figures use too.

See `benchmarks.photo` for the method. Before any server starts, `measure_decomposition` takes one
request apart (decode, then the model) and `time_user_loop` times the runs the windows are sized
from; in the rounds, `raw_c1` and `raw_c8` are the raw loop's figures beside the served systems'
(`benchmarks.photo_systems`). torch is imported when `load_runners` loads the models, not with
this module.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.photo_figures import CONCURRENCY, MODELS, RAW_BATCH, THREADS
from benchmarks.photo_setup import Plan, draft_decode, full_decode

logger = logging.getLogger("benchmarks.photo")


# ----- timing -----


def sample(call: Callable[[], Any], runs: int, warmup: int, budget_s: float, min_runs: int) -> list[float]:
    """Latencies (s) of back-to-back calls after `warmup` unmeasured ones: `runs` of them, or fewer
    (at least `min_runs`) once `budget_s` has passed."""
    for _ in range(warmup):
        call()
    latencies: list[float] = []
    started = time.perf_counter()
    while len(latencies) < runs and (len(latencies) < min_runs or time.perf_counter() - started < budget_s):
        t = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t)
    return latencies


def summary(latencies: list[float]) -> dict[str, float | int | None]:
    """p50, p90 and mean in milliseconds; `n` samples."""
    if not latencies:
        return {"p50_ms": None, "p90_ms": None, "mean_ms": None, "n": 0}
    values = np.asarray(latencies) * 1000.0
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p90_ms": float(np.percentile(values, 90)),
        "mean_ms": float(values.mean()),
        "n": len(latencies),
    }


# ----- in-process: the decomposition and the user's loop -----


def load_runners(checkpoints: Path) -> dict[str, Any]:
    """Each model loaded as a user loads it (`benchmarks.workloads.ModelRunner`), torch on `THREADS` threads."""
    from benchmarks.workloads import PHOTO_WORKLOADS, ModelRunner

    runners = {}
    for model, name in MODELS.items():
        workload = PHOTO_WORKLOADS[name]
        runners[model] = ModelRunner(workload, checkpoints / workload.checkpoint, THREADS)
    return runners


def user_loop(runner: Any, photo: bytes, images: int, decode: Callable[[bytes], Image.Image] = full_decode) -> Any:
    """What a user writes: open and decode every photo, then the processor and the model on all of them."""
    return runner.run([decode(photo) for _ in range(images)])


def measure_decomposition(plan: Plan, photo: bytes, runners: dict[str, Any]) -> dict[str, Any]:
    """Decode and SigLIP2 figures of one photo in this process, before any server runs."""

    def measure(name: str, call: Callable[[], Any]) -> dict[str, Any]:
        figure = summary(sample(call, plan.runs, plan.warmup, plan.sample_budget_s, plan.min_runs))
        logger.info(
            "in-process %s: p50 %.1f ms, p90 %.1f ms (n=%d)", name, figure["p50_ms"], figure["p90_ms"], figure["n"]
        )
        return figure

    siglip2 = runners["siglip2"]
    results = {
        "decode_full": measure("full decode", lambda: full_decode(photo)),
        "decode_draft": measure("draft decode", lambda: draft_decode(photo)),
        "siglip2_full": measure("SigLIP2, full decode", lambda: user_loop(siglip2, photo, 1)),
        "siglip2_draft": measure("SigLIP2, draft decode", lambda: user_loop(siglip2, photo, 1, draft_decode)),
    }
    results["decoded_size"] = {"full": list(full_decode(photo).size), "draft": list(draft_decode(photo).size)}
    results["florence2_generation"] = dict(runners["florence2"].generation)
    return results


def time_user_loop(runner: Any, photo: bytes, images: int, runs: int) -> float:
    """The median duration (s) of `runs` back-to-back runs of the user's loop over `images` photos."""
    durations = []
    for _ in range(max(1, runs)):
        started = time.perf_counter()
        user_loop(runner, photo, images)
        durations.append(time.perf_counter() - started)
    return statistics.median(durations)


def raw_c1(runner: Any, photo: bytes, plan: Plan) -> dict[str, Any]:
    """The user's loop on one photo at a time: latency of each run (decode, processor, model)."""
    return summary(
        sample(
            lambda: user_loop(runner, photo, 1),
            plan.c1_requests,
            plan.warmup,
            plan.c1_budget_s,
            min(plan.min_runs, plan.c1_requests),
        )
    )


def raw_c8(runner: Any, photo: bytes, seconds: float, min_runs: float) -> dict[str, Any]:
    """The user's loop over batches of `RAW_BATCH` photos, one batch after another, for at least
    `seconds` and `min_runs` batches: images over the summed batch times (no window edges)."""
    durations: list[float] = []
    started = time.perf_counter()
    while len(durations) < max(1, min_runs) or time.perf_counter() - started < seconds:
        t = time.perf_counter()
        user_loop(runner, photo, RAW_BATCH)
        durations.append(time.perf_counter() - t)
    images = RAW_BATCH * len(durations)
    return {
        "system": "raw",
        "concurrency": CONCURRENCY,
        "batch_size": RAW_BATCH,
        "runs": float(len(durations)),
        "items": images,
        "items_per_s": images / sum(durations),
        "batch_p50_ms": 1000 * statistics.median(durations),
    }
