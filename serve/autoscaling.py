"""Demand-aware autoscaling for models that scale to zero: a Ray Serve custom autoscaling policy.

A catalog entry opts in with `demand_policy:` (see `serve.config.DemandPolicy`); the builder then
sets the deployment's `autoscaling_config.policy` to `serve.autoscaling:DemandAwarePolicy` with the
model id and the demand database as `policy_kwargs`. Serve instantiates the class once per
deployment in the controller and calls it on every autoscaling tick with an `AutoscalingContext`.

What the policy asks for (Serve then applies `min_replicas`/`max_replicas`, the scaling factors and
the delays: `upscale_delay_s`, `downscale_delay_s`, `downscale_to_zero_delay_s`):

- **0 -> 1 on the first queued request**: any request waiting at a handle wakes the model (Serve's
  own cold-start fast path does the same, without delay).
- **Pre-warm**: with `prewarm_interest` set, a cold model wakes when at least that many interest
  signals (`POST /v1/models/{id}/interest`) arrived within `interest_window_s`, before any request.
- **Keep warm**: while at least `keep_warm_interest` signals arrived within the window, a running
  (or starting) model keeps one replica even when idle.
- **Otherwise** it follows the request load like Serve's default policy (ongoing requests /
  `target_ongoing_requests`), and goes back to zero after `downscale_to_zero_delay_s` of idleness.
  Unlike the default policy it also lets go of a replica that is still starting when nothing is
  waiting for it any more: a replica that cannot be placed (no node has the GPU fraction it asks
  for) does not hold a resource request, and keep a cluster autoscaler launching nodes, forever
  after the request that woke it timed out.

Where the demand counts live: in the gateway's store (`gateway.database_url`), which the ingress
replicas write. The policy runs inside the Serve controller (on the head node) and reads the count
at most once per `refresh_s`, with a 2 s timeout (on a failure the last count stands). With the
default SQLite file, controller and ingress must share that file (one host, or the ingress pinned
to the head); on a cluster use PostgreSQL (README: "Database"), which every process reaches.

The policy reads through `serve.store`, so the controller's Python must import this package: it
does where the gateway was installed on the head node (cluster.yaml installs it on every node).
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime
from typing import Any

from ray.serve.config import AutoscalingContext

from serve.store.blocking import BlockingStore

logger = logging.getLogger("ray.serve")


class DemandAwarePolicy:
    """Replicas for one model from its queued requests and its recent interest signals.

    Example, as Serve calls it::

        policy = DemandAwarePolicy("microsoft/Florence-2-base", "sqlite+aiosqlite:////data/gigarouter.sqlite3",
                                   prewarm_interest=5, keep_warm_interest=2)
        replicas, state = policy(ctx)   # ctx: ray.serve.config.AutoscalingContext
    """

    def __init__(
        self,
        model_id: str,
        database_url: str | None = None,
        interest_window_s: float = 3600.0,
        prewarm_interest: int | None = None,
        keep_warm_interest: int | None = None,
        refresh_s: float = 10.0,
    ) -> None:
        if interest_window_s <= 0 or refresh_s < 0:
            raise ValueError("interest_window_s must be > 0 and refresh_s >= 0")
        for name, value in (("prewarm_interest", prewarm_interest), ("keep_warm_interest", keep_warm_interest)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or unset)")
        self.model_id = model_id
        self.database_url = database_url
        self._store: BlockingStore | None = None
        self.interest_window_s = float(interest_window_s)
        self.prewarm_interest = prewarm_interest
        self.keep_warm_interest = keep_warm_interest
        self.refresh_s = float(refresh_s)
        self._interest = 0
        self._read_at: float | None = None
        self._last_error: str | None = None

    def __call__(self, ctx: AutoscalingContext) -> tuple[float, dict[str, Any]]:
        now = ctx.current_time if ctx.current_time is not None else time.time()
        requests = float(ctx.total_num_requests or 0.0)
        interest = self.recent_interest(now)
        warm = ctx.current_num_replicas > 0 or ctx.target_num_replicas > 0

        if ctx.current_num_replicas == 0:
            # Nothing runs yet: one replica as soon as anything waits (a starting replica is
            # released when nothing waits any more, after the downscale-to-zero delay).
            by_requests = 1.0 if requests > 0 else 0.0
        else:
            by_requests = requests / ctx.config.get_target_ongoing_requests()

        floor, reason = 0, "load"
        if self.prewarm_interest is not None and interest >= self.prewarm_interest:
            floor, reason = 1, "prewarm"
        elif warm and self.keep_warm_interest is not None and interest >= self.keep_warm_interest:
            floor, reason = 1, "keep_warm"
        desired = max(by_requests, float(floor))
        state = {"recent_interest": interest, "demand_floor": floor, "decided_by": reason}
        return (math.ceil(desired) if desired else 0), state

    def recent_interest(self, now: float) -> int:
        """Interest signals for this model within the window, re-read at most every `refresh_s`."""
        if not self.database_url or (self.prewarm_interest is None and self.keep_warm_interest is None):
            return 0
        if self._read_at is not None and now - self._read_at < self.refresh_s:
            return self._interest
        self._read_at = now
        self._interest = self._count(now)
        return self._interest

    def _count(self, now: float) -> int:
        # The store the ingress replicas write (SQLite or PostgreSQL), read with a short timeout:
        # on a failure the last count stands.
        if self._store is None:
            self._store = BlockingStore(self.database_url)
        at = datetime.fromtimestamp(now, UTC)
        window = self.interest_window_s
        try:
            count = self._store.call(
                lambda store: store.interest_count(self.model_id, window_s=window, now=at), timeout_s=2.0
            )
        except Exception as error:  # noqa: BLE001  (any failure: keep deciding on the last count)
            message = f"{type(error).__name__}: {error}"
            if message != self._last_error:  # once per distinct error, not once per tick
                logger.warning("demand policy for %s cannot read the store: %s", self.model_id, message)
                self._last_error = message
            return self._interest
        self._last_error = None
        return int(count)
