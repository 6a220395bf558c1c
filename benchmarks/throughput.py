"""The throughput phase of `benchmarks.run`: the gateway's own costs on a tiny model, then each real-size
workload against the raw loop and the peers (see `benchmarks.run`'s docstring for the method).

`Benchmark(plan).run()` starts one local Ray (`GatewayStack`), the load generator and, per workload,
the peer servers, and stops all of them before it returns, also after an error. Each part (the tiny
model, every workload) is guarded: one that fails is recorded as `{"error": ...}` and the next runs.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import signal
import statistics
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from benchmarks import models
from benchmarks.load import LoadGenerator
from benchmarks.metrics import MIN_RUNS, busy_fraction, http_window, percentiles, runs_spanned, window_seconds
from benchmarks.plan import (
    MAX_ONGOING,
    STANDBY_WAIT_S,
    SYSTEMS,
    THREADS,
    TINY_MODELS,
    TINY_TEXT,
    Plan,
    WorkloadPlan,
    fits_budget,
    job_limit_s,
    probe_sizes,
    system_batch,
    window_plan,
)
from benchmarks.servers import (
    WORK_DIR,
    GatewayStack,
    PeerServer,
    batch_log_stats,
    cpu_seconds,
    fresh_database,
    litserve_server,
    naive_server,
    ray_part,
    read_at_pass_end,
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

    def fits(self, extra_s: float, workload: str) -> bool:
        """Whether an optional part of `extra_s` seconds fits the budget (see `plan.fits_budget`)."""
        return fits_budget(self.plan, self.elapsed(), extra_s, workload)

    # ----- the run -----

    def run(self) -> dict[str, Any]:
        """`{"tiny": ..., <workload>: ...}`; a part that failed is `{"error": ...}`. Ray and every
        process started here are stopped before this returns."""
        results: dict[str, Any] = {}
        with self.exit:
            checkpoints = models.build_all()
            self.loadgen = LoadGenerator()
            self.exit.callback(self.loadgen.close)
            self.gateway = GatewayStack(num_cpus=8, env=self.ray_env)
            self.exit.callback(self.gateway.shutdown)
            # After ray.init, which installs a SIGTERM handler that ends the process without cleanup.
            signal.signal(signal.SIGTERM, _stop_on_sigterm)
            results["tiny"] = guarded("tiny", self.measure_tiny)
            for workload_plan in self.plan.workloads:
                results[workload_plan.workload] = guarded(
                    workload_plan.workload, lambda w=workload_plan: self.measure_workload(w, checkpoints)
                )
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
        batch, probe = probe_batch_sizes(runner, image, probe_sizes(wplan), wplan.probe_s, wplan.headline)
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
                    run_s=planned["run_s"],
                )
                measured["runs"] = runs_spanned(measured.get("span_s"), planned["run_s"])
                return {**measured, "window_s": seconds, "warmup_s": planned["warmup_s"], "run_s": planned["run_s"]}

            rounds = []
            for number in range(self.plan.rounds):
                if number >= self.plan.min_rounds and not self.fits(sizing["round_s"], workload.name):
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
                # all systems at one concurrency or none, so that the sweep compares like with like
                sweep_s = sweep_estimate_s(wplan, sizing, concurrency, batch)
                if not self.fits(sweep_s, workload.name):
                    logger.warning(
                        "over the time budget: skipping concurrency %d of %s (about %.0f s)",
                        concurrency,
                        workload.name,
                        sweep_s,
                    )
                    skipped += [f"{name} at concurrency {concurrency}" for name in SYSTEMS]
                    continue
                sweep += [window(name, concurrency, wplan.sweep_runs) for name in SYSTEMS]
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
        self.peers["litserve"] = litserve_server(workload.name, checkpoint, THREADS, batch, litserve_wait_s, batch_log)
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
        run_s: float = 0.0,
    ) -> dict[str, Any]:
        """One load-generator job against `system`; for the gateway also its replica's mean batch size
        and the model's busy fraction (`busy`) over the window.

        The busy fraction is taken between two readings of the replica's `stats()` at the end of a
        forward pass (`read_at_pass_end`, waiting at most a few of the system's runs of `run_s`): the
        first after the warm-up, the second when the window ends, while the requests in flight still
        keep the model busy. Without `run_s` or a window, readings are taken as they come."""
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
        align_s = min(60.0, 3 * run_s + 2.0) if run_s > 0 and window_s > 0 else 0.0
        marks: dict[str, dict[str, Any]] = {}
        cpu_before: dict[str, float] = {}

        def on_measuring() -> None:
            cpu_before.update(self.cpu(self.apps))
            if system.stats:
                marks["start"] = read_at_pass_end(system.stats, align_s)

        def on_stopped() -> None:
            if system.stats and "start" in marks:
                marks["end"] = read_at_pass_end(system.stats, align_s)

        summary = http_window(self.loadgen.run(job, on_measuring, on_stopped))
        if system.stats and "start" in marks:
            before = marks["start"]["first"]
            after = system.stats()
            batches = after["batches"] - before["batches"]
            summary["model_runs"] = batches
            summary["mean_batch_size"] = (after["items"] - before["items"]) / batches if batches else None
            # the replica's own seconds in forward passes over the window's wall time (None for a
            # replica without the counters, e.g. LitServe's batch log)
            start = marks["start"]
            end = marks.get("end") or {"reading": after, "at": time.perf_counter(), "aligned": False}
            summary["busy"] = {
                **busy_fraction(start["reading"], end["reading"], end["at"] - start["at"]),
                "aligned": start["aligned"] and end["aligned"],
            }
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
    """`build_app` arguments: only the given catalog entries, with a store of their own (a new file)."""
    return {
        "models": models_,
        "gateway": {
            "request_timeout_s": 600,
            "cold_start_timeout_s": 300,
            "demand_db": fresh_database(f"{app}-demand.sqlite3"),
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


def sweep_estimate_s(wplan: WorkloadPlan, sizing: dict[str, Any], concurrency: int, batch: int) -> float:
    """Seconds the sweep windows of every served system at `concurrency` are expected to take:
    warm-up, a window of `sweep_runs` runs and the drain of the requests in flight."""
    total = 0.0
    for name in SYSTEMS:
        planned = sizing["systems"][name]
        total += planned["warmup_s"] + window_seconds(planned["run_s"], wplan.sweep_runs, wplan.min_window_s)
        total += planned["run_s"] * math.ceil(concurrency / system_batch(name, batch))
    return total


def guarded(name: str, call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`call()`, or `{"error": ..., "traceback": ...}` when it raises an Exception (logged; the run goes on)."""
    try:
        return call()
    except Exception as error:
        logger.exception("%s failed; going on with the next part", name)
        return {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(limit=8)}


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


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
