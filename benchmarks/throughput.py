"""The throughput phase of `benchmarks.run`: the gateway's own costs on a tiny model, then each real-size
workload against the raw loop and the peers (see `benchmarks.run`'s docstring for the method).

`Benchmark(plan).run()` starts one local Ray (`GatewayStack`), the load generator and, per workload,
the peer servers, and stops all of them before it returns, also after an error. Each part (the tiny
model, every workload) is guarded: one that fails is recorded as `{"error": ...}` and the next runs.

This module holds the run and the real-size workloads (batch-size probe, timed runs, windows sized
from them, interleaved rounds, the concurrency sweep); the tiny model's part is in
`benchmarks.throughput_tiny`, and the harness both measure with (windows, process accounting, the
catalog entries deployed) in `benchmarks.throughput_harness`.
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks import models
from benchmarks.host import stop_on_sigterm
from benchmarks.load import LoadGenerator
from benchmarks.metrics import runs_spanned, window_seconds
from benchmarks.plan import SYSTEMS, THREADS, WorkloadPlan, job_limit_s, probe_sizes, system_batch, window_plan
from benchmarks.servers import WORK_DIR, GatewayStack, PeerServer, batch_log_stats, litserve_server, naive_server
from benchmarks.throughput_harness import HttpSystem, deployment_name, gateway_args, timed_runs, workload_entry
from benchmarks.throughput_tiny import TinyCosts
from benchmarks.workloads import FILL_WAIT_RATIO, WORKLOADS, ModelRunner, Workload, decode_data_url

logger = logging.getLogger("benchmarks.run")

REDEPLOY_EXTRA_S = 10.0
"""Beyond its measured start-up, what deploying and deleting the unbatched app around its window adds
to a round (the unmeasured first request, the deletion)."""
PROBE_RUNS = 2
"""Passes of the probe over all its batch sizes in turn, each at least one measured run of every size
(after one unmeasured run of each)."""


class Benchmark(TinyCosts):
    """The throughput phase: the tiny model's part (`TinyCosts`), then every real-size workload of the
    plan. What either starts is held by the harness (`Harness`) and stopped at the end of `run`."""

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
            signal.signal(signal.SIGTERM, stop_on_sigterm)
            results["tiny"] = guarded("tiny", self.measure_tiny)
            for workload_plan in self.plan.workloads:
                results[workload_plan.workload] = guarded(
                    workload_plan.workload, lambda w=workload_plan: self.measure_workload(w, checkpoints)
                )
        return results

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
        batch, probe, probed_run_s = probe_batch_sizes(
            runner, image, probe_sizes(wplan), wplan.probe_s, wplan.headline
        )
        logger.info("%s: best raw batch size %d (%s)", workload.name, batch, probe)
        # One model run at the headline batch size, and one of a single item (the unbatched systems'
        # run), from the probe's measured runs (timed here for a size it did not try): every window
        # is sized from these.
        run_s = {
            size: probed_run_s.get(size) or time_runs(runner, image, size, wplan.timing_runs)
            for size in sorted({batch, 1})
        }
        sizing = window_plan(wplan, run_s, batch)
        logger.info(
            "%s: one run takes %s s (by batch size); windows %s s, warm-ups %s s; about %.0f s a round",
            workload.name,
            {size: round(seconds, 2) for size, seconds in run_s.items()},
            {name: round(w["window_s"], 1) for name, w in sizing["systems"].items()},
            {name: round(w["warmup_s"], 1) for name, w in sizing["systems"].items()},
            sizing["round_s"],
        )
        max_rounds, min_rounds = wplan.round_counts(self.plan)
        if self.elapsed() + min_rounds * sizing["round_s"] > self.plan.budget_s:
            logger.warning(
                "%s: %d rounds of about %.0f s each will end past the %.0f s budget (at about %.0f s)",
                workload.name,
                min_rounds,
                sizing["round_s"],
                self.plan.budget_s,
                self.elapsed() + min_rounds * sizing["round_s"],
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
            # From here on the unbatched app runs only around its own windows (`unbatched_deployed`):
            # idle beside the raw loop and the batched gateway, its ingress and model replicas slowed
            # the raw loop by ~7 % (SigLIP2 batch 8: 4.7 s a run beside one app, 5.0 s beside two),
            # while a user's process, and `benchmarks.check`, run beside the one gateway app.
            self.gateway.delete(apps["gateway_unbatched"])
            sizing["round_s"] += startup["gateway_unbatched"] + REDEPLOY_EXTRA_S

            def window(name: str, concurrency: int, runs: float) -> dict[str, Any]:
                planned = sizing["systems"][name]
                seconds = window_seconds(planned["run_s"], runs, wplan.min_window_s)
                with self.unbatched_deployed(systems[name], body, wplan, count_tokens):
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
            raw_seconds = sizing["systems"]["raw"]["window_s"]
            for number in range(max_rounds):
                if number >= min_rounds and not self.fits(sizing["round_s"], workload.name):
                    logger.warning("over the time budget: %s measured in %d rounds", workload.name, number)
                    skipped.append(f"round {number + 1} (of {max_rounds})")
                    break
                measured = {"raw": self.raw_window(runner, image, batch, raw_seconds, wplan.runs)}
                measured["gateway"] = window("gateway", wplan.headline, wplan.runs)
                if wplan.raw_after_gateway:
                    after = self.raw_window(runner, image, batch, raw_seconds, wplan.runs)
                    measured["raw"] = raw_both_sides(measured["raw"], after)
                measured["raw"]["run_s"] = run_s[batch]
                for name in (name for name in SYSTEMS if name != "gateway"):
                    measured[name] = window(name, wplan.headline, wplan.runs)
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
            self.app_args = {}
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
            "min_runs": wplan.min_runs,
            "raw_after_gateway": wplan.raw_after_gateway,
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
            self.app_args[system] = (args, prefix)
            startup[system] = self.gateway.deploy(self.apps[system], *self.app_args[system])
        for name, peer in self.peers.items():
            startup[name] = peer.wait_ready()
        return self.http_systems(workload, self.apps, self.peers, batch_log), startup

    @contextlib.contextmanager
    def unbatched_deployed(
        self, system: HttpSystem, body: dict[str, Any], wplan: WorkloadPlan, count_tokens: bool
    ) -> Iterator[None]:
        """When `system` is the unbatched gateway, its app deployed (and answering: one unmeasured
        request) for the block's duration, deleted after it; for any other system, nothing."""
        if system.name != "gateway_unbatched":
            yield
            return
        assert self.gateway
        app = self.apps["gateway_unbatched"]
        self.gateway.deploy(app, *self.app_args["gateway_unbatched"])
        try:
            self.http_window(system, body, 1, 0.0, 0.0, wplan.max_job_s, count_tokens)
            yield
        finally:
            self.gateway.delete(app)

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


