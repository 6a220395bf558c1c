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
see `KeyedLoadGenerator`). Differences are taken within a round and reported as the median and
range over rounds; the target is <= 1 ms added at the c=1 p50.

At the end the metered store is read (`Store.usage_totals` by key): it must hold exactly one row
per request sent to /metered, warm-ups included, read once the buffer has flushed (polled,
bounded) and again after the gateway stopped; the plain store must hold none. Writes
benchmarks/results/metering.md and metering.json. Every loop is bounded in count and time; all
traffic goes to 127.0.0.1; everything started here is stopped on the way out.
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
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks import load
from benchmarks.load import LoadGenerator
from benchmarks.metrics import http_window, spread
from benchmarks.photo import _cpu_model, _git_commit, _stop_on_sigterm, _version, local_entries
from benchmarks.servers import ROOT, WORK_DIR

logger = logging.getLogger("benchmarks.metering")

RESULTS_DIR = ROOT / "benchmarks" / "results"
MODEL_ID = "google/siglip2-base-patch16-naflex"
BODY = {"model": MODEL_ID, "input": "a cat"}
THREADS = 2
"""Torch threads of the model replica (as `benchmarks.run`)."""
CONFIGS = ("plain", "metered", "metered_budget")
APPS = {"plain": "bench-metering-plain", "metered": "bench-metering"}
"""Serve application (route prefix /<app>) of each gateway: metering off, metering on."""
BUDGET_USD = 1000.0
"""The budget of the `metered_budget` key: never reached (a text embedding costs $0)."""
KEY_ENV = "GIGAROUTER_BENCH_KEY"
"""How `KeyedLoadGenerator` hands its key to its process (the environment, not the command line)."""
C1_WARMUP = 20
C32 = 32
C32_WARMUP = 64
HTTP_TIMEOUT_S = 60


@dataclass(frozen=True)
class Plan:
    """Sample counts and time bounds of one run."""

    rounds: int
    c1_requests: int
    """Measured requests at concurrency 1, per configuration and round."""
    c1_max_s: float
    """Bound of each concurrency-1 job (fewer requests are measured if it is reached)."""
    c32_window_s: float
    c32_max_s: float
    """Hard bound of each concurrency-32 job, warm-up and drain included."""
    ready_timeout_s: float
    rows_wait_s: float
    """How long the usage check waits for the buffer's last flush."""


FULL = Plan(
    rounds=2, c1_requests=300, c1_max_s=60.0, c32_window_s=20.0, c32_max_s=60.0, ready_timeout_s=300.0, rows_wait_s=15.0
)
QUICK = Plan(
    rounds=2, c1_requests=60, c1_max_s=30.0, c32_window_s=4.0, c32_max_s=30.0, ready_timeout_s=300.0, rows_wait_s=15.0
)


# ----- the store and the gateway -----


def store_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def fresh_store(path: Path) -> None:
    """Remove a SQLite store left by an earlier run (its -wal and -shm files too)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def make_keys(url: str) -> dict[str, tuple[str, str]]:
    """Migrate the metered store and create the two keys in it: config -> (key id, secret)."""
    from serve.store import Store

    async with Store(url) as store:
        await store.migrate()
        plain_key, plain_secret = await store.create_key("bench-metering")
        budget_key, budget_secret = await store.create_key("bench-metering-budget", budget_usd=BUDGET_USD)
    return {"metered": (plain_key.id, plain_secret), "metered_budget": (budget_key.id, budget_secret)}


async def usage_by_key(url: str) -> dict[str | None, int]:
    """Usage rows in the store, per key id."""
    from serve.store import Store

    async with Store(url) as store:
        return {total.group: total.requests for total in await store.usage_totals(group_by="key")}


def model_entry() -> dict[str, Any]:
    """local.yaml's SigLIP2 entry, live with one replica (no autoscaling) and `THREADS` torch threads."""
    entry = local_entries([MODEL_ID])[0]
    deployment = {k: v for k, v in entry.get("deployment", {}).items() if k != "autoscaling_config"}
    deployment["num_replicas"] = 1
    return {**entry, "status": "live", "torch_threads": THREADS, "deployment": deployment}


