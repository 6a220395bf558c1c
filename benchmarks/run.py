"""Run the whole benchmark in one go and write `benchmarks/results/latest.{json,md,png}`.

    python -m benchmarks.run            # the full run (`make bench`): ~65 minutes on 2 cores
    python -m benchmarks.run --quick    # a smoke run, windows of about one model run: NOT valid results
    python -m benchmarks.run --workload siglip2_embed   # one real-size workload (repeatable)
    python -m benchmarks.run --phase photo --phase ttft  # only these phases (repeatable)

Three phases, one after another (`benchmarks.phases`), each guarded (one that fails is recorded as
`{"error": ...}` under its key and the next runs), each with its own local Ray that is stopped
before the next starts:

- throughput (~42 min): below;
- photo (~10 min): a 12 MP JPEG through the gateway, the user's raw loop, the naive server and
  LitServe (`benchmarks.photo`, in a process of its own), under `photo`;
- ttft (~13 min): `benchmarks.ttft.run(quick)` when that module is there, under `ttft`.

A fourth, overhead (~14 min: the gateway's cost under Serve's proxy, HAProxy and the throughput
preset, `benchmarks.overhead`), runs only when asked for (`--phase overhead`, or on its own with
`make bench-overhead`).

latest.json, latest.md and latest.png hold all of them; `validity` in latest.json says which
sections are valid measurements. The throughput phase, on one local Ray (no dashboard) whose HTTP
proxy listens on 127.0.0.1:

1. Tiny SigLIP2 (checkpoints/tiny), three one-model gateway apps (batched, `max_batch_size: 1`,
   `coming_soon`): the gateway's own costs. The cold start of the zero-replica model; then rounds
   of: the replica's own `predict` called in-process, the same text embedding over HTTP at
   concurrency 1 with batching on and off, and at concurrency 32 (the no-op ceiling).
2. Each real-size workload (`benchmarks.workloads`): the raw model in a plain in-process loop at
   its best batch size (probed first among those of 1, 8 and 16 the headline concurrency can
   fill); the gateway with that batch size and with
   `max_batch_size: 1` (two apps, each holding only this model); the naive server; LitServe with
   the gateway's batch settings. Every system is started once and reused, except the unbatched
   app, which is deployed again around each of its own windows and deleted after it: idle beside
   the raw loop, its two replicas slowed that loop by ~7 %, so the raw loop and the batched gateway
   share the machine with one gateway app, as in a user's process and in `benchmarks.check`
   (peer servers, paused, cost no CPU). Then one model run at
   the chosen batch size and one of a single item are timed by the probe, and every window is
   sized from them: it spans `MIN_RUNS` (10) runs of the system's own model call (the headline
   batch for the raw loop, the gateway and LitServe; one item for the two systems that never
   batch), or `BOUNDARY_RUNS` (4) for BLIP, whose batch takes ~20 s and whose throughput is counted
   between run boundaries, after a warm-up of at least one run. Rounds interleave the systems
   (raw, gateway, [raw again for SigLIP2], gateway unbatched, naive, LitServe), one under load at
   a time, at the workload's headline concurrency; ratios are taken within a round and summarised
   by their median and range, and checked (`metrics.validity`): a window of fewer runs than the
   workload's minimum, a served system above 1.05 of the raw loop, or a ratio whose rounds spread
   wider than max/min 1.15 is flagged in the output and in `latest.json`, not reported as a
   result. SigLIP2 is measured in three or four rounds, BLIP in two; the other concurrencies of the sweep
   (shorter windows, latency by concurrency) run only within the phase's time budget (30
   min) with the estimated time of the workloads still to come kept free (`benchmarks.plan`).
   Peer servers not under test are paused (SIGSTOP), so their idle loops never run beside another system.
   Around every gateway window the model replica's `stats()` are read: the model's busy fraction
   (seconds in forward passes over the window's seconds) is reported per workload and system.

Every model runs with two torch threads on the machine's cores; the gateway's model replica asks
Ray for 2 CPUs. Everything started here is stopped on the way out, also after an error. The
phase's code is in `benchmarks.plan` (what is measured) and `benchmarks.throughput` (measuring).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import signal
import sys
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from benchmarks import report
from benchmarks.host import cpu_model, git_commit, package_version, stop_on_sigterm
from benchmarks.phases import (
    OPTIONAL_MODULES,
    PHASE_ESTIMATE_S,
    DEFAULT_PHASES,
    PHASES,
    failed_throughput,
    merge_phases,
    module_phase,
    photo_phase,
    run_phase,
)
from benchmarks.plan import FULL, QUICK, THREADS, Plan, window_plan
from benchmarks.servers import WORK_DIR

__all__ = ["FULL", "QUICK", "Plan", "header", "main", "window_plan"]

logger = logging.getLogger("benchmarks.run")


def header(
    plan: Plan, started_at: datetime, wall_s: float, ray_env: dict[str, str], phases: tuple[str, ...]
) -> dict[str, Any]:
    """Machine, time and versions of this run."""
    from benchmarks.workloads import CAPTION_TOKENS, FILL_WAIT_RATIO, PATCHES

    packages = ("torch", "transformers", "ray", "litserve", "fastapi", "uvicorn", "httpx", "starlette", "pydantic")
    return {
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_time_s": wall_s,
        "machine": {
            "cpu": cpu_model(),
            "logical_cpus": psutil.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(),
            "load_average_at_end": [round(x, 2) for x in psutil.getloadavg()],
        },
        "python": platform.python_version(),
        "versions": {package: package_version(package) for package in packages},
        "git_commit": git_commit(),
        "plan": asdict(plan),
        "phases_run": list(phases),
        "phase_estimates_s": {name: PHASE_ESTIMATE_S[name] for name in phases},
        "ray_env": ray_env,
        "threads_per_system": THREADS,
        "fill_wait_ratio": FILL_WAIT_RATIO,
        "caption_tokens": CAPTION_TOKENS,
        "siglip2_patches": PATCHES,
    }


def main(argv: list[str] | None = None) -> int:
    from benchmarks.workloads import WORKLOADS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short windows: a smoke run, not a measurement")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every measurement window")
    parser.add_argument("--results", type=Path, default=report.RESULTS_DIR, help="where latest.{json,md,png} go")
    parser.add_argument(
        "--tiny-only",
        action="store_true",
        help="only the gateway's own costs (tiny model: overhead, ceiling, batching tax, cold start); prints JSON, writes nothing",
    )
    parser.add_argument(
        "--workload",
        action="append",
        choices=sorted(WORKLOADS),
        help=f"measure only this real-size workload (repeatable; default all: {', '.join(WORKLOADS)})",
    )
    parser.add_argument(
        "--phase",
        action="append",
        choices=PHASES,
        help=f"run only this phase (repeatable; default: {', '.join(DEFAULT_PHASES)}; also: overhead)",
    )
    parser.add_argument(
        "--ray-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the throughput phase's Ray workers, e.g. a Serve setting to compare (repeatable)",
    )
    args = parser.parse_args(argv)
    ray_env = dict(item.split("=", 1) for item in args.ray_env)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("benchmarks").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    for noisy in ("httpx", "ray", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    plan = QUICK if args.quick else FULL
    if args.tiny_only:
        plan = replace(plan, workloads=())
    elif args.workload:
        plan = replace(plan, workloads=tuple(w for w in plan.workloads if w.workload in args.workload))
    phases = ("throughput",) if args.tiny_only else tuple(p for p in PHASES if p in (args.phase or DEFAULT_PHASES))
    estimate = sum(PHASE_ESTIMATE_S[p] for p in phases)
    logger.info("phases %s; a full run of them takes about %.0f min on 2 cores", ", ".join(phases), estimate / 60)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    started_at = datetime.now(UTC)
    started = time.perf_counter()

    from benchmarks.throughput import Benchmark

    throughput: dict[str, Any] = {}
    others: dict[str, dict[str, Any]] = {}
    status: dict[str, dict[str, Any]] = {}
    for phase in phases:
        if phase == "throughput":
            throughput, status[phase] = run_phase(phase, lambda: Benchmark(plan, ray_env).run())
            if "error" in throughput:
                throughput = failed_throughput(throughput, [w.workload for w in plan.workloads])
            signal.signal(signal.SIGTERM, stop_on_sigterm)  # ray.init replaced it
        elif phase == "photo":
            others[phase], status[phase] = run_phase(phase, lambda: photo_phase(args.quick, args.results, WORK_DIR))
        else:
            module = OPTIONAL_MODULES[phase]
            others[phase], status[phase] = run_phase(phase, lambda m=module: module_phase(m, args.quick))
            signal.signal(signal.SIGTERM, stop_on_sigterm)
    results = merge_phases(throughput, others, status)
    results["header"] = header(plan, started_at, time.perf_counter() - started, ray_env, phases)
    if args.tiny_only:
        tiny = results.get("tiny", {})
        print(json.dumps(tiny if "error" in tiny else report.tiny_summary(tiny), indent=2))
        return 0 if "error" not in tiny else 1
    summary = report.write(results, args.results)
    print(summary)
    failed = [name for name, s in status.items() if s.get("ok") is False]
    failed += [key for key in ("tiny", *(w.workload for w in plan.workloads)) if "error" in results.get(key, {})]
    logger.info("wall time %.0fs; results in %s", results["header"]["wall_time_s"], args.results)
    if failed:
        logger.error("failed: %s (recorded in latest.json)", ", ".join(sorted(set(failed))))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
