"""Run the whole benchmark in one go and write `benchmarks/results/latest.{json,md,png}`.

    python -m benchmarks.run            # the full run (`make bench`): ~35-40 minutes on 2 cores (estimate)
    python -m benchmarks.run --quick    # a smoke run, windows of about one model run: NOT valid results
    python -m benchmarks.run --workload siglip2_embed   # one real-size workload (repeatable)

Phases, one after another, on one local Ray (no dashboard) whose HTTP proxy listens on 127.0.0.1:

1. Tiny SigLIP2 (checkpoints/tiny), three one-model gateway apps (batched, `max_batch_size: 1`,
   `coming_soon`): the gateway's own costs. The cold start of the zero-replica model; then rounds
   of: the replica's own `predict` called in-process, the same text embedding over HTTP at
   concurrency 1 with batching on and off, and at concurrency 32 (the no-op ceiling).
2. Each real-size workload (`benchmarks.workloads`): the raw model in a plain in-process loop at
   its best batch size (probed among 1, 8 and 16 first); the gateway with that batch size and with
   `max_batch_size: 1` (two apps, each holding only this model); the naive server; LitServe with
   the gateway's batch settings. Every system is started once and reused. Then one model run at
   the chosen batch size and one of a single item are timed, and every window is sized from them:
   it spans `MIN_RUNS` (10) runs of the system's own model call (the headline batch for the raw
   loop, the gateway and LitServe; one item for the two systems that never batch), after a warm-up
   of several runs. Rounds interleave the systems (raw, gateway, gateway unbatched, naive,
   LitServe), one under load at a time, at the workload's headline concurrency; ratios are taken
   within a round and summarised by their median and range, and checked (`metrics.validity`): a
   window of fewer than 10 runs, a served system above 1.05 of the raw loop, or a ratio whose
   rounds spread wider than max/min 1.15 is flagged in the output and in `latest.json`, not
   reported as a result. At least two rounds are measured; a third, and the other concurrencies of
   the sweep (shorter windows, latency by concurrency), only within the time budget. Peer servers
   not under test are paused (SIGSTOP), so their idle loops never run beside another system.

Every model runs with two torch threads on the machine's cores; the gateway's model replica asks
Ray for 2 CPUs. Everything started here is stopped on the way out, also after an error.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from benchmarks import models, report
from benchmarks.load import LoadGenerator
from benchmarks.metrics import (
    MAX_RATIO_VS_RAW,
    MAX_ROUND_SPREAD,
    MIN_RUNS,
    http_window,
    percentiles,
    runs_spanned,
    window_seconds,
)
from benchmarks.servers import (
    WORK_DIR,
    GatewayStack,
    PeerServer,
    batch_log_stats,
    cpu_seconds,
    litserve_server,
    naive_server,
    ray_part,
    rss_mb,
)
from benchmarks.workloads import (
    CAPTION_TOKENS,
    FILL_WAIT_RATIO,
    PATCHES,
    WORKLOADS,
    ModelRunner,
    Workload,
    decode_data_url,
)

logger = logging.getLogger("benchmarks.run")

THREADS = 2
"""Torch threads of every system, and the CPUs the gateway's model replica asks Ray for."""
MAX_ONGOING = 64
"""The model deployment's `max_ongoing_requests`: above every concurrency, so batches can fill and
the counters can be read while a window runs."""
TINY_TEXT = "a photo of a cat sitting on a wooden table"
STANDBY_WAIT_S = 120
"""How long the cold start waits for the zero-replica model's standby worker to be ready."""
TINY_MODELS = {
    "batched": "bench/tiny-siglip2",
    "unbatched": "bench/tiny-siglip2-unbatched",
    "cold": "bench/tiny-siglip2-cold",
    "cold_plain": "bench/tiny-siglip2-cold-no-standby",
}
SYSTEMS = ("gateway", "gateway_unbatched", "naive", "litserve")


@dataclass(frozen=True)
class WorkloadPlan:
    """How one workload is measured.

    Windows are given in model runs, not seconds: before the rounds, `timing_runs` raw runs at the
    chosen batch size (and at batch size 1) are timed, and every window spans `runs` runs of the
    system's own model call (the headline batch for the raw loop, the gateway and LitServe; one item
    for the gateway with `max_batch_size: 1` and the naive server), at least `min_window_s`. Warm-ups
    last `warmup_runs` runs of the headline batch; sweep windows (latency by concurrency, not used
    for ratios) span `sweep_runs`. `max_job_s` only bounds a window that hangs.
    """

    workload: str
    headline: int
    concurrencies: tuple[int, ...]
    runs: float
    warmup_runs: float
    sweep_runs: float
    min_window_s: float
    probe_s: float
    max_job_s: float
    probe_sizes: tuple[int, ...] = (1, 8, 16)
    timing_runs: int = 3