def gateway_args(metering: bool, database: Path) -> dict[str, Any]:
    """`build_app` arguments of one gateway: metering and auth both on, or both off."""
    gateway = {
        "request_timeout_s": HTTP_TIMEOUT_S,
        "metering": metering,
        "auth": {"enabled": metering},
        "rate_limit": {"enabled": False},
        "database_url": store_url(database),
    }
    return {"checkpoint_dir": str(ROOT / "checkpoints" / "tiny"), "gateway": gateway, "models": [model_entry()]}


# ----- load -----


class KeyedLoadGenerator(LoadGenerator):
    """`benchmarks.load`'s process whose requests carry `Authorization: Bearer <key>`.

    Its jobs have no headers, so this process (`--load-generator`) runs the same job loop with
    httpx's AsyncClient swapped for one that sends the key on every request.
    """

    def __init__(self, secret: str) -> None:  # noqa: D107 - starts another module than the parent
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.metering", "--load-generator"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env={**os.environ, KEY_ENV: secret},
        )


def keyed_load_generator() -> int:
    """The `--load-generator` process: `benchmarks.load`'s job loop with the key of $GIGAROUTER_BENCH_KEY."""
    secret = os.environ.pop(KEY_ENV)
    authorization = {"authorization": f"Bearer {secret}"}

    class KeyedClient(httpx.AsyncClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, headers={**authorization, **(kwargs.pop("headers", None) or {})}, **kwargs)

    httpx.AsyncClient = KeyedClient  # type: ignore[misc]  # benchmarks.load reads httpx.AsyncClient per job
    return load.main([])


class Sent:
    """Requests sent per configuration (warm-ups included) and their answers' statuses."""

    def __init__(self) -> None:
        self.requests = dict.fromkeys(CONFIGS, 0)
        self.statuses: dict[str, dict[str, int]] = {config: {} for config in CONFIGS}
        self.timed_out_jobs = 0

    def add(self, config: str, done: dict[str, Any]) -> None:
        self.requests[config] += len(done["records"])
        for record in done["records"]:
            status = str(int(record[2]))
            self.statuses[config][status] = self.statuses[config].get(status, 0) + 1
        self.timed_out_jobs += bool(done["timed_out"])


def run_job(loadgen: LoadGenerator, sent: Sent, config: str, job: dict[str, Any]) -> dict[str, Any]:
    done = loadgen.run({"body": BODY, "timeout_s": HTTP_TIMEOUT_S, **job})
    sent.add(config, done)
    return done


def measure_c1(loadgen: LoadGenerator, sent: Sent, config: str, url: str, plan: Plan) -> dict[str, Any]:
    """p50/p99 at concurrency 1: `C1_WARMUP` unmeasured requests (their own job), then
    `plan.c1_requests` measured ones (the job's first request, sent before its window opens at
    the first response, is not measured)."""
    base = {"url": url, "concurrency": 1, "warmup_s": 0.0, "max_s": plan.c1_max_s}
    run_job(loadgen, sent, config, {**base, "window_s": 0.0, "max_requests": C1_WARMUP})
    done = run_job(loadgen, sent, config, {**base, "window_s": plan.c1_max_s, "max_requests": plan.c1_requests + 1})
    window = http_window(done)
    keys = ("p50_ms", "p99_ms", "mean_ms", "n", "errors", "timed_out")
    return {key: window[key] for key in keys}


def measure_c32(loadgen: LoadGenerator, sent: Sent, config: str, url: str, plan: Plan) -> dict[str, Any]:
    """Requests/s at concurrency 32: `C32_WARMUP` unmeasured requests (their own job), then 1 s of
    warm-up and a window of `plan.c32_window_s`."""
    base = {"url": url, "concurrency": C32, "max_s": plan.c32_max_s}
    run_job(loadgen, sent, config, {**base, "warmup_s": 0.0, "window_s": 0.0, "max_requests": C32_WARMUP})
    done = run_job(loadgen, sent, config, {**base, "warmup_s": 1.0, "window_s": plan.c32_window_s})
    window = http_window(done)
    keys = ("items_per_s", "p50_ms", "p99_ms", "n", "completed_after_start", "span_s", "errors", "timed_out")
    return {"requests_per_s" if key == "items_per_s" else key: window[key] for key in keys}


