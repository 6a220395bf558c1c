"""The overhead benchmark's child process: one configuration on a fresh Ray, the replica's own work
in-process, the load windows through the gateway (and its direct-ingress port), CPU by process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.overhead_configs import (
    APP,
    CONFIGS,
    DIRECT_PORTS,
    FULL,
    LOCAL_CONFIG,
    QUICK,
    SIGLIP_ID,
    TEXT,
    TINY_DIR,
    WORK_DIR,
    Plan,
)
from benchmarks.overhead_figures import added, targets
from benchmarks.host import CpuWitness, load_average, stop_on_sigterm
from benchmarks.overhead_report import num

logger = logging.getLogger("benchmarks.overhead")


def app_args(database: Path) -> dict[str, Any]:
    """local.yaml's gateway settings and its tiny SigLIP2 entry, live with one replica; a fresh store."""
    import yaml

    config = yaml.safe_load(LOCAL_CONFIG.read_text())["applications"][0]["args"]
    entry = dict(next(model for model in config["models"] if model["id"] == SIGLIP_ID))
    deployment = {k: v for k, v in (entry.get("deployment") or {}).items() if k != "autoscaling_config"}
    entry.update(status="live", deployment={**deployment, "num_replicas": 1})
    gateway = {**(config.get("gateway") or {}), "database_url": f"sqlite+aiosqlite:///{database}"}
    return {"checkpoint_dir": str(TINY_DIR), "gateway": gateway, "models": [entry]}


def time_calls(call: Any, seconds: float, max_calls: int, warmup: int = 5) -> list[float]:
    """Latencies (s) of back-to-back calls for about `seconds` (at most `max_calls`), after `warmup`."""
    for _ in range(warmup):
        call()
    latencies: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds and len(latencies) < max_calls:
        t = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t)
    return latencies


def latency(values: list[float]) -> dict[str, Any]:
    from benchmarks.metrics import percentiles

    return percentiles(values)


def measure_in_process(entry: dict[str, Any], photo: bytes, plan: Plan) -> dict[str, Any]:
    """The replica's own work for the two calls, in this process, with the replica's thread settings."""
    import torch

    from deployments.siglip2 import Siglip2, TextsItem
    from serve.contract import EmbedImagesCall
    from serve.image_codec import probe_image

    model = Siglip2(entry, str(TINY_DIR / "siglip2"))  # sets torch's threads as the replica does
    text_item = TextsItem([TEXT])

    def text() -> Any:
        with torch.inference_mode():
            return model.predict([text_item])

    async def photo_item() -> Any:
        encoded = probe_image(photo, model.image_limits, "input[0]")
        return await model.accept(EmbedImagesCall(images=(encoded,)))

    def embed_photo() -> Any:
        item = asyncio.run(photo_item())
        with torch.inference_mode():
            return model.predict([item])

    result = {
        "torch_threads": torch.get_num_threads(),
        "text": latency(time_calls(text, plan.in_process_s, plan.in_process_max)),
        "photo": latency(time_calls(embed_photo, 60.0, plan.photo_in_process_runs, warmup=1)),
        "photo_decoded": (model.last_image or {}).get("decoded"),
    }
    logger.info(
        "in-process: text p50 %.2f ms (%d threads), photo p50 %.1f ms (decoded at %s)",
        result["text"]["p50_ms"], result["torch_threads"], result["photo"]["p50_ms"], result["photo_decoded"],
    )
    return result


def job(
    url: str, body: dict[str, Any], concurrency: int, warmup_s: float, window_s: float, max_requests: int
) -> dict[str, Any]:
    """One load-generator job (benchmarks/load.py), bounded in requests and time."""
    return {
        "url": url,
        "body": body,
        "concurrency": concurrency,
        "warmup_s": warmup_s,
        "window_s": window_s,
        "max_s": warmup_s + window_s + 120,
        "max_requests": max_requests,
        "timeout_s": 120,
    }