@dataclass(frozen=True)
class Plan:
    """The whole run: rounds, windows and the time budget.

    `min_rounds` rounds are always measured; a further round (up to `rounds`) and the sweep only when
    the time they are estimated to take fits `budget_s`. `quick` marks every result as not valid for
    comparison.
    """

    rounds: int
    tiny_window_s: float
    tiny_in_process_s: float
    workloads: tuple[WorkloadPlan, ...]
    budget_s: float
    min_rounds: int = 2
    quick: bool = False
    notes: list[str] = field(default_factory=list)


FULL = Plan(
    rounds=3,
    tiny_window_s=3.0,
    tiny_in_process_s=2.0,
    workloads=(
        WorkloadPlan(
            "siglip2_embed",
            32,
            (1, 8, 32),
            runs=MIN_RUNS,
            warmup_runs=3,
            sweep_runs=4,
            min_window_s=10.0,
            probe_s=2.5,
            max_job_s=600.0,
        ),
        WorkloadPlan(
            "blip_caption",
            8,
            (1, 8),
            runs=MIN_RUNS,
            warmup_runs=1.5,
            sweep_runs=2,
            min_window_s=10.0,
            probe_s=2.0,
            max_job_s=900.0,
        ),
    ),
    budget_s=26 * 60,
    notes=[
        (
            "BLIP is swept at concurrency 1 and 8 only: on 2 cores one caption takes ~2 s, so at 32 a request"
            " waits 40-70 s."
        ),
        (
            "The batch size of the raw loop, the gateway and LitServe is the best of the probed sizes that the"
            " headline concurrency can fill (all probed sizes are in probe_items_per_s)."
        ),
        (
            f"Every headline window spans at least {MIN_RUNS} runs of the system's own model call, sized from"
            " timed raw runs (run_s); warm-ups last several headline runs. A window measures from the first"
            " response after its warm-up until the last request issued in the window has answered (see"
            " benchmarks/metrics.py). Sweep windows are shorter (latency by concurrency, not used for ratios)."
        ),
        (
            f"A ratio is flagged, not reported as a result, when a window spans fewer than {MIN_RUNS} runs,"
            f" a served system is above {MAX_RATIO_VS_RAW} of the raw loop, or its rounds spread wider than"
            f" max/min {MAX_ROUND_SPREAD} (see `validity` in latest.json)."
        ),
        (
            "Peer servers not under test are paused (SIGSTOP) so their idle loops do not run beside the system"
            " under test; Ray cannot be paused, its idle CPU is in the 'other processes' column."
        ),
    ],
)
QUICK = Plan(
    rounds=2,
    tiny_window_s=1.0,
    tiny_in_process_s=0.5,
    workloads=(
        WorkloadPlan(
            "siglip2_embed",
            8,
            (1, 8),
            runs=1,
            warmup_runs=0,
            sweep_runs=1,
            min_window_s=1.0,
            probe_s=0.5,
            max_job_s=120.0,
            probe_sizes=(1, 8),
            timing_runs=1,
        ),
        WorkloadPlan(
            "blip_caption",
            2,
            (2,),
            runs=1,
            warmup_runs=0,
            sweep_runs=1,
            min_window_s=0.5,
            probe_s=0.5,
            max_job_s=240.0,
            probe_sizes=(1, 2),
            timing_runs=1,
        ),
    ),
    budget_s=8 * 60,
    quick=True,
    notes=["--quick: a smoke run with windows of about one model run; its numbers are NOT valid for comparison."],
)


@dataclass
class HttpSystem:
    """A system measured over HTTP: where to send requests and, for the gateway, its replica's counters."""

    name: str
    url: str
    stats: Callable[[], dict[str, Any]] | None = None


