"""The photo benchmark's served systems: the gateway, the naive server and LitServe, one under load at
a time, measured in rounds beside the raw loop (`benchmarks.photo_raw`).

See `benchmarks.photo` for the method; `PhotoBench` starts everything on an `ExitStack` that
stops it again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.host import stop_on_sigterm
from benchmarks.metrics import batch_counts, busy_fraction, http_window, runs_spanned, window_seconds
from benchmarks.photo_figures import CONCURRENCY, MODELS, RAW_BATCH, SYSTEMS, THREADS, _ms, _num
from benchmarks.photo_raw import raw_c1, raw_c8, sample, summary
from benchmarks.photo_setup import FLORENCE_ID, SIGLIP_ID, Plan
from benchmarks.servers import WORK_DIR, fresh_database, read_at_pass_end

logger = logging.getLogger("benchmarks.photo")

HTTP_TIMEOUT_S = 120
APP = "photo"
"""The gateway's Serve application."""


def gateway_args(checkpoints: Path) -> dict[str, Any]:
    """`build_app` arguments: local.yaml's gateway settings and its entries of the two models, each
    live with one replica (no autoscaling) and `THREADS` torch threads."""
    import yaml

    from benchmarks.workloads import LOCAL_CONFIG, local_entries

    config = yaml.safe_load(LOCAL_CONFIG.read_text())["applications"][0]["args"]
    models = []
    for entry in local_entries([SIGLIP_ID, FLORENCE_ID]):
        deployment = {k: v for k, v in entry.get("deployment", {}).items() if k != "autoscaling_config"}
        deployment["num_replicas"] = 1
        models.append({**entry, "status": "live", "torch_threads": THREADS, "deployment": deployment})
    gateway = {**config.get("gateway", {}), "demand_db": fresh_database("photo-demand.sqlite3")}
    return {"checkpoint_dir": str(checkpoints), "gateway": gateway, "models": models}


def max_batch_sizes(args: dict[str, Any]) -> dict[str, int]:
    """Each model's `max_batch_size` in the gateway's entries (what LitServe is given)."""
    from serve.config import ModelSpec

    by_id = {entry["id"]: ModelSpec.model_validate(entry).batching.max_batch_size for entry in args["models"]}
    return {"siglip2": by_id[SIGLIP_ID], "florence2": by_id[FLORENCE_ID]}


def http_c1(url: str, body: bytes, plan: Plan) -> dict[str, Any]:
    """Sequential requests (one in flight) after `plan.warmup` unmeasured ones; each must answer 200."""
    headers = {"content-type": "application/json"}
    with httpx.Client(timeout=HTTP_TIMEOUT_S, trust_env=False) as client:

        def call() -> None:
            response = client.post(url, content=body, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"POST {url} answered {response.status_code}: {response.text[:500]}")

        return summary(
            sample(call, plan.c1_requests, plan.warmup, plan.c1_budget_s, min(plan.min_runs, plan.c1_requests))
        )


def own_run_s(system: str, run_s: dict[int, float]) -> float:
    """The duration of one model call of `system`, from the timed raw runs: a batch of 8 for the systems
    that batch (the raw loop, the gateway, LitServe), one photo for the naive server."""
    return run_s[1] if system == "naive" else run_s[RAW_BATCH]


