"""The photo benchmark: one phone-sized JPEG (4032x3024) through the gateway, the user's raw loop and the peers.

    python -m benchmarks.photo                  # the full run, about 9-10 minutes on 2 cores (estimate)
    python -m benchmarks.photo --quick          # a smoke run, windows of about one model run (2-3 minutes)
    python -m benchmarks.photo --json out.json  # also write the JSON here

`make bench` runs it as a phase of `python -m benchmarks.run` (a process of its own, see
`benchmarks.phases`), whose latest.{json,md,png} carry its results under `photo`.

A phone photo is a 3-6 MB JPEG of 12 MP; decoding it can cost more than the model behind it,
so where and how a server decodes shows up here and not in the throughput phase (256x256 images).
The photo is made deterministically (gradients, shapes, texture and noise, JPEG quality 92) and
kept in benchmarks/work/. Two workloads (`benchmarks.workloads.PHOTO_WORKLOADS`, tiny checkpoints):
SigLIP2 image embeddings (POST /v1/embeddings, the photo as a data: URL, `max_num_patches: 256`)
and Florence-2-base object detection (`<OD>`, POST /v1/vision/florence-2-base/object-detection).

1. Before any server starts, in this process as a user would write it with transformers (torch on
   two threads; idle threads passive, as local.yaml's `cpu_thread_wait` has the replicas;
   `--omp-spin`: OpenMP's default spin): the decomposition of one request: a full decode (open,
   load, convert to RGB); a JPEG draft decode at a quarter of each side (`Image.draft`); SigLIP2 end
   to end with either decode. Then one run of 1 and of 8 photos of each model is timed (the user's
   loop below, `timing_runs` medians): the windows are sized from them.
2. The systems, each started once: the gateway on 127.0.0.1 (the two models' entries of
   serve/configs/local.yaml, live with one replica each, two torch threads); the naive server and
   LitServe (`benchmarks.peers`, one process per model, the gateway's request body and route;
   LitServe with the gateway's `max_batch_size` and a batch timeout of `fill_wait_ratio` of one raw
   batch); and the raw loop in this process, the user's code: open, full decode, processor, model,
   one image at a time for concurrency 1 and batches of 8 one after another for concurrency 8.
3. Rounds (2) interleave the systems for each model, one under load at a time (peers not under test
   are paused with SIGSTOP, as in `benchmarks.run`): at concurrency 1, `c1_requests` sequential
   requests after `warmup` unmeasured ones (p50); at concurrency 8, images/s over a window of
   `window_runs` (10) runs of the system's own model call (a batch of 8 of the raw loop for the raw
   loop, the gateway and LitServe; one photo for the naive server), after a warm-up, with the load
   generator (`benchmarks.load`). The gateway's windows also read its replica's `stats()` before and
   after: the model's busy fraction (`metrics.busy_fraction`).

Figures, per model: each system's c=1 p50 and c=8 images/s (medians over rounds); ratios taken
within a round (gateway / raw, gateway / naive, gateway / LitServe for throughput and c=1 p50,
naive / raw and LitServe / raw), with their per-round values and validity (`photo_validity`: a
window of fewer than 10 runs, a spread over rounds above 1.15, fewer than two rounds, a quick run).
No system is bounded by the raw loop here: the user's loop decodes and then runs the model, one
after the other, while a server overlaps one request's decode with another's model run, and the
gateway decodes a JPEG only at the scale its processor needs (draft decode).
Targets: gateway throughput >= 1.2x the raw loop and above every peer; gateway c=1 p50 <= the raw
loop's. Writes benchmarks/results/photo.md and photo.json (the JSON also to --json).
Every loop is bounded in count and time; everything started here is stopped on the way out.

This module is the command line and the run; the plan, the photo and the thread setting are in
`benchmarks.photo_setup`, the raw loop in `benchmarks.photo_raw`, the gateway and the peers in
`benchmarks.photo_systems`, the ratios, validity and tables in `benchmarks.photo_figures`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import logging
import os
import platform
import signal
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from benchmarks.host import cpu_model, git_commit, package_version, stop_on_sigterm
from benchmarks.photo_figures import (
    LATENCY_TARGET,
    MODELS,
    PATCHES,
    RAW_BATCH,
    THREADS,
    THROUGHPUT_TARGET,
    latency_validity,
    markdown,
    markdown_section,
    model_summary,
    photo_validity,
    summarize,
)
from benchmarks.photo_raw import load_runners, measure_decomposition, time_user_loop
from benchmarks.photo_setup import (
    FULL,
    PHOTO_PATH,
    PHOTO_QUALITY,
    PHOTO_SIZE,
    QUICK,
    Plan,
    make_photo,
    replica_thread_env,
)
from benchmarks.photo_systems import PhotoBench
from benchmarks.servers import ROOT

__all__ = [  # what other modules and the tests use from here
    "FULL",
    "LATENCY_TARGET",
    "MODELS",
    "QUICK",
    "THREADS",
    "THROUGHPUT_TARGET",
    "Plan",
    "latency_validity",
    "main",
    "markdown",
    "markdown_section",
    "model_summary",
    "photo_validity",
    "run",
    "summarize",
    "write",
]

logger = logging.getLogger("benchmarks.photo")

RESULTS_DIR = ROOT / "benchmarks" / "results"


def header(plan: Plan, quick: bool, photo: bytes, started_at: datetime) -> dict[str, Any]:
    import torch

    packages = ("torch", "transformers", "ray", "pillow", "numpy", "httpx")
    return {
        "started_at": started_at.isoformat(timespec="seconds"),
        "quick": quick,
        "plan": asdict(plan),
        "machine": {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "physical_cores": psutil.cpu_count(logical=False),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(),
            "load_average_at_start": [round(x, 2) for x in psutil.getloadavg()],
        },
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": {package: package_version(package) for package in packages},
        "libjpeg_turbo": _libjpeg_turbo(),
        "git_commit": git_commit(),
        "photo": {
            "path": str(PHOTO_PATH.relative_to(ROOT)),
            "width": PHOTO_SIZE[0],
            "height": PHOTO_SIZE[1],
            "jpeg_quality": PHOTO_QUALITY,
            "bytes": len(photo),
            "sha256": hashlib.sha256(photo).hexdigest(),
        },
        "siglip2_max_num_patches": PATCHES,
    }


def write(results: dict[str, Any], results_dir: Path, extra_json: Path | None) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2) + "\n"
    (results_dir / "photo.json").write_text(text)
    (results_dir / "photo.md").write_text(markdown(results))
    if extra_json is not None:
        extra_json.parent.mkdir(parents=True, exist_ok=True)
        extra_json.write_text(text)


def run(plan: Plan, quick: bool, spin: bool = False) -> dict[str, Any]:
    """The whole photo benchmark in this process; its results (see the module docstring)."""
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    checkpoints = ROOT / "checkpoints" / "tiny"
    if not (checkpoints / "siglip2").is_dir() or not (checkpoints / "florence-2-base").is_dir():
        raise SystemExit(f"no tiny checkpoints in {checkpoints}: run `make checkpoints` first")
    photo = make_photo()
    # Idle torch threads as in the replicas (tiny models: passive, see local.yaml): with OpenMP's
    # default spin, two threads of a ~1 ms forward fight every other process for two cores, and
    # the in-process figure measures that fight (Florence-2's generate ~10x slower). Set before
    # torch is imported (it is read once, when libgomp loads), and taken back before Ray starts, so
    # that Ray's processes inherit the environment `serve run` would give them; the peers get it
    # explicitly.
    peer_env = {} if spin else replica_thread_env()
    thread_env = {k: v for k, v in peer_env.items() if k not in os.environ}
    if thread_env and "torch" in sys.modules:
        raise RuntimeError(
            "torch is already loaded, so OMP_WAIT_POLICY cannot be set for the raw loop:"
            " run the photo benchmark in a process of its own (python -m benchmarks.photo)"
        )
    os.environ.update(thread_env)
    try:
        runners = load_runners(checkpoints)
        in_process = measure_decomposition(plan, photo, runners)
        in_process["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "default (spin)")
        run_s = {
            model: {size: time_user_loop(runner, photo, size, plan.timing_runs) for size in (1, RAW_BATCH)}
            for model, runner in runners.items()
        }
    finally:
        for name in thread_env:
            os.environ.pop(name, None)
    logger.info(
        "the user's loop takes %s s (by model and photos per run)",
        {model: {size: round(s, 2) for size, s in sizes.items()} for model, sizes in run_s.items()},
    )
    results: dict[str, Any] = {"header": header(plan, quick, photo, started_at), "in_process": in_process}
    results["run_s"] = {model: {str(size): s for size, s in sizes.items()} for model, sizes in run_s.items()}
    rounds = []
    with contextlib.ExitStack() as stack:
        bench = PhotoBench(plan, photo, checkpoints, runners, run_s, peer_env, stack)
        for number in range(plan.rounds):
            rounds.append(bench.measure_round(number))
        results["startup_s"] = bench.startup_s
        results["models"] = bench.args["models"]
        results["litserve"] = {"max_batch_size": bench.batch_sizes, "batch_timeout_s": bench.litserve_wait_s}
    del runners
    gc.collect()
    results["rounds"] = rounds
    results["summary"] = summarize(rounds, quick)
    results["validity"] = results["summary"]["validity"]
    results["header"]["machine"]["load_average_at_end"] = [round(x, 2) for x in psutil.getloadavg()]
    results["wall_time_s"] = time.perf_counter() - started
    return results


# ----- helpers -----


def _libjpeg_turbo() -> bool | None:
    from PIL import features

    with contextlib.suppress(Exception):
        return bool(features.check_feature("libjpeg_turbo"))
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="windows of about one model run: a smoke run")
    parser.add_argument("--json", type=Path, help="also write the JSON results here")
    parser.add_argument(
        "--omp-spin",
        action="store_true",
        help="raw loop and peers: OpenMP's default spinning idle threads, not the replicas' cpu_thread_wait",
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="where photo.{md,json} go")
    parser.add_argument("--no-print", action="store_true", help="do not print the markdown when done")
    args = parser.parse_args(argv)
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"), ("RAY_USAGE_STATS_ENABLED", "0")):
        os.environ.setdefault(name, value)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "ray", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    results = run(QUICK if args.quick else FULL, args.quick, args.omp_spin)
    write(results, args.results, args.json)
    if not args.no_print:
        print(markdown(results))
    logger.info("wall time %.0fs; results in %s", results["wall_time_s"], args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