# ----- helpers -----


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




def probe_batch_sizes(
    runner: ModelRunner, image: Any, sizes: tuple[int, ...], seconds: float, concurrency: int
) -> tuple[int, dict[int, float], dict[int, float]]:
    """Items/s of the raw loop at each batch size, the size to use, and each size's median run (s).

    Only sizes that `concurrency` requests can fill are probed (all of them when none can). Each
    size gets one unmeasured run first (a new input shape's first run sets up its kernels and
    buffers: a probe of one cold run made a batch of 8 look a third slower than single images, 1.30
    against 1.91 images/s for real-size SigLIP2), then `PROBE_RUNS` passes go over all the sizes in
    turn, each giving every size at least one run and `seconds / PROBE_RUNS`: sizes probed one after
    the other on a VM whose speed drifts by ~30 % within minutes favoured whichever size ran in a
    fast minute (batch 1 probed first, right after the tiny section's apps were deleted, at 1.11
    against 1.60 images/s at batch 8, where an earlier run found them equal). The smallest size
    within 3 % of the best wins: a larger batch costs latency, and 3 % is within a probe's noise.
    """
    candidates = tuple(size for size in sizes if size <= concurrency) or sizes
    durations: dict[int, list[float]] = {size: [] for size in candidates}
    for size in candidates:
        runner.run([image] * size)
    for _ in range(PROBE_RUNS):
        for size in candidates:
            durations[size] += timed_runs(runner, [image] * size, seconds / PROBE_RUNS)
    rates = {size: size * len(runs) / sum(runs) for size, runs in durations.items()}
    run_s = {size: statistics.median(runs) for size, runs in durations.items()}
    best = max(rates.values())
    return min(size for size, rate in rates.items() if rate >= 0.97 * best), rates, run_s


def raw_both_sides(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """One round's raw figure from the windows before and after the gateway: items over their summed
    run times, run counts added, CPU per item from the first window; each window's own rate is kept
    in `sides`."""
    seconds = before["items"] / before["items_per_s"] + after["items"] / after["items_per_s"]
    items = before["items"] + after["items"]
    return {
        **before,
        "batches": before["batches"] + after["batches"],
        "runs": before["runs"] + after["runs"],
        "items": items,
        "items_per_s": items / seconds,
        "sides": [before["items_per_s"], after["items_per_s"]],
    }


def log_round(workload: str, number: int, measured: dict[str, Any]) -> None:
    raw = measured["raw"]["items_per_s"]
    parts = [f"raw {raw:.2f}/s ({measured['raw']['runs']} runs)"]
    for name in SYSTEMS:
        window = measured[name]
        runs = window.get("runs")
        shown = "?" if runs is None else f"{runs:.1f}"
        parts.append(f"{name} {window['items_per_s']:.2f}/s ({window['items_per_s'] / raw:.0%}, {shown} runs)")
    logger.info("%s round %d: %s", workload, number, ", ".join(parts))
