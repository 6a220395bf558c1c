"""The gateway's control plane: what each model deployment is doing, read without waking any.

One object per ingress replica (`ControlPlane`) owns the reads of Serve's status, Ray's view of
which replica actors are alive, the record of replicas seen dying, and the standby keeper of the
coming-soon models. The request path asks it one question before a call ("is this model ready,
starting or broken, and how long may the call wait?"); whether a call actually waited through a
start is decided afterwards from facts (`serve.contract.was_cold`), not from the age of a read.
Every private Ray call it needs goes through `serve.ray_compat`.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from ray import serve

from serve.errors import short_reason
from serve.ray_compat import DeploymentOverview, alive_actors, deployment_overviews, replica_class
from serve.standby import StandbyKeeper, StandbyLedger
from serve.store import Store

# The oldest read of Serve's status a request uses without waiting for a new one, and only for a
# model this ingress sent a request to within the same time: models go back to zero only after a
# stretch with no traffic, so for such a model the read still says whether the request is a cold
# start. (Reads themselves are frequent, e.g. the standby keeper's, and may predate a scale-down.)
STALE_READ_S = 5.0
# Serve's status message while it replaces a replica that died or failed its health check: the
# model is recovering (requests wait for the replacement), not broken.
REPLACING_PREFIX = "A replica's health check failed"
# How long after a request saw a replica of a model die a full queue of that model is taken for
# requests waiting for the replacement rather than for overload.
REPLACEMENT_WINDOW_S = 30.0
ALIVE_CACHE_S = 0.5


class ModelStates:
    """Replica counts and states of the model deployments, read from Serve's status without waking any."""

    def __init__(self, cache_s: float, app_name: str | None = None) -> None:
        self.cache_s = cache_s
        self.app_name = app_name or serve.get_replica_context().app_name
        self._read_at = 0.0
        self._deployments: dict[str, DeploymentOverview] = {}
        self._lock = asyncio.Lock()
        self._background: asyncio.Task | None = None
        self._routed: dict[str, float] = {}
        self._alive: dict[str, tuple[float, int]] = {}

    async def get(self, deployment: str) -> tuple[int, str]:
        """(running replicas, state) of a deployment: state is cold, starting, pending, ready or unavailable."""
        running, state, _ = await self.describe(deployment)
        return running, state

    async def describe(
        self, deployment: str, fresh: bool = True, max_age_s: float | None = None
    ) -> tuple[int, str, str | None]:
        """(running replicas, state, reason): the reason is Serve's status message while the model is not ready.

        `fresh=False` (the request path) accepts a read up to `STALE_READ_S` old and refreshes it in
        the background, so a request under steady traffic never waits for Serve; the first request
        after a quiet spell, when the model may just have gone back to zero, waits for a read taken
        now (not even one `status_cache_s` old: that could predate the scale-down). `max_age_s` asks
        for a read at most that old.
        """
        now = time.monotonic()
        recent = now - self._routed.get(deployment, -math.inf) < STALE_READ_S
        if max_age_s is not None:
            await self._read(max_age_s=max_age_s)
        elif fresh:
            await self._refresh()
        else:
            self._routed[deployment] = now
            await (self._refresh(wait=False) if recent else self._read(max_age_s=0.0))
        overview = self._deployments.get(deployment)
        if overview is None:
            return 0, "starting", "the deployment is being created"
        counts = {getattr(k, "value", str(k)): n for k, n in overview.replica_states.items()}
        running = counts.get("RUNNING", 0)
        if running:
            return running, "ready", None
        status = getattr(overview.status, "value", str(overview.status))
        message = (overview.message or "").strip() or None
        if status == "UNHEALTHY" and (message or "").startswith(REPLACING_PREFIX):
            return 0, "starting", "a replica stopped; Serve is starting its replacement"
        if status in ("UNHEALTHY", "DEPLOY_FAILED"):
            # Serve's message carries the replica's traceback: clients get its gist only.
            return 0, "unavailable", short_reason(message) or f"deployment status {status}"
        if any(counts.get(s, 0) for s in ("STARTING", "PENDING_MIGRATION", "RECOVERING")):
            # Serve says so once a replica has waited past RAY_SERVE_SLOW_STARTUP_WARNING_S (30 s)
            # for a node with the resources it asks for (e.g. a GPU fraction no node has free).
            if message and "to be scheduled" in message:
                return 0, "pending", message
            return 0, "starting", message
        return 0, "cold", None

    async def alive_replicas(self, deployment: str) -> int:
        """How many replica actors of a deployment Ray has alive now (re-read at most every ALIVE_CACHE_S)."""
        read_at, count = self._alive.get(deployment, (-math.inf, 0))
        if time.monotonic() - read_at >= ALIVE_CACHE_S:
            actors = await asyncio.to_thread(alive_actors, {replica_class(self.app_name, deployment)})
            count = len(actors)
            self._alive[deployment] = (time.monotonic(), count)
        return count

    def invalidate(self) -> None:
        """Make the next read fresh, e.g. once a cold model has answered (its replica is up now)."""
        self._read_at = 0.0

    async def _refresh(self, wait: bool = True) -> None:
        if time.monotonic() - self._read_at < self.cache_s:
            return
        if not wait and self._read_at and time.monotonic() - self._read_at < STALE_READ_S:
            # On the request path a read that is a little old will do: refresh in the background
            # instead of making this request wait for Serve's status (tens of ms).
            if self._background is None or self._background.done():
                self._background = asyncio.get_running_loop().create_task(self._read())
            return
        await self._read()

    async def _read(self, max_age_s: float | None = None) -> None:
        async with self._lock:
            if time.monotonic() - self._read_at < (self.cache_s if max_age_s is None else max_age_s):
                return
            self._deployments = await asyncio.to_thread(deployment_overviews, self.app_name)
            self._read_at = time.monotonic()


