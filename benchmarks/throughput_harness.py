"""What the throughput phase (`benchmarks.throughput`) measures with, shared by its tiny-model part
(`benchmarks.throughput_tiny`) and its real-size workloads.

`Harness` holds everything a run starts (Ray's `GatewayStack`, the load generator, the peer servers,
the gateway apps deployed now) on an `ExitStack`, so that all of it is stopped at the end, and
measures windows against it: one load-generator job against an HTTP system (with the replica's
batch sizes and the model's busy fraction for the gateway), the raw loop in this process, and the
CPU time and memory of every process of the local stack. The catalog entries and `build_app`
arguments of the models it deploys are built here too (`benchmarks.check` deploys the same ones).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from benchmarks.load import LoadGenerator
from benchmarks.metrics import batch_counts, busy_fraction, http_window, percentiles
from benchmarks.plan import MAX_ONGOING, THREADS, Plan, fits_budget
from benchmarks.servers import GatewayStack, PeerServer, cpu_seconds, fresh_database, ray_part, read_at_pass_end, rss_mb
from benchmarks.workloads import CAPTION_TOKENS, PATCHES, ModelRunner, Workload

# Under the entry point's name, as the rest of the throughput phase logs: one stream for the run.
logger = logging.getLogger("benchmarks.run")


@dataclass
class HttpSystem:
    """A system measured over HTTP: where to send requests and, for the gateway, its replica's counters."""

    name: str
    url: str
    stats: Callable[[], dict[str, Any]] | None = None


class Harness:
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
        """System name -> Serve application of the gateway apps of the workload measured now."""
        self.app_args: dict[str, tuple[dict[str, Any], str]] = {}
        """System name -> `build_app` arguments and route prefix of each app in `apps`, to deploy it again."""

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def fits(self, extra_s: float, workload: str) -> bool:
        """Whether an optional part of `extra_s` seconds fits the budget (see `plan.fits_budget`)."""
        return fits_budget(self.plan, self.elapsed(), extra_s, workload)

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
            summary.update(batch_counts(before, after))
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


# ----- catalog entries and app arguments -----


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


# ----- measurement helpers -----


def timed_runs(runner: ModelRunner, images: list[Any], seconds: float, min_runs: float = 1) -> list[float]:
    """Durations (s) of back-to-back runs of `images`: at least `min_runs` (at least one), and until
    `seconds` have passed."""
    durations: list[float] = []
    started = time.perf_counter()
    while len(durations) < max(1, min_runs) or time.perf_counter() - started < seconds:
        run_started = time.perf_counter()
        runner.run(images)
        durations.append(time.perf_counter() - run_started)
    return durations


def raw_window(runner: ModelRunner, image: Any, batch: int, seconds: float, min_runs: float = 1) -> dict[str, Any]:
    """The model in a plain loop in this process: whole batches for at least `seconds` and at least
    `min_runs` batches (at least one). Items over the summed run times: no window edges."""
    durations = timed_runs(runner, [image] * batch, seconds, min_runs)
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


def cpu_per_item(before: dict[str, float], after: dict[str, float], items: int) -> dict[str, float]:
    """CPU ms per item of each process part between two `Harness.cpu` readings."""
    return {
        part: 1000 * (after[part] - before[part]) / items
        for part in sorted(before.keys() & after.keys())
        if after[part] - before[part] > 0.001
    }
