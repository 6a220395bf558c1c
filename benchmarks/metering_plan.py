"""What the metering benchmark measures: the model and its request, the three configurations and the
two gateways that serve them, the concurrencies and warm-ups, and the sample counts and time bounds
of a full and a quick run.

See `benchmarks.metering` for the method.
"""

from __future__ import annotations

from dataclasses import dataclass

MODEL_ID = "google/siglip2-base-patch16-naflex"
BODY = {"model": MODEL_ID, "input": "a cat"}
THREADS = 2
"""Torch threads of the model replica (as `benchmarks.run`)."""
CONFIGS = ("plain", "metered", "metered_budget")
APPS = {"plain": "bench-metering-plain", "metered": "bench-metering"}
"""Serve application (route prefix /<app>) of each gateway: metering off, metering on."""
BUDGET_USD = 1000.0
"""The budget of the `metered_budget` key: never reached (a text embedding costs $0)."""
KEY_ENV = "GIGAROUTER_BENCH_KEY"
"""How `metering_gateway.KeyedLoadGenerator` hands its key to its process (the environment, not the
command line)."""
C1_WARMUP = 20
C32 = 32
C32_WARMUP = 64
HTTP_TIMEOUT_S = 60


@dataclass(frozen=True)
class Plan:
    """Sample counts and time bounds of one run."""

    rounds: int
    c1_requests: int
    """Measured requests at concurrency 1, per configuration and round."""
    c1_max_s: float
    """Bound of each concurrency-1 job (fewer requests are measured if it is reached)."""
    c32_window_s: float
    c32_max_s: float
    """Hard bound of each concurrency-32 job, warm-up and drain included."""
    ready_timeout_s: float
    rows_wait_s: float
    """How long the usage check waits for the buffer's last flush."""


FULL = Plan(
    rounds=2, c1_requests=300, c1_max_s=60.0, c32_window_s=20.0, c32_max_s=60.0, ready_timeout_s=300.0, rows_wait_s=15.0
)
QUICK = Plan(
    rounds=2, c1_requests=60, c1_max_s=30.0, c32_window_s=4.0, c32_max_s=30.0, ready_timeout_s=300.0, rows_wait_s=15.0
)