class ControlPlane:
    """Model states, replica deaths and standby workers of one ingress replica."""

    def __init__(self, app_name: str, status_cache_s: float) -> None:
        self.app_name = app_name
        self.states = ModelStates(status_cache_s, app_name)
        self.replica_lost_at: dict[str, float] = {}  # deployment -> when a call last saw its replica die
        self._standby_task: asyncio.Task | None = None

    def keep_standbys(
        self, standbys: dict[str, dict[str, Any]], store: Store, keep_alive_s: int, check_s: float
    ) -> None:
        """Start the keeper of standby workers (on the running loop; it lives until `close`)."""
        keeper = StandbyKeeper(self.app_name, standbys, StandbyLedger(store), keep_alive_s, check_s)
        self._standby_task = asyncio.get_running_loop().create_task(keeper.run(self.states.get))

    def close(self) -> None:
        if self._standby_task is not None:
            self._standby_task.cancel()

    def replica_lost(self, deployment: str) -> None:
        """A call saw a replica of this deployment die: Serve is replacing it."""
        self.replica_lost_at[deployment] = time.monotonic()
        self.states.invalidate()

    async def replacing(self, deployment: str) -> bool:
        """Whether the model is short of a replica that died: Serve says it has none running, or a
        call saw one die within REPLACEMENT_WINDOW_S (Serve's status lags the handle's router,
        which drops a dead replica at once and queues its requests for the replacement)."""
        if time.monotonic() - self.replica_lost_at.get(deployment, -math.inf) < REPLACEMENT_WINDOW_S:
            return True
        # a read older than the health check that noticed the death would still count the dead replica
        running, state, _ = await self.states.describe(deployment, max_age_s=ALIVE_CACHE_S)
        if running == 0:
            return state in ("starting", "pending")
        # Serve notices a dead replica at its next health check; Ray's actor table knows at once
        return await self.states.alive_replicas(deployment) < running
