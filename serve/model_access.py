"""How the gateway's operations reach its models: lookups by name, client images, metered calls.

`ModelAccess` is the base of `serve.service.GatewayService`: it holds the catalog, the dispatcher,
the control plane and the store, finds the model a request names, fetches its images, and makes
each model call admitted and metered for the caller's key. The operations themselves (one function
per thing a caller can ask) are in `serve.service`.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator
from typing import Any

from families.base import ENDPOINT_PATHS, Task
from families.registry import family_of
from serve.accounts import Accounts
from serve.config import GatewayConfig
from serve.context import CallerContext
from serve.contract import EncodedImage, GenerateCall, GenerationDelta, ModelCall, ModelResult
from serve.control import ControlPlane
from serve.dispatch import Dispatcher
from serve.errors import APIError, bad_request, model_not_found
from serve.images import load_encoded
from serve.metering import metered
from serve.model_spec import ModelSpec
from serve.store import Store


class ResultStream:
    """A metered model call streamed (`GatewayService.stream`): iterating yields the replica's items
    (`GenerationDelta`s, then the `Generation`); a failure after the first item ends the iteration
    with an `APIError`.

    The replica's stream is read to its end by a task of its own, so that a caller who stops early
    (a client that disconnects) leaves the call to finish and its usage to be recorded."""

    def __init__(self, cold: bool, items: asyncio.Queue) -> None:
        self.cold = cold
        self._items = items

    async def __aiter__(self) -> AsyncIterator[GenerationDelta | ModelResult]:
        while (item := await self._items.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item


_END = object()


class ModelAccess:
    """The models of one gateway, found by name and called metered (the base of `GatewayService`)."""

    def __init__(
        self,
        config: GatewayConfig,
        specs: list[ModelSpec],
        dispatcher: Dispatcher,
        control: ControlPlane,
        store: Store,
        accounts: Accounts | None = None,
    ) -> None:
        self.config = config
        self.specs = {spec.id: spec for spec in specs}
        self.by_name = {spec.deployment_name: spec for spec in specs}
        self.by_lower = {
            **{spec.deployment_name.lower(): spec for spec in specs},
            **{spec.id.lower(): spec for spec in specs},
        }
        self.dispatcher = dispatcher
        self.control = control
        self.store = store
        self.accounts = accounts
        self._streams: set[asyncio.Task] = set()  # held: a task nobody references may be collected

    def meter(self, context: CallerContext, spec: ModelSpec, endpoint: str, task: str | None, images: int):
        """Admission and the usage row of one model call (`serve.metering.metered`)."""
        return metered(self.accounts, context, spec, endpoint, task, images)

    async def call(
        self, spec: ModelSpec, call: ModelCall, context: CallerContext, endpoint: str
    ) -> tuple[ModelResult, bool]:
        """One metered model call: admitted for the caller's key, dispatched, its usage recorded."""
        images = len(call.images) if hasattr(call, "images") else int(hasattr(call, "image"))
        async with self.meter(context, spec, endpoint, getattr(call, "task", None), images) as meter:
            result, cold = await self.dispatcher.call(spec, call, context)
            meter.usage = result.usage
        return result, cold

    async def stream(self, spec: ModelSpec, call: GenerateCall, context: CallerContext, endpoint: str) -> ResultStream:
        """One metered generate call, streamed: returned once its first item has arrived (an error
        before that is raised here, as from `call`); its usage is recorded once, from the final
        `Generation`, when the replica has sent it."""
        opened: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        items: asyncio.Queue[Any] = asyncio.Queue()
        # Read in a context of its own: Serve (and Ray under it) cancel the calls made in a request's
        # context when its client goes away, and this one must run to its end to be metered. It is
        # cancelled here if the caller leaves before the answer begins.
        reading = self._read_stream(spec, call, context, endpoint, opened, items)
        reader = asyncio.create_task(reading, context=contextvars.Context())
        self._streams.add(reader)
        reader.add_done_callback(self._streams.discard)
        try:
            cold = await opened
        except asyncio.CancelledError:  # the caller left before the answer began: so does the call
            reader.cancel()
            raise
        return ResultStream(cold, items)

    async def _read_stream(
        self,
        spec: ModelSpec,
        call: GenerateCall,
        context: CallerContext,
        endpoint: str,
        opened: asyncio.Future[bool],
        items: asyncio.Queue[Any],
    ) -> None:
        """Admit, open and read one streamed call to its end into `items`, metered like `call`."""
        try:
            async with self.meter(context, spec, endpoint, call.task, 1) as meter:
                stream = await self.dispatcher.stream(spec, call, context)
                if not opened.done():
                    opened.set_result(stream.cold)
                async for item in stream:
                    if isinstance(item, ModelResult):
                        meter.usage = item.usage
                    items.put_nowait(item)
        except asyncio.CancelledError:
            opened.cancel()
            raise
        except Exception as error:  # an APIError, already recorded by the meter
            if opened.done():
                items.put_nowait(error)
            else:
                opened.set_exception(error)
        finally:
            items.put_nowait(_END)

    # ----- lookups -----

    def find(self, name: str) -> ModelSpec:
        """A model by its id (`microsoft/Florence-2-large`) or its deployment name (`florence-2-large`); 404 otherwise."""
        # exact id, deployment name, or either in another letter case; never a partial path
        spec = self.specs.get(name) or self.by_name.get(name) or self.by_lower.get(name.lower())
        if spec is None:
            raise model_not_found(name)
        return spec

    def model(self, name: str, endpoint: str) -> ModelSpec:
        """A model that answers on `endpoint`; 400 naming the endpoints it serves otherwise."""
        spec = self.find(name)
        endpoints = family_of(spec.family).endpoints
        if endpoint not in endpoints:
            served = ", ".join(ENDPOINT_PATHS[e] for e in sorted(endpoints))
            raise bad_request(
                f"The model '{spec.id}' does not support {ENDPOINT_PATHS[endpoint]}; it serves {served}",
                param="model",
                code="unsupported_endpoint",
            )
        return spec

    def task(self, model_name: str, task_name: str) -> tuple[ModelSpec, Task]:
        """The model and task that a task endpoint `/v1/vision/{model_name}/{task_name}` names."""
        spec = self.find(model_name)
        family = family_of(spec.family)
        task = family.task(task_name)
        if task is None or task.endpoint != "chat":
            tasks = ", ".join(t.name for t in family.chat_tasks())
            message = f"The model '{spec.id}' has no task '{task_name}'"
            if not tasks:
                paths = ", ".join(ENDPOINT_PATHS[e] for e in sorted(family.endpoints))
                raise APIError(404, f"{message}; use {paths}", param="task", code="task_not_found")
            raise APIError(404, f"{message}; its tasks are: {tasks}", param="task", code="task_not_found")
        return spec, task

    async def image(self, url: str, param: str) -> EncodedImage:
        """A client's image URL as checked, encoded bytes (nothing decoded here)."""
        return await load_encoded(url, self.config.images, param)

    async def images(self, urls: list[str], params: list[str]) -> tuple[EncodedImage, ...]:
        return tuple(await asyncio.gather(*(self.image(url, p) for url, p in zip(urls, params))))
