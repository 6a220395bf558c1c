"""Sending one typed call to a model deployment: through cold starts, replica deaths and full queues.

Transport-free: HTTP routes, job runners and the web pages reach the models only through
`Dispatcher.call`, which returns the replica's typed result and whether the call waited through a
start, or `Dispatcher.stream`, which returns a generate call's answer as the replica streams it.
All error outcomes are `APIError`s.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from serve.config import GatewayConfig, ModelSpec
from serve.context import CallerContext
from serve.contract import GenerateCall, GenerationDelta, ModelCall, ModelResult, was_cold
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

# A sent call: Serve's response (to cancel) and what to wait for (its result, or a stream's first item).
Sent = tuple[Any, Awaitable[Any]]


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
        _, result, _ = await self._send(spec, context, lambda: self._unary(spec, call))
        return result, self._was_cold(context, result)

    async def stream(self, spec: ModelSpec, call: GenerateCall, context: CallerContext) -> ModelStream:
        """Run `call` on the model's `stream` method: the answer's text as the replica makes it, then
        the whole `Generation` (see `ModelStream`).

        Returned once the first item has arrived. Until then everything is as in `call` (cold-start
        waits, the model's state, a full queue, one resend when the replica is lost, the deadline),
        so an error before the stream starts is raised here. The whole stream has the deadline the
        first item had.
        """
        response, first, deadline = await self._send(spec, context, lambda: self._streaming(spec, call))
        return ModelStream(spec, response, first, self._was_cold(context, first), deadline, self.control)

    def _unary(self, spec: ModelSpec, call: ModelCall) -> Sent:
        response = self.handles[spec.id].run.remote(call)
        return response, response

    def _streaming(self, spec: ModelSpec, call: GenerateCall) -> Sent:
        response = self.handles[spec.id].options(stream=True).stream.remote(call)
        return response, _first_item(response)

    def _was_cold(self, context: CallerContext, first: ModelResult | GenerationDelta) -> bool:
        cold = was_cold(context.arrived_at, first)
        if cold:  # the state polled while waiting says "starting": don't let listings show that
            self.control.states.invalidate()
        return cold

    async def _send(
        self, spec: ModelSpec, context: CallerContext, send: Callable[[], Sent]
    ) -> tuple[Any, Any, float]:
        """`send` the call until its result (or first item) arrives, as `call` describes:
        (Serve's response, the result or first item, the deadline it was waited for by)."""
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
                response, first = send()
                return response, await self._wait(spec, first, deadline), deadline
            except asyncio.CancelledError:  # the caller left
                if response is not None:
                    response.cancel()
                raise
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
                raise _failed(spec, error) from None

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


def _failed(spec: ModelSpec, error: Exception) -> APIError:
    """The APIError a replica raised, else a 500 that says no more than that the model failed."""
    api_error = find_api_error(error)
    if api_error is not None:
        return api_error
    logger.error("model %s failed: %s", spec.id, error)
    return APIError(500, f"The model '{spec.id}' failed to process the request.", type="server_error")


_END = object()


async def _next_item(response: Any) -> Any:
    """The next item of a streaming response, or _END."""
    try:
        return await response.__anext__()
    except StopAsyncIteration:
        return _END


async def _first_item(response: Any) -> Any:
    item = await _next_item(response)
    if item is _END:
        raise RuntimeError("the model's stream ended before its answer")
    return item


class ModelStream:
    """A generate call streamed from its replica (`Dispatcher.stream`), opened by its first item.

    Iterating yields that item, then the rest as the replica sends them: `GenerationDelta`s, then
    one `Generation`. After the first item the call is never sent again (what came is already the
    caller's): a replica lost, a failure or the deadline mid-stream ends the iteration with an
    `APIError`. A stream left before its end is cancelled on the replica.
    """

    def __init__(
        self, spec: ModelSpec, response: Any, first: Any, cold: bool, deadline: float, control: ControlPlane
    ) -> None:
        self.spec = spec
        self.cold = cold
        self.first = first
        self._response = response
        self._deadline = deadline
        self._control = control

    async def __aiter__(self) -> AsyncIterator[GenerationDelta | ModelResult]:
        ended = False
        try:
            yield self.first
            while True:
                item = await self._next()
                if item is _END:
                    ended = True
                    return
                yield item
        finally:
            if not ended:
                self._response.cancel()

    async def _next(self) -> Any:
        spec = self.spec
        task = asyncio.ensure_future(_next_item(self._response))
        try:
            done, _ = await asyncio.wait({task}, timeout=max(0.0, self._deadline - time.monotonic()))
            if not done:
                raise APIError(
                    504,
                    f"The model '{spec.id}' did not finish its answer in time.",
                    type="timeout_error",
                    code="model_timeout",
                )
            if task.cancelled():  # not by this call (that would have cancelled the wait itself)
                raise ResponseCancelled(spec.id)
            return task.result()
        except REPLICA_LOST as error:
            logger.warning("model %s: replica lost while streaming: %s", spec.id, type(error).__name__)
            self._control.replica_lost(spec.deployment_name)
            lost = model_unavailable(spec.id, "its replica stopped while streaming the answer", retry_after_s=5)
            raise lost from None
        except APIError:
            raise
        except Exception as error:
            raise _failed(spec, error) from None
        finally:
            if not task.done():
                task.cancel()
