"""The throughput phase's first part: the gateway's own costs, measured with the tiny SigLIP2 checkpoint
so that the model's own time is small beside them.

`TinyCosts.measure_tiny` deploys four one-model apps (batched, `max_batch_size: 1`, and two with no
replica for the cold start with a standby worker and without) and measures, per round: the replica's
own `predict()` in this process, HTTP latency at concurrency 1 through each app (the difference is
the gateway's added latency; batched minus unbatched is the batching tax), and requests/s at
concurrency 32 (the no-op ceiling). `benchmarks.report.tiny_summary` summarizes the rounds.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import psutil

from benchmarks import models
from benchmarks.metrics import percentiles
from benchmarks.plan import STANDBY_WAIT_S, TINY_MODELS, TINY_TEXT
from benchmarks.throughput_harness import Harness, HttpSystem, deployment_name, gateway_args, tiny_entry

logger = logging.getLogger("benchmarks.run")


class TinyCosts(Harness):
    """The gateway's own costs on the tiny model, measured on the harness's Ray and load generator."""

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