def measure_gateway(plan: Plan) -> dict[str, Any]:
    """Start the two gateways, measure them in interleaved rounds, check the usage rows, stop them."""
    from benchmarks.servers import GatewayStack

    WORK_DIR.mkdir(parents=True, exist_ok=True)
    databases = {"plain": WORK_DIR / "metering-plain.sqlite3", "metered": WORK_DIR / "metering.sqlite3"}
    for path in databases.values():
        fresh_store(path)
    keys = asyncio.run(make_keys(store_url(databases["metered"])))
    sent = Sent()
    results: dict[str, Any] = {"keys": {config: key_id for config, (key_id, _) in keys.items()}}
    with contextlib.ExitStack() as stack:
        started = time.perf_counter()
        gateway = GatewayStack(num_cpus=8)
        stack.callback(gateway.shutdown)
        # After ray.init, which installs a SIGTERM handler that ends the process without cleanup.
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
        for metering, name in ((False, "plain"), (True, "metered")):
            gateway.deploy(APPS[name], gateway_args(metering, databases[name]), f"/{APPS[name]}")
        for app in APPS.values():
            gateway.wait_ready(f"/{app}", timeout_s=plan.ready_timeout_s)
        results["ready_s"] = time.perf_counter() - started
        logger.info("gateways ready %.1fs after the start", results["ready_s"])

        loadgens: dict[str, LoadGenerator] = {"plain": LoadGenerator()}
        stack.callback(loadgens["plain"].close)
        for config in ("metered", "metered_budget"):
            loadgens[config] = KeyedLoadGenerator(keys[config][1])
            stack.callback(loadgens[config].close)
        urls = {
            config: f"{gateway.url}/{APPS['plain' if config == 'plain' else 'metered']}/v1/embeddings"
            for config in CONFIGS
        }

        rounds = []
        for number in range(plan.rounds):
            order = CONFIGS if number % 2 == 0 else tuple(reversed(CONFIGS))
            measured: dict[str, Any] = {"order": list(order), "load_average": _load_average()}
            for name, measure in (("c1", measure_c1), ("c32", measure_c32)):
                measured[name] = {c: measure(loadgens[c], sent, c, urls[c], plan) for c in order}
            measured["load_average_end"] = _load_average()
            measured["added"] = added(measured)
            log_round(number + 1, measured)
            rounds.append(measured)
        results["rounds"] = rounds
        results["rows_before_stop"], results["rows_wait_s"] = wait_for_rows(
            store_url(databases["metered"]), expected_rows(sent, keys), plan.rows_wait_s
        )
    # the gateway is stopped (its ingress flushes what is buffered): read both stores again
    results["rows_after_stop"] = asyncio.run(usage_by_key(store_url(databases["metered"])))
    results["plain_store_rows"] = sum(asyncio.run(usage_by_key(store_url(databases["plain"]))).values())
    results["sent"] = {"requests": sent.requests, "statuses": sent.statuses, "timed_out_jobs": sent.timed_out_jobs}
    results["usage_check"] = usage_check(sent, keys, results)
    return results


# ----- figures -----


def minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else a / b


def added(measured: dict[str, Any]) -> dict[str, Any]:
    """Within one round, each metered configuration against `plain`."""
    c1, c32 = measured["c1"], measured["c32"]
    return {
        config: {
            "c1_p50_ms": minus(c1[config]["p50_ms"], c1["plain"]["p50_ms"]),
            "c1_p99_ms": minus(c1[config]["p99_ms"], c1["plain"]["p99_ms"]),
            "c32_requests_per_s_ratio": ratio(c32[config]["requests_per_s"], c32["plain"]["requests_per_s"]),
        }
        for config in CONFIGS[1:]
    }