class Benchmark:
    """Holds everything started during a run, so that all of it is stopped at the end."""

    def __init__(self, plan: Plan, ray_env: dict[str, str] | None = None) -> None:
        self.plan = plan
        self.ray_env = ray_env or {}
        self.started = time.perf_counter()
        self.exit = contextlib.ExitStack()
        self.loadgen: LoadGenerator | None = None
        self.gateway: GatewayStack | None = None
        self.peers: dict[str, PeerServer] = {}
        self.apps: dict[str, str] = {}
        """System name -> Serve application of the gateway apps deployed now."""

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def over_budget(self) -> bool:
        return self.elapsed() > self.plan.budget_s

    # ----- the run -----

    def run(self) -> dict[str, Any]:
        started_at = datetime.now(UTC)
        checkpoints = models.build_all()
        with self.exit:
            self.loadgen = LoadGenerator()
            self.exit.callback(self.loadgen.close)
            self.gateway = GatewayStack(num_cpus=8, env=self.ray_env)
            self.exit.callback(self.gateway.shutdown)
            # After ray.init, which installs a SIGTERM handler that ends the process without cleanup.
            signal.signal(signal.SIGTERM, _stop_on_sigterm)
            results: dict[str, Any] = {"tiny": self.measure_tiny()}
            for workload_plan in self.plan.workloads:
                results[workload_plan.workload] = self.measure_workload(workload_plan, checkpoints)
        results["header"] = header(self.plan, started_at, self.elapsed(), self.ray_env)
        return results

    # ----- the gateway's own costs, with the tiny model -----

    def measure_tiny(self) -> dict[str, Any]:
        """The gateway's own costs, with the tiny SigLIP2 checkpoint in four one-model apps:
        batched, `max_batch_size: 1`, and two `coming_soon` ones (zero replicas, for the cold start
        with a standby worker and without)."""
        from deployments.siglip2 import Siglip2, TextsItem

        assert self.gateway and self.loadgen
        source = models.TINY_DIR / "siglip2"
        entries = {
            "gateway": tiny_entry(TINY_MODELS["batched"], source, max_batch_size=8, status="live"),
            "gateway_unbatched": tiny_entry(TINY_MODELS["unbatched"], source, max_batch_size=1, status="live"),
            "gateway_cold": tiny_entry(TINY_MODELS["cold"], source, max_batch_size=8, status="coming_soon"),
            "gateway_cold_plain": tiny_entry(TINY_MODELS["cold_plain"], source, 8, status="coming_soon"),
        }
        entries["gateway_cold_plain"]["standby_worker"] = False
        # a fraction of a CPU: a fourth tiny replica's whole CPUs would not fit the benchmark's Ray
        # (its torch threads are set apart, by `torch_threads`)
        entries["gateway_cold_plain"]["deployment"]["ray_actor_options"] = {"num_cpus": 0.5}
        self.apps = {system: f"bench-tiny-{system}" for system in entries}
        try:
            for system, entry in entries.items():
                self.gateway.deploy(
                    self.apps[system], gateway_args([entry], self.apps[system]), f"/{self.apps[system]}"
                )
            urls = {system: f"{self.gateway.url}/{app}" for system, app in self.apps.items()}
            systems = {
                name: HttpSystem(name, f"{urls[name]}/v1/embeddings") for name in ("gateway", "gateway_unbatched")
            }
            bodies = {name: {"model": entries[name]["id"], "input": TINY_TEXT} for name in systems}
            for name, system in systems.items():
                self.http_window(system, bodies[name], 8, 0.0, 0.0, 60)
            standby = self.wait_for_standby(STANDBY_WAIT_S)
            cold = {
                "standby": {
                    **self.cold_start(urls["gateway_cold"], self.apps["gateway_cold"], entries["gateway_cold"]),
                    **standby,
                }
            }
            cold["no_standby"] = self.cold_start(
                urls["gateway_cold_plain"], self.apps["gateway_cold_plain"], entries["gateway_cold_plain"]
            )
            in_process = Siglip2(entries["gateway"], str(source))
            item = TextsItem([TINY_TEXT])
            rounds = []
            for number in range(self.plan.rounds):
                in_process_latency = time_calls(
                    lambda: predict_in_process(in_process, item), self.plan.tiny_in_process_s
                )
                measured = {"in_process": percentiles(in_process_latency)}
                pairs = [("gateway", "http_c1_batched"), ("gateway_unbatched", "http_c1_unbatched")]
                for name, key in pairs if number % 2 == 0 else reversed(pairs):
                    measured[key] = self.http_window(systems[name], bodies[name], 1, 0.5, self.plan.tiny_window_s, 60)
                measured["http_c32_batched"] = self.http_window(
                    systems["gateway"], bodies["gateway"], 32, 0.5, self.plan.tiny_window_s, 60
                )
                batched, unbatched, local = (
                    measured["http_c1_batched"],
                    measured["http_c1_unbatched"],
                    measured["in_process"],
                )
                measured["overhead_p50_ms"] = minus(batched["p50_ms"], local["p50_ms"])
                measured["overhead_p99_ms"] = minus(batched["p99_ms"], local["p99_ms"])
                measured["overhead_unbatched_p50_ms"] = minus(unbatched["p50_ms"], local["p50_ms"])
                measured["batching_tax_p50_ms"] = minus(batched["p50_ms"], unbatched["p50_ms"])
                logger.info(
                    "tiny round %d: in-process p50 %s ms, HTTP p50 %s ms (unbatched %s), %.0f req/s at c=32",
                    number + 1,
                    local["p50_ms"],
                    batched["p50_ms"],
                    unbatched["p50_ms"],
                    measured["http_c32_batched"]["items_per_s"],
                )
                rounds.append(measured)
            memory = self.memory(self.apps)
            idle = self.idle_cpu(self.apps)
        finally:
            for app in self.apps.values():
                with contextlib.suppress(Exception):
                    self.gateway.delete(app)
            self.apps = {}
        return {"cold_start": cold, "rounds": rounds, "memory_mb": memory, "idle_cpu_percent": idle}

    def cold_start(self, url: str, app: str, entry: dict[str, Any]) -> dict[str, Any]:
        """First response over HTTP from a zero-replica model, and the load time its replica reports.

        The app's ingress answers GET /v1/models first (which never wakes a model), so the time is
        the model's wake-up and first answer, not the ingress's first request.
        """
        import httpx

        assert self.gateway
        listing = httpx.get(f"{url}/v1/models", timeout=60).json()
        replicas_before = listing["data"][0].get("replicas")
        sent_at = time.time()
        started = time.perf_counter()
        response = httpx.post(f"{url}/v1/embeddings", json={"model": entry["id"], "input": TINY_TEXT}, timeout=300)
        first_response = time.perf_counter() - started
        response.raise_for_status()
        stats = self.gateway.stats(app, deployment_name(entry["id"]))
        result = {
            "model": entry["id"],
            "replicas_before": replicas_before,
            "first_response_s": first_response,
            "model_load_s": stats["load_seconds"],
            "overhead_s": first_response - stats["load_seconds"],
            "x_cold_start_header": response.headers.get("x-cold-start"),
            # a process that had imported the model code before the request: a standby worker
            "replica_in_standby": stats["preloaded_at"] is not None and stats["preloaded_at"] < sent_at,
        }
        logger.info(
            "cold start of %s: first response %.2fs, model load %.2fs, replica in a standby worker: %s",
            entry["id"],
            result["first_response_s"],
            result["model_load_s"],
            result["replica_in_standby"],
        )
        return result

    def wait_for_standby(self, limit_s: float) -> dict[str, Any]:
        """Wait until a standby worker is idle on this machine; its resident memory."""
        import psutil

        from serve.standby import local_standbys

        started = time.monotonic()
        while not (pids := local_standbys()) and time.monotonic() - started < limit_s:
            time.sleep(0.5)
        rss = 0.0
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                rss += psutil.Process(pid).memory_info().rss / 2**20
        logger.info("standby workers %s after %.1fs, %.0f MB resident", sorted(pids), time.monotonic() - started, rss)
        return {"standby_workers": len(pids), "standby_rss_mb": rss if pids else None}

    # ----- one real-size workload -----

    def measure_workload(self, wplan: WorkloadPlan, checkpoints: dict[str, Path]) -> dict[str, Any]:
        assert self.gateway and self.loadgen
        workload = WORKLOADS[wplan.workload]
        checkpoint = checkpoints[workload.checkpoint]
        image_url = workload.image_url()
        image = decode_data_url(image_url)
        body = workload.request_body(image_url)
        logger.info("=== %s: %s from %s", workload.name, workload.model_id, checkpoint)

        runner = ModelRunner(workload, checkpoint, THREADS)
        batch, probe = probe_batch_sizes(runner, image, wplan.probe_sizes, wplan.probe_s, wplan.headline)
        logger.info("%s: best raw batch size %d (%s)", workload.name, batch, probe)
        # One model run at the headline batch size, and one of a single item (the unbatched systems'
        # run), timed after the probe warmed the model: every window is sized from these.
        run_s = {size: time_runs(runner, image, size, wplan.timing_runs) for size in sorted({batch, 1})}
        sizing = window_plan(wplan, run_s, batch)
        logger.info(
            "%s: one run takes %s s (by batch size); windows %s s, warm-ups %s s; about %.0f s a round",
            workload.name,
            {size: round(seconds, 2) for size, seconds in run_s.items()},
            {name: round(w["window_s"], 1) for name, w in sizing["systems"].items()},
            {name: round(w["warmup_s"], 1) for name, w in sizing["systems"].items()},
            sizing["round_s"],
        )
        if self.elapsed() + self.plan.min_rounds * sizing["round_s"] > self.plan.budget_s:
            logger.warning(
                "%s: %d rounds of about %.0f s each will end past the %.0f s budget (at about %.0f s)",
                workload.name,
                self.plan.min_rounds,
                sizing["round_s"],
                self.plan.budget_s,
                self.elapsed() + self.plan.min_rounds * sizing["round_s"],
            )

        skipped: list[str] = []
        apps = {
            "gateway": f"bench-{workload.checkpoint}",
            "gateway_unbatched": f"bench-{workload.checkpoint}-unbatched",
        }
        self.apps = apps
        try:
            # LitServe has a fixed batch timeout, not a share of the last run: it gets the wait the
            # gateway's fill_wait_ratio gives one raw batch of this workload.
            litserve_wait = FILL_WAIT_RATIO * run_s[batch]
            systems, startup = self.start_systems(workload, checkpoint, batch, litserve_wait)
            count_tokens = workload.family == "blip"
            for system in systems.values():
                self.http_window(system, body, 1, 0.0, 0.0, wplan.max_job_s, count_tokens)
            self.resume_peers()
            memory = self.memory(apps)
            idle = self.idle_cpu(apps)

            def window(name: str, concurrency: int, runs: float) -> dict[str, Any]:
                planned = sizing["systems"][name]
                seconds = window_seconds(planned["run_s"], runs, wplan.min_window_s)
                measured = self.http_window(
                    systems[name],
                    body,
                    concurrency,
                    planned["warmup_s"],
                    seconds,
                    job_limit_s(wplan, planned["warmup_s"], seconds, run_s[batch], concurrency),
                    count_tokens,
                )
                measured["runs"] = runs_spanned(measured.get("span_s"), planned["run_s"])
                return {**measured, "window_s": seconds, "warmup_s": planned["warmup_s"], "run_s": planned["run_s"]}

            rounds = []
            for number in range(self.plan.rounds):
                if number >= self.plan.min_rounds and self.elapsed() + sizing["round_s"] > self.plan.budget_s:
                    logger.warning("over the time budget: %s measured in %d rounds", workload.name, number)
                    skipped.append(f"round {number + 1} (of {self.plan.rounds})")
                    break
                raw_seconds = sizing["systems"]["raw"]["window_s"]
                measured = {"raw": self.raw_window(runner, image, batch, raw_seconds, wplan.runs)}
                measured["raw"]["run_s"] = run_s[batch]
                measured.update({name: window(name, wplan.headline, wplan.runs) for name in SYSTEMS})
                log_round(workload.name, number + 1, measured)
                rounds.append(measured)
            sweep = []
            for concurrency in (c for c in wplan.concurrencies if c != wplan.headline):
                for name in SYSTEMS:
                    if self.over_budget():
                        logger.warning("over the time budget: skipping %s at concurrency %d", name, concurrency)
                        skipped.append(f"{name} at concurrency {concurrency}")
                    else:
                        sweep.append(window(name, concurrency, wplan.sweep_runs))
        finally:
            for peer in self.peers.values():
                peer.stop()
            self.peers = {}
            self.apps = {}
            for app in apps.values():
                with contextlib.suppress(Exception):
                    self.gateway.delete(app)
            del runner
            gc.collect()
        return {
            "workload": workload.name,
            "model_id": workload.model_id,
            "checkpoint": str(checkpoint),
            "batch_size": batch,
            "probe_items_per_s": probe,
            "run_s": {str(size): seconds for size, seconds in run_s.items()},
            "window_plan": sizing,
            "headline_concurrency": wplan.headline,
            "min_runs": MIN_RUNS,
            "quick": self.plan.quick,
            "startup_s": startup,
            "litserve_batch_timeout_s": litserve_wait,
            "memory_mb": memory,
            "idle_cpu_percent": idle,
            "rounds": rounds,
            "sweep": sweep,
            "skipped_windows": skipped,
        }

    def start_systems(
        self, workload: Workload, checkpoint: Path, batch: int, litserve_wait_s: float
    ) -> tuple[dict[str, HttpSystem], dict[str, float]]:
        """Start the peers and deploy the two gateway apps of `self.apps` (the peers load meanwhile);
        the systems to measure, and each one's start-up seconds."""
        assert self.gateway
        batch_log = WORK_DIR / f"litserve-{workload.name}-batches.txt"
        batch_log.unlink(missing_ok=True)
        self.peers["naive"] = naive_server(workload.name, checkpoint, THREADS)
        self.peers["litserve"] = litserve_server(
            workload.name, checkpoint, THREADS, batch, litserve_wait_s, batch_log
        )
        startup: dict[str, float] = {}
        for system, prefix, size in (("gateway", "/b", batch), ("gateway_unbatched", "/u", 1)):
            args = gateway_args([workload_entry(workload, checkpoint, size)], self.apps[system])
            startup[system] = self.gateway.deploy(self.apps[system], args, prefix)
        for name, peer in self.peers.items():
            startup[name] = peer.wait_ready()
        return self.http_systems(workload, self.apps, self.peers, batch_log), startup

    def http_systems(
        self, workload: Workload, apps: dict[str, str], peers: dict[str, PeerServer], litserve_batches: Path
    ) -> dict[str, HttpSystem]:
        assert self.gateway
        name = deployment_name(workload.model_id)
        gateway = self.gateway
        return {
            "gateway": HttpSystem(
                "gateway", f"{gateway.url}/b{workload.path}", lambda: gateway.stats(apps["gateway"], name)
            ),
            "gateway_unbatched": HttpSystem(
                "gateway_unbatched",
                f"{gateway.url}/u{workload.path}",
                lambda: gateway.stats(apps["gateway_unbatched"], name),
            ),
            "naive": HttpSystem("naive", f"{peers['naive'].url}{workload.path}"),
            "litserve": HttpSystem(
                "litserve", f"{peers['litserve'].url}{workload.path}", lambda: batch_log_stats(litserve_batches)
            ),
        }

    # ----- measurement windows -----

    def raw_window(
        self, runner: ModelRunner, image: Any, batch: int, seconds: float, min_runs: float = 1
    ) -> dict[str, Any]:
        """The raw loop with every peer paused (after one unmeasured run), and the CPU time per item
        of every process meanwhile."""
        self.isolate(None)
        runner.run([image] * batch)
        cpu_before = self.cpu(self.apps)
        result = raw_window(runner, image, batch, seconds, min_runs)
        result["cpu_ms_per_item"] = cpu_per_item(cpu_before, self.cpu(self.apps), result["items"])
        return result

    def isolate(self, active: str | None) -> None:
        """Resume the peer server named `active` and pause the others, so that no idle peer runs beside
        the system under test (LitServe's batching worker polls its queue every millisecond)."""
        for name, peer in self.peers.items():
            if name == active:
                peer.resume()
            else:
                peer.pause()

    def resume_peers(self) -> None:
        for peer in self.peers.values():
            peer.resume()

    def http_window(
        self,
        system: HttpSystem,
        body: dict[str, Any],
        concurrency: int,
        warmup_s: float,
        window_s: float,
        max_s: float,
        count_tokens: bool = False,
    ) -> dict[str, Any]:
        """One load-generator job against `system`; with the replica's mean batch size for the gateway."""
        assert self.loadgen
        job = {
            "url": system.url,
            "body": body,
            "concurrency": concurrency,
            "warmup_s": warmup_s,
            "window_s": window_s,
            "max_s": max_s,
            "timeout_s": max_s,
            "count_tokens": count_tokens,
        }
        self.isolate(system.name)
        before: dict[str, Any] = {}
        cpu_before: dict[str, float] = {}

        def on_measuring() -> None:
            cpu_before.update(self.cpu(self.apps))
            if system.stats:
                before.update(system.stats())

        summary = http_window(self.loadgen.run(job, on_measuring))
        if system.stats and before:
            after = system.stats()
            batches = after["batches"] - before["batches"]
            summary["model_runs"] = batches
            summary["mean_batch_size"] = (after["items"] - before["items"]) / batches if batches else None
        if cpu_before and summary.get("completed_after_start"):
            summary["cpu_ms_per_item"] = cpu_per_item(cpu_before, self.cpu(self.apps), summary["completed_after_start"])
        if summary["errors"]:
            logger.warning("%s at concurrency %d: %d failed requests", system.name, concurrency, summary["errors"])
        logger.debug(
            "%s c=%d: %.2f items/s, p50 %s ms, batch %s, %d requests in %.1fs",
            system.name,
            concurrency,
            summary["items_per_s"],
            summary["p50_ms"],
            summary.get("mean_batch_size"),
            summary["requests"],
            summary["elapsed_s"],
        )
        return {"system": system.name, "concurrency": concurrency, **summary}

    def parts(self, apps: dict[str, str]) -> dict[str, list[psutil.Process]]:
        """Every process of the local stack, by part: Ray's parts (see `ray_part`), each peer, the load
        generator and this driver (which runs the raw loop)."""
        driver = psutil.Process()
        parts: dict[str, list[psutil.Process]] = defaultdict(list)
        parts["driver"].append(driver)
        for name, peer in self.peers.items():
            parts[name] = peer.processes()
        excluded = {p.pid for name in self.peers for p in parts[name]}
        if self.loadgen:
            excluded.add(self.loadgen.pid)
            with contextlib.suppress(psutil.Error):
                parts["load_generator"].append(psutil.Process(self.loadgen.pid))
        app_systems = {app: system for system, app in apps.items()}
        for process in driver.children(recursive=True):
            if process.pid not in excluded:
                parts[ray_part(process, app_systems)].append(process)
        return parts

    def memory(self, apps: dict[str, str]) -> dict[str, float]:
        """Summed RSS (MB) per part of the local stack, now; `gateway` is Ray plus the batched app."""
        parts = self.parts(apps)
        memory = {name: rss_mb(processes) for name, processes in sorted(parts.items())}
        ray = [name for name in memory if name.startswith("ray_")]
        memory["gateway"] = sum(memory[name] for name in (*ray, "gateway_ingress", "gateway_model") if name in memory)
        memory["whole_stack"] = rss_mb([p for processes in parts.values() for p in processes])
        return memory

    def cpu(self, apps: dict[str, str]) -> dict[str, float]:
        """CPU seconds used so far per part of the local stack."""
        return {name: cpu_seconds(processes) for name, processes in self.parts(apps).items()}

    def idle_cpu(self, apps: dict[str, str], seconds: float = 3.0) -> dict[str, float]:
        """Per part, the share of one core it uses while no system is under load (in %)."""
        before = self.cpu(apps)
        time.sleep(seconds)
        after = self.cpu(apps)
        idle = {
            part: round(100 * (after[part] - before[part]) / seconds, 1)
            for part in sorted(before.keys() & after.keys())
        }
        logger.info("idle CPU, %% of a core: %s", idle)
        return idle


