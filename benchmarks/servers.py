"""Starting, stopping and measuring the systems under test: the gateway on Ray Serve and the peer servers."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from tools.launcher import LocalStack, free_port

logger = logging.getLogger("benchmarks.servers")

ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = ROOT / "benchmarks" / "work"
ENV_VARS = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}


def wait_healthy(url: str, timeout_s: float, process: subprocess.Popen | None = None) -> float:
    """Poll `url` until it answers 200; seconds waited. Fails early if `process` exits."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server behind {url} exited with code {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not become healthy within {timeout_s:g} s")


class PeerServer:
    """A peer server in its own process group (so its worker processes stop with it)."""

    def __init__(self, name: str, module: str, args: list[str], port: int, env: dict[str, str] | None = None) -> None:
        """`env`: extra environment of the server (e.g. the OpenMP setting the gateway's replicas get)."""
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        WORK_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = WORK_DIR / f"{name}.log"
        self._log = self.log_path.open("w")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *args, "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, **ENV_VARS, **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logger.info("started %s (pid %d) on port %d, log %s", name, self.process.pid, port, self.log_path)

    def wait_ready(self, timeout_s: float = 300) -> float:
        """Wait until the server answers /health; seconds from its start to then."""
        wait_healthy(f"{self.url}/health", timeout_s, self.process)
        seconds = time.perf_counter() - self.started
        logger.info("%s ready %.1fs after its start", self.name, seconds)
        return seconds

    def processes(self) -> list[psutil.Process]:
        """The server's process and all its descendants."""
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def pause(self) -> None:
        """Stop the whole server (SIGSTOP to its process group) while other systems are measured."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, signum: int) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    def stop(self) -> None:
        """SIGTERM to the server's process group (resumed first), SIGKILL after 15 s."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGCONT)
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            except ProcessLookupError:
                pass
        self._log.close()
        logger.info("stopped %s", self.name)


def naive_server(
    workload: str, checkpoint: Path, threads: int, name: str = "naive", env: dict[str, str] | None = None
) -> PeerServer:
    return PeerServer(
        name,
        "benchmarks.peers.naive_server",
        ["--workload", workload, "--checkpoint", str(checkpoint), "--threads", str(threads)],
        free_port(),
        env,
    )


def litserve_server(
    workload: str,
    checkpoint: Path,
    threads: int,
    max_batch_size: int,
    batch_wait_s: float,
    batch_log: Path,
    name: str = "litserve",
    env: dict[str, str] | None = None,
) -> PeerServer:
    return PeerServer(
        name,
        "benchmarks.peers.litserve_server",
        [
            "--workload",
            workload,
            "--checkpoint",
            str(checkpoint),
            "--threads",
            str(threads),
            "--max-batch-size",
            str(max_batch_size),
            "--batch-timeout",
            str(batch_wait_s),
            "--batch-log",
            str(batch_log),
        ],
        free_port(),
        env,
    )


def fresh_database(name: str) -> str:
    """A new SQLite file in `WORK_DIR` for a gateway app's store (demand counts): one left by an earlier
    run, perhaps of an older schema, is removed first, so every run starts from an empty store."""
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    path = WORK_DIR / name
    for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        leftover.unlink(missing_ok=True)
    return str(path)


def read_at_pass_end(stats: Callable[[], dict[str, Any]], limit_s: float, poll_s: float = 0.02) -> dict[str, Any]:
    """Read a replica's `stats()` just after one of its forward passes ended.

    The replica adds a pass's seconds to `busy_s` when the pass ends, so a reading taken while a pass
    runs leaves that pass's first part out, and a difference of two readings counts it in full: up
    to one pass too many. Polling until `busy_s` changes puts a reading at a pass's end (within
    `poll_s` and one call); two readings taken that way bound whole passes, and what the polling
    lag adds at one end it takes away at the other. When no pass ends within `limit_s` (a pass
    longer than expected, or a replica without `busy_s`), the first reading is used as it is and
    `aligned` is False.

    Returns `{"first", "reading", "at", "aligned"}`: the first reading (for the batch counters), the
    reading to use, and when it was taken (`time.perf_counter()`, the middle of the call).
    """

    def read() -> tuple[dict[str, Any], float]:
        started = time.perf_counter()
        values = stats()
        return values, (started + time.perf_counter()) / 2

    first, first_at = read()
    if "busy_s" in first and limit_s > 0:
        deadline = time.perf_counter() + limit_s
        while time.perf_counter() < deadline:
            time.sleep(poll_s)
            reading, at = read()
            if reading.get("busy_s") != first["busy_s"]:
                return {"first": first, "reading": reading, "at": at, "aligned": True}
    return {"first": first, "reading": first, "at": first_at, "aligned": False}


def batch_log_stats(path: Path) -> dict[str, int]:
    """Batches and items so far in a batch log (one batch size a line), in the shape of the replica's stats()."""
    sizes = [int(line) for line in path.read_text().split()] if path.exists() else []
    return {"batches": len(sizes), "items": sum(sizes)}


class GatewayStack(LocalStack):
    """The benchmark's local Ray Serve stack (tools/launcher.py): 8 CPUs, workers' output kept out of its log."""

    def __init__(self, num_cpus: int = 8, env: dict[str, str] | None = None) -> None:
        """`env`: extra environment of every Ray worker (e.g. Serve settings to compare)."""
        super().__init__(num_cpus=num_cpus, worker_env=env, log_to_driver=False)
        self._handles: dict[tuple[str, str], Any] = {}

    def stats(self, app_name: str, deployment_name: str) -> dict[str, Any]:
        """The replica's `stats()` (load time, batch, item and busy-time counters), through a Serve handle.

        The handle is kept: a new one first waits for the controller to tell it the replicas, which can
        take longer than a forward pass, and a reading that lags by that much is not "now" (the busy
        fraction reads the counters at a pass's end, `read_at_pass_end`)."""
        from ray import serve

        key = (app_name, deployment_name)
        if key not in self._handles:
            self._handles[key] = serve.get_deployment_handle(deployment_name, app_name)
        return self._handles[key].stats.remote().result(timeout_s=60)

    def delete(self, app_name: str) -> None:
        self._handles = {key: handle for key, handle in self._handles.items() if key[0] != app_name}
        super().delete(app_name)


def ray_part(process: psutil.Process, apps: dict[str, str]) -> str:
    """Which part of the gateway stack a Ray process is, from its title (`ray::ServeReplica:<app>:<deployment>`).

    `apps` maps Serve application names to system names; a replica becomes `<system>_ingress` or
    `<system>_model`, the HTTP proxy `ray_proxy`, the controller `ray_controller`, anything else `ray_core`.
    """
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return "ray_core"
    if "ServeReplica:" in command:
        app, deployment = command.split("ServeReplica:", 1)[1].split()[0].split(":")[:2]
        system = apps.get(app, app)
        return f"{system}_ingress" if deployment.startswith("Gateway") else f"{system}_model"
    if "ProxyActor" in command:
        return "ray_proxy"
    if "ServeController" in command:
        return "ray_controller"
    return "ray_core"


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """User + system CPU time of the processes (all their threads), in seconds."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def rss_mb(processes: list[psutil.Process]) -> float:
    """Summed resident set size in MB (pages shared between processes are counted in each)."""
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20