class PhotoBench:
    """The gateway, the peers and the load generator of the served part; `stack` stops all of them."""

    def __init__(
        self,
        plan: Plan,
        photo: bytes,
        checkpoints: Path,
        runners: dict[str, Any],
        run_s: dict[str, dict[int, float]],
        peer_env: dict[str, str],
        stack: contextlib.ExitStack,
    ) -> None:
        from benchmarks.workloads import FILL_WAIT_RATIO, PHOTO_WORKLOADS, data_url

        self.plan = plan
        self.photo = photo
        self.runners = runners
        self.run_s = run_s
        self.workloads = {model: PHOTO_WORKLOADS[name] for model, name in MODELS.items()}
        url = data_url(photo)
        self.bodies = {model: workload.request_body(url) for model, workload in self.workloads.items()}
        self.encoded = {model: json.dumps(body).encode() for model, body in self.bodies.items()}
        self.args = gateway_args(checkpoints)
        self.batch_sizes = max_batch_sizes(self.args)
        self.peers: dict[tuple[str, str], Any] = {}
        self.batch_logs: dict[str, Path] = {}
        self.startup_s: dict[str, float] = {}
        self.litserve_wait_s = {model: FILL_WAIT_RATIO * run_s[model][RAW_BATCH] for model in MODELS}
        self._start(checkpoints, peer_env, stack)

    def _start(self, checkpoints: Path, peer_env: dict[str, str], stack: contextlib.ExitStack) -> None:
        from benchmarks.load import LoadGenerator
        from benchmarks.servers import GatewayStack, litserve_server, naive_server

        # The peers load their models while Ray starts.
        for model, workload in self.workloads.items():
            checkpoint = checkpoints / workload.checkpoint
            naive = naive_server(workload.name, checkpoint, THREADS, name=f"photo-naive-{model}", env=peer_env)
            stack.callback(naive.stop)
            self.peers[("naive", model)] = naive
            log = WORK_DIR / f"litserve-photo-{model}-batches.txt"
            log.unlink(missing_ok=True)
            self.batch_logs[model] = log
            litserve = litserve_server(
                workload.name,
                checkpoint,
                THREADS,
                self.batch_sizes[model],
                self.litserve_wait_s[model],
                log,
                name=f"photo-litserve-{model}",
                env=peer_env,
            )
            stack.callback(litserve.stop)
            self.peers[("litserve", model)] = litserve
        started = time.perf_counter()
        self.gateway = GatewayStack(num_cpus=8)
        stack.callback(self.gateway.shutdown)
        # After ray.init, which installs a SIGTERM handler that ends the process without cleanup.
        signal.signal(signal.SIGTERM, stop_on_sigterm)
        self.gateway.deploy(APP, self.args, "/")
        self.gateway.wait_ready("/", timeout_s=self.plan.ready_timeout_s)
        self.startup_s["gateway"] = time.perf_counter() - started
        logger.info("gateway ready %.1fs after its start", self.startup_s["gateway"])
        for (system, model), peer in self.peers.items():
            self.startup_s[f"{system}_{model}"] = peer.wait_ready(self.plan.ready_timeout_s)
        self.loadgen = LoadGenerator()
        stack.callback(self.loadgen.close)
        self.isolate(None)

    def url(self, system: str, model: str) -> str:
        base = self.gateway.url if system == "gateway" else self.peers[(system, model)].url
        return f"{base}{self.workloads[model].path}"

    def isolate(self, active: tuple[str, str] | None) -> None:
        """Resume the peer `active` (system, model) and pause every other one (SIGSTOP)."""
        for key, peer in self.peers.items():
            if key == active:
                peer.resume()
            else:
                peer.pause()

    def stats(self, model: str) -> dict[str, Any]:
        from serve.config import slug

        return self.gateway.stats(APP, slug(self.workloads[model].model_id))

    # ----- one round -----

    def measure_round(self, number: int) -> dict[str, dict[str, dict[str, Any]]]:
        """Every system at concurrency 1 and 8 for each model, one under load at a time; the order of
        models and systems is reversed every other round."""
        models = list(MODELS) if number % 2 == 0 else list(reversed(MODELS))
        systems = SYSTEMS if number % 2 == 0 else tuple(reversed(SYSTEMS))
        measured: dict[str, dict[str, dict[str, Any]]] = {}
        for model in models:
            measured[model] = {}
            for system in systems:
                measured[model][system] = self.measure(system, model)
            log_round(model, number + 1, measured[model])
        return measured

    def measure(self, system: str, model: str) -> dict[str, Any]:
        own = own_run_s(system, self.run_s[model])
        window_s = window_seconds(own, self.plan.window_runs, self.plan.min_window_s)
        warmup_s = self.plan.warmup_runs * own
        if system == "raw":
            self.isolate(None)
            runner = self.runners[model]
            c1 = raw_c1(runner, self.photo, self.plan)
            c8 = raw_c8(runner, self.photo, window_s, self.plan.window_runs)
        else:
            self.isolate(None if system == "gateway" else (system, model))
            c1 = http_c1(self.url(system, model), self.encoded[model], self.plan)
            c8 = self.http_c8(system, model, warmup_s, window_s, own)
        c8.update(window_s=window_s, warmup_s=warmup_s, run_s=own)
        return {"c1": c1, "c8": c8}

    def http_c8(self, system: str, model: str, warmup_s: float, window_s: float, own: float) -> dict[str, Any]:
        """Images/s with 8 requests in flight over one window; the gateway's busy fraction meanwhile."""
        job = {
            "url": self.url(system, model),
            "body": self.bodies[model],
            "concurrency": CONCURRENCY,
            "warmup_s": warmup_s,
            "window_s": window_s,
            "max_s": max(self.plan.max_job_s, 2 * (warmup_s + window_s + CONCURRENCY * own) + 60),
            "timeout_s": HTTP_TIMEOUT_S,
        }
        align_s = min(60.0, 3 * own + 2.0)
        marks: dict[str, dict[str, Any]] = {}

        def stats() -> dict[str, Any]:
            return self.stats(model) if system == "gateway" else batch_log_counts(self.batch_logs[model])

        def on_measuring() -> None:
            if system in ("gateway", "litserve"):
                marks["start"] = read_at_pass_end(stats, align_s)

        def on_stopped() -> None:
            # at the window's end, while the requests in flight keep the model busy (see read_at_pass_end)
            if "start" in marks:
                marks["end"] = read_at_pass_end(stats, align_s)

        done = self.loadgen.run(job, on_measuring, on_stopped)
        window = http_window(done)
        start = done["measuring_at"]
        latencies = [r[1] - r[0] for r in done["records"] if r[2] == 200 and start is not None and r[0] >= start]
        result = {
            "system": system,
            "concurrency": CONCURRENCY,
            "items_per_s": window["items_per_s"],
            "runs": runs_spanned(window.get("span_s"), own),
            "latency": summary(latencies),
            "requests": window["requests"],
            "completed_in_window": window.get("completed_after_start", 0),
            "span_s": window.get("span_s"),
            "errors": window["errors"],
            "timed_out": window["timed_out"],
        }
        if "start" in marks:
            before, after = marks["start"]["first"], stats()
            result.update(batch_counts(before, after))
            if system == "gateway":
                start = marks["start"]
                end = marks.get("end") or {"reading": after, "at": time.perf_counter(), "aligned": False}
                result["busy"] = {
                    **busy_fraction(start["reading"], end["reading"], end["at"] - start["at"]),
                    "aligned": start["aligned"] and end["aligned"],
                }
        if result["errors"]:
            logger.warning("%s %s at concurrency 8: %d failed requests", system, model, result["errors"])
        return result


def batch_log_counts(path: Path) -> dict[str, int]:
    """Batches and items so far in LitServe's batch log, in the shape of the replica's stats()."""
    from benchmarks.servers import batch_log_stats

    return batch_log_stats(path)


def log_round(model: str, number: int, measured: dict[str, dict[str, Any]]) -> None:
    parts = []
    for system, figures in measured.items():
        c8 = figures["c8"]
        busy = (c8.get("busy") or {}).get("busy_fraction")
        parts.append(
            f"{system} c1 p50 {_ms(figures['c1']['p50_ms'])} ms, c8 {c8['items_per_s']:.2f}/s"
            f" ({_num(c8.get('runs'), 1)} runs{'' if busy is None else f', busy {busy:.2f}'})"
        )
    logger.info("photo %s round %d: %s", model, number, "; ".join(parts))