# ----- helpers -----


def gateway_args(models_: list[dict[str, Any]], app: str) -> dict[str, Any]:
    """`build_app` arguments: only the given catalog entries."""
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    return {
        "models": models_,
        "gateway": {
            "request_timeout_s": 600,
            "cold_start_timeout_s": 300,
            "demand_db": str(WORK_DIR / f"{app}-demand.sqlite3"),
        },
    }


def _entry(model_id: str, source: Path, family: str, max_batch_size: int, status: str) -> dict[str, Any]:
    return {
        "id": model_id,
        "source": str(source),
        "family": family,
        "status": status,
        "device": "cpu",
        "dtype": "float32",
        "torch_threads": THREADS,
        "batching": {"max_batch_size": max_batch_size},
        "deployment": {"max_ongoing_requests": MAX_ONGOING, "ray_actor_options": {"num_cpus": THREADS}},
    }


def workload_entry(workload: Workload, checkpoint: Path, max_batch_size: int) -> dict[str, Any]:
    """The catalog entry of a real-size workload model, live with one replica."""
    entry = _entry(workload.model_id, checkpoint, workload.family, max_batch_size, "live")
    if workload.family == "siglip2":
        entry["options"] = {"max_num_patches": PATCHES, "min_num_patches": 16, "max_num_patches_cap": PATCHES}
    else:
        entry["generation"] = {"max_new_tokens": CAPTION_TOKENS, "num_beams": 1}
    return entry


