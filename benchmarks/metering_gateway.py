"""The metering benchmark's measurement: the two gateways and their stores, the keys made before they
start, the load generators (one per configuration; the keyed ones send `Authorization: Bearer
<key>`), the interleaved rounds and the check of the usage rows against the requests sent.

See `benchmarks.metering` for the method; `measure_gateway` starts everything on an `ExitStack`
that stops it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks import load
from benchmarks.host import load_average, stop_on_sigterm
from benchmarks.load import LoadGenerator
from benchmarks.metering_figures import _num, added
from benchmarks.metering_plan import (
    APPS,
    BODY,
    BUDGET_USD,
    C1_WARMUP,
    C32,
    C32_WARMUP,
    CONFIGS,
    HTTP_TIMEOUT_S,
    KEY_ENV,
    MODEL_ID,
    THREADS,
    Plan,
)
from benchmarks.metrics import http_window
from benchmarks.servers import ROOT, WORK_DIR
from benchmarks.workloads import local_entries

logger = logging.getLogger("benchmarks.metering")


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


# ----- load and the rounds -----


class KeyedLoadGenerator(LoadGenerator):
    """`benchmarks.load`'s process whose requests carry `Authorization: Bearer <key>`.

    Its jobs have no headers, so this process (`python -m benchmarks.metering --load-generator`,
    which calls `keyed_load_generator`) runs the same job loop with httpx's AsyncClient swapped for
    one that sends the key on every request.
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
        signal.signal(signal.SIGTERM, stop_on_sigterm)
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
            measured: dict[str, Any] = {"order": list(order), "load_average": load_average()}
            for name, measure in (("c1", measure_c1), ("c32", measure_c32)):
                measured[name] = {c: measure(loadgens[c], sent, c, urls[c], plan) for c in order}
            measured["load_average_end"] = load_average()
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


def log_round(number: int, measured: dict[str, Any]) -> None:
    c1, c32 = measured["c1"], measured["c32"]
    logger.info(
        "round %d (load %s): c=1 p50 %s ms; c=32 %s requests/s",
        number,
        measured["load_average"][0],
        ", ".join(f"{config} {_num(c1[config]['p50_ms'], 2)}" for config in CONFIGS),
        ", ".join(f"{config} {_num(c32[config]['requests_per_s'], 1)}" for config in CONFIGS),
    )


# ----- the usage check -----


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
