"""Sending one typed call to a model deployment: through cold starts, replica deaths and full queues.

Transport-free: HTTP routes, job runners and the web pages reach the models only through
`Dispatcher.call`, which returns the replica's typed result and whether the call waited through a
start. All error outcomes are `APIError`s.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from serve.config import GatewayConfig, ModelSpec
from serve.context import CallerContext
from serve.contract import ModelCall, ModelResult, was_cold
from serve.control import ControlPlane
from serve.errors import APIError, find_api_error, model_unavailable

logger = logging.getLogger("gigarouter.dispatch")

# While a call waits for a model: how often its state is re-read, and the pause before a call the
# full queue rejected during a cold start is sent again.
STATE_POLL_S = 1.0
COLD_QUEUE_RETRY_S = 0.5


class ResponseCancelled(Exception):
    """A model call that Serve cancelled while the caller still waited (its replica went away)."""


# Errors that mean the replica a call was sent to is gone. Model calls are idempotent, so such a
# call is sent once more (to another replica, or the replacement) before it fails.
REPLICA_LOST = (RayActorError, ActorUnavailableError, ReplicaUnavailableError, ResponseCancelled)


class Dispatcher:
    """Calls the model deployments bound at build time (one handle per model id)."""

    def __init__(self, config: GatewayConfig, handles: dict[str, DeploymentHandle], control: ControlPlane) -> None:
        self.config = config
        self.handles = handles
        self.control = control

    async def call(self, spec: ModelSpec, call: ModelCall, context: CallerContext) -> tuple[ModelResult, bool]:
        """Run `call` on the model of `spec`, waiting through a cold start if it has no replica;
        (result, whether the call waited through a replica's start).

        A model whose deployment failed (or is unhealthy with no running replica) answers 503 at
        once, and so does a call already waiting when that happens. A model whose replica died and
        is being replaced is waited for like a cold start. A call whose replica died under it is
        sent once more, with the cold-start timeout, so that it reaches the replacement. A full
        queue (`max_queued_requests`) is 503 with Retry-After, except for a call that arrived while
        the model had no replica: during a cold start every call waits in that queue for the first
        replica, so a rejected one is sent again every COLD_QUEUE_RETRY_S until it gets a place or
        its cold-start timeout passes (504), rather than shed. The caller's deadline, if any, caps
        every wait.
        """
        states = self.control.states
        running, state, reason = await states.describe(spec.deployment_name, fresh=False)
        if state == "unavailable":
            raise model_unavailable(spec.id, reason)
        starting = running == 0
        cold_timeout = spec.cold_start_timeout_s or self.config.cold_start_timeout_s
        timeout = cold_timeout if starting else self.config.request_timeout_s
        deadline = self._deadline(timeout, context)
        resent = False
        while True:
            response = None
            try:
                response = self.handles[spec.id].run.remote(call)
                result = await self._wait(spec, response, deadline)
                cold = was_cold(context.arrived_at, result)
                if cold:  # the state polled while waiting says "starting": don't let listings show that
                    states.invalidate()
                return result, cold
            except TimeoutError:
                if response is not None:
                    response.cancel()
                raise await self._timed_out(spec, timeout, starting)
            except BackPressureError as error:
                if not starting and await self.control.replacing(spec.deployment_name):
                    # the queue is full because a replica died and its replacement is starting:
                    # waited out like a cold start (a full queue in front of running replicas is
                    # real overload, and is shed)
                    starting, timeout = True, cold_timeout
                    deadline = self._deadline(timeout, context)
                if starting and time.monotonic() + COLD_QUEUE_RETRY_S < deadline:
                    await asyncio.sleep(COLD_QUEUE_RETRY_S)
                    continue
                raise APIError(
                    503,
                    f"The model '{spec.id}' is overloaded: its queue is full. Try again later.",
                    type="overloaded_error",
                    code="model_overloaded",
                    headers={"Retry-After": str(max(1, math.ceil(error.retry_after_s or 1)))},
                )
            except DeploymentUnavailableError:
                raise model_unavailable(spec.id, "its deployment failed")
            except REPLICA_LOST as error:
                # The replica died or became unreachable mid-call; Serve replaces it.
                logger.warning("model %s: replica lost during a call: %s", spec.id, type(error).__name__)
                self.control.replica_lost(spec.deployment_name)
                if not resent:
                    resent, starting, timeout = True, True, cold_timeout
                    deadline = self._deadline(timeout, context)
                    continue
                raise model_unavailable(spec.id, "its replica stopped while handling the request", retry_after_s=5)
            except APIError:
                raise
            except Exception as error:
                api_error = find_api_error(error)
                if api_error is not None:
                    raise api_error
                logger.error("model %s failed: %s", spec.id, error)
                raise APIError(500, f"The model '{spec.id}' failed to process the request.", type="server_error")

    @staticmethod
    def _deadline(timeout: float, context: CallerContext) -> float:
        deadline = time.monotonic() + timeout
        return deadline if context.deadline is None else min(deadline, context.deadline)

    async def _timed_out(self, spec: ModelSpec, timeout: float, starting: bool) -> APIError:
        what = f"answer within {timeout:g} s"
        if starting:  # say where the start-up stands now, e.g. pending: no node has the GPU it asks for
            _, now = await self.control.states.get(spec.deployment_name)
            what = f"start and answer within {timeout:g} s (it is {now}; GET /v1/models/{spec.id} says why)"
        return APIError(
            504,
            f"The model '{spec.id}' did not {what}. Try again later.",
            type="timeout_error",
            code="model_timeout",
            headers={"Retry-After": "10"},
        )

    async def _wait(self, spec: ModelSpec, response: Any, deadline: float) -> ModelResult:
        """The response's result by `deadline`, re-reading the model's state meanwhile: 503 if it fails."""
        task = asyncio.ensure_future(response)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                done, _ = await asyncio.wait({task}, timeout=min(remaining, STATE_POLL_S))
                if task in done:
                    if task.cancelled():  # not by this call (that would have cancelled the wait itself)
                        raise ResponseCancelled(spec.id)
                    return task.result()
                _, state, reason = await self.control.states.describe(spec.deployment_name)
                if state == "unavailable":
                    raise model_unavailable(spec.id, reason)
        finally:
            if not task.done():
                task.cancel()