def tiny_entry(model_id: str, source: Path, max_batch_size: int, status: str) -> dict[str, Any]:
    """A tiny SigLIP2 entry, set up as serve/configs/local.yaml sets up tiny models (idle threads sleep)."""
    return {**_entry(model_id, source, "siglip2", max_batch_size, status), "cpu_thread_wait": "passive"}


def deployment_name(model_id: str) -> str:
    from serve.config import slug

    return slug(model_id)


def predict_in_process(model: Any, item: Any) -> Any:
    """The replica's own work for one request, without Serve: `predict` under inference mode, as the replica runs it."""
    import torch

    with torch.inference_mode():
        return model.predict([item])


def minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def time_calls(call: Callable[[], Any], seconds: float) -> list[float]:
    """Latencies (s) of back-to-back calls for about `seconds`, after five unmeasured ones."""
    for _ in range(5):
        call()
    latencies = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        t = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t)
    return latencies


def raw_window(runner: ModelRunner, image: Any, batch: int, seconds: float, min_runs: float = 1) -> dict[str, Any]:
    """The model in a plain loop in this process: whole batches for at least `seconds` and at least
    `min_runs` batches (at least one). Items over the summed run times: no window edges."""
    images = [image] * batch
    durations: list[float] = []
    started = time.perf_counter()
    while len(durations) < max(1, min_runs) or time.perf_counter() - started < seconds:
        t = time.perf_counter()
        runner.run(images)
        durations.append(time.perf_counter() - t)
    items = batch * len(durations)
    return {
        "system": "raw",
        "batch_size": batch,
        "batches": len(durations),
        "runs": len(durations),
        "items": items,
        "items_per_s": items / sum(durations),
        **percentiles(durations),
    }


