"""The metering benchmark: what keys, admission and the usage ledger add to a request.

    python -m benchmarks.metering                  # the full run, about 4-5 minutes on 2 cores
    python -m benchmarks.metering --quick          # a smoke run, fewer samples (about 1.5 minutes)
    python -m benchmarks.metering --json out.json  # also write the JSON here

Metering is, per request: the key's lookup (the store's keys, cached in the ingress and re-read
every 2 s), admission (the key may use the model; a key with a budget is charged in one atomic
UPDATE of the store, on the request path) and one usage row, queued in the ingress and written
by the buffer at least every second. Three configurations of one tiny SigLIP2 text embedding
(POST /v1/embeddings {"model": "google/siglip2-base-patch16-naflex", "input": "a cat"}; local.yaml's
entry, live with one replica, two torch threads, as `benchmarks.run`'s tiny phase: the model costs
~1 ms, so the figures are the gateway's own path):

- `plain`: `gateway.metering: false`, auth off (no key, no admission, no row);
- `metered`: `gateway.metering: true`, auth on, a key without a budget made in the store before
  the gateway starts (`Store.create_key`): lookup (cached), the model check, one usage row;
- `metered_budget`: the same gateway, a key with a budget: admission also charges the store.

The two configurations of the gateway are two Serve applications on one local Ray (/plain and
/metered), each with its own ingress and model replica and its own SQLite store in
benchmarks/work/, both started once and left running: a redeploy per round would cost ~30 s of
the budget and measure a cold ingress. Only one is under load at a time. Rounds interleave them
(order reversed every other round); each round measures, per configuration, concurrency 1
(`c1_requests` after 20 unmeasured ones) and then concurrency 32 (requests/s over a window of
`c32_window_s` after 64 unmeasured requests and 1 s of warm-up), with `benchmarks.load`'s load
generator (its own process; for the keyed configurations it sends `Authorization: Bearer <key>`,
see `metering_gateway.KeyedLoadGenerator`). Differences are taken within a round and reported as
the median and range over rounds; the target is <= 1 ms added at the c=1 p50.

At the end the metered store is read (`Store.usage_totals` by key): it must hold exactly one row
per request sent to /metered, warm-ups included, read once the buffer has flushed (polled,
bounded) and again after the gateway stopped; the plain store must hold none. Writes
benchmarks/results/metering.md and metering.json. Every loop is bounded in count and time; all
traffic goes to 127.0.0.1; everything started here is stopped on the way out.

This module is the command line, the run and the result files; the plan is in
`benchmarks.metering_plan`, the gateways, the load and the usage check in
`benchmarks.metering_gateway`, the figures and the markdown in `benchmarks.metering_figures`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from benchmarks.host import cpu_model, git_commit, load_average, package_version
from benchmarks.metering_figures import markdown, summarize
from benchmarks.metering_gateway import keyed_load_generator, measure_gateway, model_entry
from benchmarks.metering_plan import BODY, FULL, QUICK, Plan
from benchmarks.servers import ROOT

logger = logging.getLogger("benchmarks.metering")

RESULTS_DIR = ROOT / "benchmarks" / "results"


def header(plan: Plan, quick: bool, started_at: datetime) -> dict[str, Any]:
    packages = ("ray", "fastapi", "sqlalchemy", "aiosqlite", "httpx")
    return {
        "started_at": started_at.isoformat(timespec="seconds"),
        "quick": quick,
        "plan": asdict(plan),
        "model": model_entry(),
        "body": BODY,
        "machine": {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(),
            "load_average_at_start": load_average(),
        },
        "python": platform.python_version(),
        "versions": {package: package_version(package) for package in packages},
        "git_commit": git_commit(),
    }


def write(results: dict[str, Any], results_dir: Path, extra_json: Path | None) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2) + "\n"
    (results_dir / "metering.json").write_text(text)
    (results_dir / "metering.md").write_text(markdown(results))
    if extra_json is not None:
        extra_json.parent.mkdir(parents=True, exist_ok=True)
        extra_json.write_text(text)


def run(plan: Plan, quick: bool) -> dict[str, Any]:
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    checkpoints = ROOT / "checkpoints" / "tiny"
    if not (checkpoints / "siglip2").is_dir():
        raise SystemExit(f"no tiny checkpoints in {checkpoints}: run `make checkpoints` first")
    results: dict[str, Any] = {"header": header(plan, quick, started_at)}
    results["gateway"] = measure_gateway(plan)
    results["summary"] = summarize(results["gateway"]["rounds"])
    results["header"]["machine"]["load_average_at_end"] = load_average()
    results["wall_time_s"] = time.perf_counter() - started
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and short windows: a smoke run")
    parser.add_argument("--json", type=Path, help="also write the JSON results here")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="where metering.{md,json} go")
    parser.add_argument("--load-generator", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load_generator:
        return keyed_load_generator()
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"), ("RAY_USAGE_STATS_ENABLED", "0")):
        os.environ.setdefault(name, value)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "ray", "transformers", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    results = run(QUICK if args.quick else FULL, args.quick)
    write(results, args.results, args.json)
    print(markdown(results))
    logger.info("wall time %.0fs; results in %s", results["wall_time_s"], args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