def log_round(number: int, measured: dict[str, Any]) -> None:
    c1, c32 = measured["c1"], measured["c32"]
    logger.info(
        "round %d (load %s): c=1 p50 %s ms; c=32 %s requests/s",
        number,
        measured["load_average"][0],
        ", ".join(f"{config} {_num(c1[config]['p50_ms'], 2)}" for config in CONFIGS),
        ", ".join(f"{config} {_num(c32[config]['requests_per_s'], 1)}" for config in CONFIGS),
    )


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per configuration and figure, and per difference to `plain`: median, min and max over rounds."""
    figures = {
        config: {
            "c1_p50_ms": spread([r["c1"][config]["p50_ms"] for r in rounds]),
            "c1_p99_ms": spread([r["c1"][config]["p99_ms"] for r in rounds]),
            "c32_requests_per_s": spread([r["c32"][config]["requests_per_s"] for r in rounds]),
        }
        for config in CONFIGS
    }
    differences = {
        config: {name: spread([r["added"][config][name] for r in rounds]) for name in rounds[0]["added"][config]}
        for config in CONFIGS[1:]
    }
    return {"figures": figures, "added": differences}


def expected_rows(sent: Sent, keys: dict[str, tuple[str, str]]) -> dict[str, int]:
    """Key id -> the rows the metered store should hold: one per request sent with that key."""
    return {keys[config][0]: sent.requests[config] for config in keys}


def wait_for_rows(url: str, expected: dict[str, int], limit_s: float) -> tuple[dict[str | None, int], float]:
    """Poll the store until it holds the expected rows (or `limit_s` passes); the rows by key and the wait."""
    started = time.monotonic()
    while True:
        rows = asyncio.run(usage_by_key(url))
        waited = time.monotonic() - started
        if all(rows.get(key, 0) >= count for key, count in expected.items()) or waited >= limit_s:
            return rows, waited
        time.sleep(0.5)


def usage_check(sent: Sent, keys: dict[str, tuple[str, str]], results: dict[str, Any]) -> dict[str, Any]:
    """Rows against requests sent, per key and in all, before and after the gateway stopped."""
    expected = expected_rows(sent, keys)
    before, after = results["rows_before_stop"], results["rows_after_stop"]
    return {
        "requests_sent_metered": sum(expected.values()),
        "rows_before_stop": sum(before.values()),
        "rows_after_stop": sum(after.values()),
        "per_key": {
            key: {"sent": count, "rows_before_stop": before.get(key, 0), "rows_after_stop": after.get(key, 0)}
            for key, count in expected.items()
        },
        "rows_without_key": after.get(None, 0),
        "exact": before == after == {key: count for key, count in expected.items()},
        "plain_store_rows": results["plain_store_rows"],
    }


# ----- report -----


def header(plan: Plan, quick: bool, started_at: datetime) -> dict[str, Any]:
    packages = ("ray", "fastapi", "sqlalchemy", "aiosqlite", "httpx")
    return {
        "started_at": started_at.isoformat(timespec="seconds"),
        "quick": quick,
        "plan": asdict(plan),
        "model": model_entry(),
        "body": BODY,
        "machine": {
            "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(),
            "load_average_at_start": _load_average(),
        },
        "python": platform.python_version(),
        "versions": {package: _version(package) for package in packages},
        "git_commit": _git_commit(),
    }


LABELS = {
    "plain": "plain: metering off, auth off",
    "metered": "metered: key lookup + admission + usage row",
    "metered_budget": "metered, key with a budget (+ a charge in the store)",
}


def markdown(results: dict[str, Any]) -> str:
    head, gate, summary = results["header"], results["gateway"], results["summary"]
    machine, plan, check = head["machine"], head["plan"], gate["usage_check"]
    figures, differences = summary["figures"], summary["added"]

    def ranged(figure: dict[str, float | None], digits: int, signed: bool = False) -> str:
        def fmt(value: float | None) -> str:
            return _num(value, digits, signed)

        return f"{fmt(figure['median'])} ({fmt(figure['min'])} to {fmt(figure['max'])})"

    loads = ", ".join(f"{r['load_average'][0]:.1f}→{r['load_average_end'][0]:.1f}" for r in gate["rounds"])
    lines = [
        "# Metering benchmark" + (" (--quick: a smoke run, not a measurement)" if head["quick"] else ""),
        "",
        f"Tiny SigLIP2 text embedding (`POST /v1/embeddings` {json.dumps(head['body'])}), one model replica,"
        f" {THREADS} torch threads; {plan['rounds']} interleaved rounds, per configuration and round"
        f" {plan['c1_requests']} requests at concurrency 1 and a {plan['c32_window_s']:g} s window at concurrency"
        f" {C32}; medians over rounds (range). {machine['cpus_usable']} CPUs ({machine['cpu']});"
        f" 1-minute load average at start {machine['load_average_at_start'][0]:.1f}, per round (start→end) {loads},"
        f" at the end {machine['load_average_at_end'][0]:.1f}. Run {head['started_at']}, commit"
        f" {head['git_commit']}, {results['wall_time_s']:.0f} s.",
        "",
        "| configuration | c=1 p50 ms | c=1 p99 ms | c=32 requests/s |",
        "|---|---:|---:|---:|",
    ]
    for config in CONFIGS:
        figure = figures[config]
        lines.append(
            f"| {LABELS[config]} | {ranged(figure['c1_p50_ms'], 2)} | {ranged(figure['c1_p99_ms'], 1)}"
            f" | {ranged(figure['c32_requests_per_s'], 1)} |"
        )
    lines += [
        "",
        "| added to plain, within a round | c=1 p50 ms | c=1 p99 ms | c=32 requests/s, metered / plain | target |",
        "|---|---:|---:|---:|---|",
    ]
    for config in CONFIGS[1:]:
        difference = differences[config]
        lines.append(
            f"| {config} | **{ranged(difference['c1_p50_ms'], 2, True)}** | {ranged(difference['c1_p99_ms'], 1, True)}"
            f" | {ranged(difference['c32_requests_per_s_ratio'], 2)} | p50 <= 1 ms |"
        )
    lines += [
        "",
        "Per round (c=1 p50 ms / c=32 requests/s):",
        "",
        "| round | order | " + " | ".join(CONFIGS) + " |",
        "|---|---|" + "---:|" * len(CONFIGS),
    ]
    for number, measured in enumerate(gate["rounds"], 1):
        cells = [
            f"{_num(measured['c1'][c]['p50_ms'], 2)} / {_num(measured['c32'][c]['requests_per_s'], 1)}" for c in CONFIGS
        ]
        lines.append(f"| {number} | {', '.join(measured['order'])} | " + " | ".join(cells) + " |")
    verdict = "exact" if check["exact"] else "**MISMATCH**"
    lines += [
        "",
        f"Usage rows ({verdict}): {check['requests_sent_metered']} requests sent with a key (warm-ups included),"
        f" {check['rows_before_stop']} rows in the store {gate['rows_wait_s']:.1f} s after the measurements ended,"
        f" {check['rows_after_stop']} after the gateway stopped; per key: "
        + "; ".join(
            f"{key} sent {v['sent']}, rows {v['rows_before_stop']}/{v['rows_after_stop']}"
            for key, v in check["per_key"].items()
        )
        + f". Rows without a key: {check['rows_without_key']}; the plain gateway's store: {check['plain_store_rows']}."
        f" Answers by status: {json.dumps(gate['sent']['statuses'])}.",
        "",
        "`python -m benchmarks.metering` (see its docstring for the method); JSON beside this file.",
        "",
    ]
    return "\n".join(lines)


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
    results["header"]["machine"]["load_average_at_end"] = _load_average()
    results["wall_time_s"] = time.perf_counter() - started
    return results


# ----- helpers -----


def _load_average() -> list[float]:
    return [round(x, 2) for x in psutil.getloadavg()]


def _num(value: float | None, digits: int, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


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