def time_runs(runner: ModelRunner, image: Any, batch: int, runs: int) -> float:
    """The median duration (s) of `runs` back-to-back model runs of `batch` items (after the probe warmed the model)."""
    images = [image] * batch
    durations = []
    for _ in range(max(1, runs)):
        started = time.perf_counter()
        runner.run(images)
        durations.append(time.perf_counter() - started)
    return statistics.median(durations)


def system_batch(system: str, batch: int) -> int:
    """The items of one model run of `system`: the headline batch, or 1 for the systems that never batch."""
    return 1 if system in ("gateway_unbatched", "naive") else batch


def window_plan(wplan: WorkloadPlan, run_s: dict[int, float], batch: int) -> dict[str, Any]:
    """Each system's run, warm-up and window seconds from the timed runs, and a round's estimated duration.

    A system's unit is its own model run: the headline batch for the raw loop, the gateway and
    LitServe, one item for the systems that never batch. Its window spans `wplan.runs` of them (at
    least `min_window_s`), its warm-up `wplan.warmup_runs`; the estimate adds the drain (one run per
    batch of the requests in flight when the window ends).
    """
    systems = {}
    round_s = 0.0
    for system in ("raw", *SYSTEMS):
        size = system_batch(system, batch)
        own_run_s = run_s[size]
        window_s = window_seconds(own_run_s, wplan.runs, wplan.min_window_s)
        # the raw loop warms up with one unmeasured run; an HTTP system with `warmup_runs` of its own
        warmup_s = own_run_s if system == "raw" else wplan.warmup_runs * own_run_s
        drain_s = 0.0 if system == "raw" else own_run_s * math.ceil(wplan.headline / size)
        systems[system] = {"run_s": own_run_s, "window_s": window_s, "warmup_s": warmup_s}
        round_s += warmup_s + window_s + drain_s
    return {"runs": wplan.runs, "warmup_runs": wplan.warmup_runs, "systems": systems, "round_s": round_s}


