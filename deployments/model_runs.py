"""How a replica runs its queued items: the `Coalescer`'s three stages on the replica's threads.

`ModelRuns` is mixed into `VisionModel`. A checked item goes to `submit`, which splits it if it is
worth more work than a run takes and queues it on the coalescer (`deployments.batching`). Each run
is grouped by the family's `group_key`, and every group goes through the family's `prepare`
(CPU thread), `forward` (the model's thread) and `finish` (CPU thread again). The run counters,
stage seconds and metrics that `VisionModel.stats` reports are kept here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from deployments.batching import Coalescer, RunStages, run_groups, scatter, work_of
from deployments.metrics import ModelMetrics
from families.base import Family
from serve.config import BatchConfig, ModelSpec
from serve.contract import ModelResult
from serve.errors import APIError

logger = logging.getLogger("gigarouter.model")


@dataclass
class _Group:
    """Items of one run that share a forward pass, and what the last stage made of them."""

    indices: list[int]
    items: list[Any]
    value: Any = None
    failed: bool = False

    def fail(self, error: BaseException) -> None:
        self.value, self.failed = [error] * len(self.items), True


@dataclass
class _Run:
    items: list[Any]
    groups: list[_Group]


@dataclass
class _Queued:
    item: Any
    arrived: float

    @property
    def work(self) -> int:
        return work_of(self.item)


class ModelRuns:
    """Mixed into `VisionModel`: queueing checked items and running them in batches.

    Uses the model's `spec` and `metrics` and the family contract (`group_key`, `prepare`,
    `forward`, `finish`, `predict`, `split`, `join`); `_start_runs` must be called once the model
    is loaded, before the first `submit`.
    """

    descriptor: Family
    spec: ModelSpec
    metrics: ModelMetrics

    def _start_runs(self) -> None:
        """The run counters, the threads the stages run on and the coalescer (default batch settings
        until Serve's `reconfigure`)."""
        self.batches_run = 0
        self.items_run = 0
        self.busy_s = self.prepare_s = self.finish_s = 0.0
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix=f"{self.descriptor.name}-model")
        # One thread for the CPU stages: a processor's tokenizer must not be used by two threads at
        # once (a fast tokenizer changing its padding settings while another call reads them fails)
        self._cpu_threads = ThreadPoolExecutor(1, thread_name_prefix=f"{self.descriptor.name}-cpu")
        defaults = BatchConfig()
        stages = RunStages(self._prepare_run, self._core_run, self._finish_run)
        self._coalescer = Coalescer(stages, defaults.max_batch_size, defaults.fill_wait_ratio)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply live batch settings from Serve's `user_config`."""
        config = BatchConfig.model_validate(user_config or {})
        self._coalescer.max_work = config.max_batch_size
        self._coalescer.fill_wait_ratio = config.fill_wait_ratio
        logger.info("%s batching: %s", self.spec.id, config.model_dump())

    async def submit(self, item: Any) -> ModelResult:
        """Queue one checked item (split into parts if it is worth more than a run takes) and wait for its result."""
        parts = self.split(item, self._coalescer.max_work) if work_of(item) > self._coalescer.max_work else [item]
        now = time.perf_counter()
        results = await self._coalescer.run([_Queued(part, now) for part in parts])
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results[0] if len(parts) == 1 and parts[0] is item else self.join(item, results)

    # A run's stages (see deployments.batching): the model on one thread of its own, the CPU work
    # before and after it on others, so that preparing the next run and finishing the last one
    # overlap the model instead of delaying it.

    async def _prepare_run(self, queued: list[_Queued]) -> _Run:
        started = time.perf_counter()
        for entry in queued:
            self.metrics.queue_wait.observe(started - entry.arrived)
        items = [entry.item for entry in queued]
        run = _Run(items, [_Group(indices, group) for indices, group in run_groups(items, self.group_key)])
        await asyncio.get_running_loop().run_in_executor(self._cpu_threads, self._each_group, run, "prepare")
        self.prepare_s += time.perf_counter() - started
        return run

    async def _core_run(self, run: _Run) -> _Run:
        started = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(self._model_thread, self._each_group, run, "core")
        elapsed = time.perf_counter() - started
        self.busy_s += elapsed
        self.metrics.inference.observe(elapsed)
        return run

    async def _finish_run(self, run: _Run) -> list[Any]:
        started = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(self._cpu_threads, self._each_group, run, "finish")
        results = scatter(len(run.items), [(group.indices, group.value) for group in run.groups])
        self.batches_run += 1
        self.items_run += len(run.items)
        self.metrics.batch_size.observe(sum(work_of(item) for item in run.items))
        self.metrics.requests.inc(len(run.items))
        images = sum(r.usage.images for r in results if isinstance(r, ModelResult))
        if images:  # Serve counters refuse increments of 0
            self.metrics.images.inc(images)
        self.finish_s += time.perf_counter() - started
        return results

    def _each_group(self, run: _Run, stage: str) -> None:
        """One stage for every group of a run that has not failed (on a thread). A failing group
        fails its own items, never the others of the run."""
        for group in run.groups:
            if group.failed:
                continue
            try:
                with torch.inference_mode():
                    if stage == "prepare":
                        group.value = self.prepare(group.items)
                    elif stage == "core":
                        group.value = self.forward(group.items, group.value)
                    else:
                        group.value = self._checked(group.items, self.finish(group.items, group.value))
            except APIError as error:
                group.fail(error)
            except Exception as error:
                logger.exception("%s: a batch group of %d failed (%s)", self.spec.id, len(group.items), stage)
                group.fail(RuntimeError(f"{self.spec.id} failed to run the request: {type(error).__name__}"))

    def _predict_group(self, group: list[Any]) -> list[Any]:
        """All three stages of one group in the calling thread (tests and the benchmark's in-process loop)."""
        with torch.inference_mode():
            return self._checked(group, self.predict(group))

    def _checked(self, group: list[Any], outputs: list[Any]) -> list[Any]:
        if len(outputs) != len(group):
            raise RuntimeError(f"{type(self).__name__} returned {len(outputs)} results for {len(group)} items")
        return outputs