def classify(process: psutil.Process, loadgen_pid: int) -> str:
    """Which part of the stack a process is: the HAProxy binary, Serve's parts, the load generator."""
    from benchmarks.servers import ray_part

    if process.pid == loadgen_pid:
        return "load_generator"
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return "ray_core"
    if command.split(" ", 1)[0].endswith("/haproxy") or command.startswith("haproxy"):
        return "haproxy"
    if "HAProxyManager" in command:
        return "haproxy_manager"
    part = ray_part(process, {APP: "gateway"})
    return "serve_proxy" if part == "ray_proxy" else part


def cpu_by_part(loadgen_pid: int) -> dict[str, float]:
    """CPU seconds so far of every process below this one (Ray's included), by part."""
    from benchmarks.servers import cpu_seconds

    parts: dict[str, list[psutil.Process]] = {}
    for process in psutil.Process(os.getpid()).children(recursive=True):
        parts.setdefault(classify(process, loadgen_pid), []).append(process)
    return {part: cpu_seconds(processes) for part, processes in parts.items()}


def direct_port() -> int | None:
    """The direct-ingress HTTP port of the ingress replica (HAProxy / throughput-optimized modes), if any."""
    for process in psutil.Process(os.getpid()).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            command = " ".join(process.cmdline())
            if f"ServeReplica:{APP}:" not in command or ":Gateway" not in command:
                continue
            for connection in process.net_connections(kind="tcp"):
                if connection.status == psutil.CONN_LISTEN and connection.laddr.port in DIRECT_PORTS:
                    return connection.laddr.port
    return None


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _remove_haproxy_files(node_id: str) -> None:
    """HAProxy mode leaves its config, sockets and logs in /tmp/haproxy-serve/<node id>/: this run's go."""
    import shutil

    from serve.ray_compat import haproxy_files_folder

    folder = Path(haproxy_files_folder())
    shutil.rmtree(folder / node_id, ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.rmdir()  # only when no other run's files are left


def effective_settings() -> dict[str, Any]:
    """What Serve's constants resolved to in this driver (the replicas read the same environment)."""
    from serve.ray_compat import serve_settings

    names = (
        "RAY_SERVE_ENABLE_HA_PROXY",
        "RAY_SERVE_ENABLE_DIRECT_INGRESS",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED",
        "RAY_SERVE_USE_GRPC_BY_DEFAULT",
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD",
        "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP",
        "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE",
        "RAY_SERVE_LOG_TO_STDERR",
        "RAY_SERVE_FREEZE_GC_ON_STARTUP",
        "RAY_SERVE_HAPROXY_NBTHREAD",
        "RAY_SERVE_HAPROXY_TUNE_BUFSIZE",
    )
    return serve_settings(names)


def child(config_name: str, quick: bool, out: Path) -> int:
    """Measure one configuration on a fresh Ray in this process; write the JSON to `out`."""
    from benchmarks.load import LoadGenerator
    from benchmarks.metrics import http_window
    from benchmarks.photo_setup import data_url, make_photo
    from benchmarks.servers import GatewayStack

    plan = QUICK if quick else FULL
    if config_name not in CONFIGS:
        raise ValueError(f"no overhead configuration {config_name!r}; there are {', '.join(CONFIGS)}")
    env = {name: os.environ[name] for name in os.environ if name.startswith("RAY_SERVE_")}
    result: dict[str, Any] = {"config": config_name, "env": env, "load_average_start": load_average()}

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"{config_name}: over the child's bound of {plan.child_timeout_s:g} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(plan.child_timeout_s))
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    exit_stack = contextlib.ExitStack()
    try:
        with exit_stack:
            photo = make_photo()
            WORK_DIR.mkdir(parents=True, exist_ok=True)
            database = WORK_DIR / f"overhead-{config_name}-{os.getpid()}.sqlite3"
            for suffix in ("", "-wal", "-shm", "-journal"):
                exit_stack.callback(Path(f"{database}{suffix}").unlink, missing_ok=True)
            args = app_args(database)
            loadgen = LoadGenerator()
            exit_stack.callback(loadgen.close)
            started = time.perf_counter()
            stack = GatewayStack(num_cpus=4, env=env)
            exit_stack.callback(_remove_haproxy_files, _node_id())
            exit_stack.callback(stack.shutdown)
            # ray.init installs a SIGTERM handler that ends the process without cleanup: ours stops Ray.
            signal.signal(signal.SIGTERM, stop_on_sigterm)
            result["settings"] = effective_settings()
            result["deploy_s"] = stack.deploy(APP, args)
            result["ready_s"] = stack.wait_ready(timeout_s=plan.ready_timeout_s)
            result["start_s"] = time.perf_counter() - started
            result["haproxy_running"] = any(
                classify(p, loadgen.pid) == "haproxy" for p in psutil.Process(os.getpid()).children(recursive=True)
            )
            url = f"{stack.url}/v1/embeddings"
            text_body = {"model": SIGLIP_ID, "input": TEXT}
            photo_body = {"model": SIGLIP_ID, "input": [data_url(photo)], "modality": "image"}
            result["photo_bytes"] = len(photo)
            result["photo_body_bytes"] = len(json.dumps(photo_body))

            def window(name: str, spec: dict[str, Any], cpu: bool = False) -> dict[str, Any]:
                before = cpu_by_part(loadgen.pid) if cpu else {}
                done = loadgen.run(spec)
                summary = http_window(done)
                if cpu:
                    after = cpu_by_part(loadgen.pid)
                    requests = max(1, len(done["records"]))
                    result[f"cpu_ms_per_request_{name.split('_')[-1]}"] = {
                        part: round(1000 * (after[part] - before.get(part, 0.0)) / requests, 3)
                        for part in sorted(after)
                        if after[part] - before.get(part, 0.0) > 0.001
                    }
                summary["n"] = summary.get("n", 0)
                logger.info(
                    "%s %s: p50 %s ms, p99 %s ms, %.1f/s, n=%d, errors %d",
                    config_name, name, num(summary.get("p50_ms"), 2), num(summary.get("p99_ms"), 2),
                    summary.get("items_per_s") or 0.0, summary["n"], summary.get("errors", 0),
                )
                return summary

            # warm the path (ingress, model, store) before anything is measured
            loadgen.run(job(url, text_body, 4, 0.0, 1.5, 400))
            loadgen.run(job(url, photo_body, 1, 0.0, 0.0, 2))
            witness = CpuWitness()
            reference = measure_in_process(args["models"][0], photo, plan)
            result["in_process"] = reference
            result["text_in_process"] = reference["text"]
            result["photo_in_process"] = reference["photo"]
            result["text_c1"] = window("text_c1", job(url, text_body, 1, 0.5, plan.c1_window_s, plan.c1_max_requests))
            result["text_c1_added"] = added(result["text_c1"], reference["text"])
            result["text_c32"] = window(
                "text_c32", job(url, text_body, 32, plan.c32_warmup_s, plan.c32_window_s, 100_000), cpu=True
            )
            result["photo_c1"] = window(
                "photo_c1", job(url, photo_body, 1, 0.0, plan.photo_c1_window_s, plan.photo_c1_max_requests)
            )
            result["photo_c1_added"] = added(result["photo_c1"], reference["photo"])
            result["photo_c8"] = window(
                "photo_c8",
                job(url, photo_body, 8, plan.photo_c8_warmup_s, plan.photo_c8_window_s, plan.photo_c8_max_requests),
                cpu=True,
            )
            port = direct_port()
            result["direct_port"] = port
            if port and plan.direct_window_s:
                direct = f"http://127.0.0.1:{port}/v1/embeddings"
                result["direct_c1"] = window("direct_c1", job(direct, text_body, 1, 0.5, plan.direct_window_s, 5000))
                result["direct_c1_added"] = added(result["direct_c1"], reference["text"])
                result["direct_c32"] = window(
                    "direct_c32", job(direct, text_body, 32, 1.0, plan.direct_window_s, 100_000)
                )
            result["other_load"] = witness.stop()
            result["targets"] = targets(result["text_c1_added"], result["text_c32"].get("items_per_s"))
    except BaseException as error:  # noqa: BLE001 - written to the JSON, the parent reports it
        logger.exception("%s failed", config_name)
        result["failed"] = f"{type(error).__name__}: {error}"[:500]
    finally:
        signal.alarm(0)
    result["load_average_end"] = load_average()
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0 if "failed" not in result else 1