def job_limit_s(wplan: WorkloadPlan, warmup_s: float, window_s: float, run_s: float, concurrency: int) -> float:
    """A bound on one load-generator job that only a hung system reaches: warm-up, window and a drain
    of one headline run per request in flight, twice over; never below the plan's `max_job_s`."""
    return max(wplan.max_job_s, 2 * (warmup_s + window_s + run_s * concurrency) + 60)


def cpu_per_item(before: dict[str, float], after: dict[str, float], items: int) -> dict[str, float]:
    """CPU ms per item of each process part between two `Benchmark.cpu` readings."""
    return {
        part: 1000 * (after[part] - before[part]) / items
        for part in sorted(before.keys() & after.keys())
        if after[part] - before[part] > 0.001
    }


def probe_batch_sizes(
    runner: ModelRunner, image: Any, sizes: tuple[int, ...], seconds: float, concurrency: int
) -> tuple[int, dict[int, float]]:
    """Items/s of the raw loop at each batch size, and the size to use.

    Only sizes that `concurrency` requests can fill are candidates. The smallest size within 3% of
    the best wins: a larger batch costs latency, and 3% is within the noise of a short probe.
    """
    runner.run([image])
    rates = {size: raw_window(runner, image, size, seconds)["items_per_s"] for size in sizes}
    candidates = {size: rate for size, rate in rates.items() if size <= concurrency} or rates
    best = max(candidates.values())
    return min(size for size, rate in candidates.items() if rate >= 0.97 * best), rates


def log_round(workload: str, number: int, measured: dict[str, Any]) -> None:
    raw = measured["raw"]["items_per_s"]
    parts = [f"raw {raw:.2f}/s ({measured['raw']['runs']} runs)"]
    for name in SYSTEMS:
        window = measured[name]
        runs = window.get("runs")
        shown = "?" if runs is None else f"{runs:.1f}"
        parts.append(f"{name} {window['items_per_s']:.2f}/s ({window['items_per_s'] / raw:.0%}, {shown} runs)")
    logger.info("%s round %d: %s", workload, number, ", ".join(parts))


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=models.ROOT, text=True).strip()
        # The results of an earlier run are not a change to what is measured.
        changed = ["git", "diff", "--quiet", "HEAD", "--", ".", ":(exclude)benchmarks/results"]
        dirty = subprocess.run(changed, cwd=models.ROOT, check=False).returncode != 0
        return commit + ("-dirty" if dirty else "")
    return None


def header(plan: Plan, started_at: datetime, wall_s: float, ray_env: dict[str, str]) -> dict[str, Any]:
    """Machine, time and versions of this run."""
    packages = ("torch", "transformers", "ray", "litserve", "fastapi", "uvicorn", "httpx", "starlette", "pydantic")
    return {
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_time_s": wall_s,
        "machine": {
            "cpu": _cpu_model(),
            "logical_cpus": psutil.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(),
            "load_average_at_end": [round(x, 2) for x in psutil.getloadavg()],
        },
        "python": platform.python_version(),
        "versions": {package: _version(package) for package in packages},
        "git_commit": _git_commit(),
        "plan": asdict(plan),
        "ray_env": ray_env,
        "threads_per_system": THREADS,
        "fill_wait_ratio": FILL_WAIT_RATIO,
        "caption_tokens": CAPTION_TOKENS,
        "siglip2_patches": PATCHES,
    }


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
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
        "--ray-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the Ray workers, e.g. a Serve setting to compare (repeatable)",
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
    results = Benchmark(plan, ray_env).run()
    if args.tiny_only:
        print(json.dumps(report.tiny_summary(results["tiny"]), indent=2))
        return 0
    summary = report.write(results, args.results)
    print(summary)
    logger.info("wall time %.0fs; results in %s", results["header"]["wall_time_s"], args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
