"""The shared base of every model deployment: loading, device choice, the call contract and batching.

A family module subclasses `VisionModel`, names its descriptor (`families/`), and implements:

- `setup()` loads processor and model from `self.source` with `from_pretrained`;
- `accept(call)` checks one `serve.contract` call, decodes its images (`self.picture`, on a
  thread, at the scale its processor needs) and returns the item to queue;
- `group_key(item)` says which queued items can share one forward pass;
- `predict(items)` runs one group (blocking, off the event loop) and returns one `ModelResult` each;
- optionally `split(item, max_work)` / `join(item, results)` for items worth more work than a run takes.

Callers use `run(call)` or `stream(call)` (the gateway; token streaming in `deployments.streaming`)
or the keyword methods below (other Serve apps' handles); batching never appears in family code.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import torch
from PIL import Image
from transformers import AutoProcessor

from deployments.batching import Coalescer, RunStages, run_groups, scatter, work_of
from deployments.metrics import ModelMetrics
from deployments.preload import PRELOADED_AT_ENV
from deployments.streaming import Streaming, TokenSink
from deployments.text_limits import TextLimits
from families.base import HANDLE_NAMES, Family, InputNames, Task, check_task_input
from families.registry import register
from serve.config import BatchConfig, ModelSpec
from serve.contract import (
    ClassifyCall,
    EmbedImagesCall,
    EmbedTextsCall,
    EncodedImage,
    GenerateCall,
    GenerationDelta,
    ModelCall,
    ModelResult,
    Region,
    ScoreCall,
)
from serve.errors import APIError, bad_request
from serve.image_codec import decode_image_for, probe_image
from serve.images import ImageLimits

logger = logging.getLogger("gigarouter.model")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Picture:
    """A decoded image and the size it was sent at: results and regions are in pixels of `size`,
    while `image` may be smaller (decoded at the scale the processor needs)."""

    image: Image.Image
    size: tuple[int, int]


@dataclass
class GenerationRequest:
    """A checked generate call (see `VisionModel.generation_request`)."""

    task: Task
    names: InputNames
    text: str
    max_new_tokens: int
    num_beams: int
    picture: Picture


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


class VisionModel(TextLimits, Streaming):
    """One loaded model behind a Serve deployment; subclasses hold the family's model code."""

    descriptor: Family

    def __init__(
        self, spec: dict[str, Any] | ModelSpec, source: str | None = None, image_limits: dict[str, Any] | None = None
    ) -> None:
        register(self.descriptor)  # a family from a config's `families:` is known in this process too
        self.spec = ModelSpec.model_validate(spec)
        self.source = source or self.spec.source
        self.image_limits = ImageLimits.model_validate(image_limits or {})
        self.device = self._pick_device()
        self.dtype = self._pick_dtype()
        self._limit_threads()
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                self.setup()
        except Exception as error:
            # Serve shows this (the first line) as the model's state_reason: name the checkpoint
            # and the cause, e.g. a hub id that is not cached while HF_HUB_OFFLINE=1.
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise RuntimeError(f"could not load the weights of {self.spec.id} from {self.source}: {first}") from error
        self.load_seconds = time.perf_counter() - started
        # Request checks tokenize on their own copy of the processor, one at a time (see `counting`).
        self._counter = copy.deepcopy(getattr(self, "processor", None))
        self._count_lock = threading.Lock()
        # Streamed answers are decoded on the model's thread with a copy of their own (see `Streaming`).
        self.stream_tokenizer = copy.deepcopy(getattr(getattr(self, "processor", None), "tokenizer", None))
        self.batches_run = 0
        self.items_run = 0
        self.metrics = ModelMetrics(self.spec.id)
        self.metrics.replica_starts.inc()
        self.metrics.load.observe(self.load_seconds)
        self.busy_s = self.prepare_s = self.finish_s = 0.0
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix=f"{self.descriptor.name}-model")
        # One thread for the CPU stages: a processor's tokenizer must not be used by two threads at
        # once (a fast tokenizer changing its padding settings while another call reads them fails)
        self._cpu_threads = ThreadPoolExecutor(1, thread_name_prefix=f"{self.descriptor.name}-cpu")
        defaults = BatchConfig()
        stages = RunStages(self._prepare_run, self._core_run, self._finish_run)
        self._coalescer = Coalescer(stages, defaults.max_batch_size, defaults.fill_wait_ratio)
        self.last_image: dict[str, Any] | None = None
        self.ready_at = time.time()
        logger.info(
            "loaded %s (%s) from %s on %s/%s in %.2fs",
            self.spec.id, self.descriptor.name, self.source, self.device, self.dtype, self.load_seconds,
        )

    # ----- the family contract -----

    def setup(self) -> None:
        """Load processor and model from `self.source` onto `self.device`."""
        raise NotImplementedError

    async def accept(self, call: ModelCall) -> Any:
        """Check a call and return the item to queue (400 for what the family cannot do)."""
        raise self.unsupported(call)

    def group_key(self, item: Any) -> Hashable:
        """Items with equal keys run in one forward pass."""
        return None

    def prepare(self, items: list[Any]) -> Any:
        """CPU work before the model for one group (processor to tensors), on a thread beside the model."""
        return None

    def forward(self, items: list[Any], prepared: Any) -> Any:
        """The model on one group, given what `prepare` made (the only stage that uses the model)."""
        if type(self).predict is VisionModel.predict:
            raise NotImplementedError(f"{type(self).__name__} implements neither forward nor predict")
        return self.predict(items)

    def finish(self, items: list[Any], outputs: Any) -> list[ModelResult]:
        """CPU work after the model (decoding, parsing): one result per item, in order."""
        return outputs

    def predict(self, items: list[Any]) -> list[ModelResult]:
        """One group through all three stages. A family may implement this alone instead of the
        stages; then all of its work runs on the model's thread."""
        return self.finish(items, self.forward(items, self.prepare(items)))

    def split(self, item: Any, max_work: int) -> list[Any]:
        """Parts of an item worth more than `max_work`, each to be run on its own (default: not split)."""
        return [item]

    def join(self, item: Any, results: list[ModelResult]) -> ModelResult:
        """The result of a split item from its parts' results, in order."""
        return results[0]

    # ----- calls -----

    async def run(self, call: ModelCall) -> ModelResult:
        """Run one call: checked, queued for a model run (split by work if needed), answered typed."""
        item = await self.accept(call)
        result = await self.submit(item)
        return replace(result, replica_ready_at=self.ready_at)

    async def stream(self, call: GenerateCall) -> AsyncIterator[GenerationDelta | ModelResult]:
        """Run one generate call like `run`, yielding its text as the model makes it
        (`GenerationDelta`s), then the whole `Generation`. An answer that cannot stream token by
        token (beam search, structured results) comes as the `Generation` alone. If the caller stops
        reading, its text is dropped and the batch goes on for the others."""
        item = await self.accept(call)
        sink = TokenSink() if self.streams(item) else None
        if sink is not None:
            item.sink = sink
        result = asyncio.ensure_future(self.submit(item))
        try:
            if sink is not None:
                async for text in sink.texts(result):
                    yield GenerationDelta(text, replica_ready_at=self.ready_at)
            yield replace(await result, replica_ready_at=self.ready_at)
        finally:
            if sink is not None:
                sink.close()
            if not result.done():
                result.cancel()
            elif not result.cancelled():
                result.exception()  # retrieved: a failure the caller did not wait for is not logged again

    async def generate(
        self,
        image: EncodedImage | Image.Image | bytes,
        task: str | None = None,
        text: str | None = None,
        region: dict[str, float] | Region | None = None,
        max_new_tokens: int | None = None,
        num_beams: int | None = None,
        param_names: dict[str, str] | None = None,
    ) -> ModelResult:
        """Run one task (name like `object-detection` or prompt like `<OD>`) on one image (handles)."""
        if isinstance(region, dict):
            region = _region(region, (param_names or {}).get("region", "region"))
        call = GenerateCall(
            image=image,
            task=task or self.descriptor.chat_tasks()[0].name,
            text=text,
            region=region,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            param_names=dict(param_names or {}),
        )
        return await self.run(call)

    async def embed_images(self, images: list[Any], max_num_patches: int | None = None) -> ModelResult:
        return await self.run(EmbedImagesCall(images=tuple(images), max_num_patches=max_num_patches))

    async def embed_texts(self, texts: list[str], params: list[str] | None = None) -> ModelResult:
        return await self.run(EmbedTextsCall(texts=tuple(texts), params=tuple(params) if params else None))

    async def classify(
        self, image: Any, labels: list[str], template: str | None = None, max_num_patches: int | None = None
    ) -> ModelResult:
        call = ClassifyCall(image=image, labels=tuple(labels), template=template, max_num_patches=max_num_patches)
        return await self.run(call)

    async def score(self, images: list[Any], texts: list[str], max_num_patches: int | None = None) -> ModelResult:
        return await self.run(ScoreCall(images=tuple(images), texts=tuple(texts), max_num_patches=max_num_patches))

    def unsupported(self, call: Any) -> APIError:
        kind = type(call).__name__.removesuffix("Call").lower() or "this call"
        return bad_request(f"{self.spec.id} ({self.descriptor.name}) does not serve {kind} calls", param="model")

    # ----- plumbing -----

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

    async def stats(self) -> dict[str, Any]:
        """Load time, batch counters and process of this replica."""
        return {
            "model": self.spec.id,
            "load_seconds": self.load_seconds,
            "ready_at": self.ready_at,
            # what the last image arrived as, and the scale it was decoded at (an operator's check
            # that photos cross Ray encoded and are decoded only as large as the processor needs)
            "last_image": self.last_image,
            "batches": self.batches_run,
            "items": self.items_run,
            # seconds in the model's forward passes, and in the CPU work before and after them
            # (on other threads): busy_s over a window's seconds is the model's busy fraction
            "runs": self.batches_run,
            "busy_s": self.busy_s,
            "prepare_s": self.prepare_s,
            "finish_s": self.finish_s,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "pid": os.getpid(),
            # when this process finished importing the model code (deployments.preload), if it did
            "preloaded_at": float(os.environ[PRELOADED_AT_ENV]) if PRELOADED_AT_ENV in os.environ else None,
        }

    async def environment(self, names: list[str]) -> dict[str, str | None]:
        """The values of these environment variables in this replica's process (an operator's check
        that the application's runtime_env reached it)."""
        return {name: os.environ.get(name) for name in names}

    # ----- helpers for families -----

    def load(self, model_class: Any) -> None:
        """Load `self.processor` and `self.model` (with `model_class`) from `self.source` onto the device."""
        self.processor = AutoProcessor.from_pretrained(self.source)
        self.model = model_class.from_pretrained(self.source, dtype=self.dtype).to(self.device).eval()

    def task(self, name: str) -> Task:
        """One of this family's tasks by name or prompt, or a 400 naming it."""
        task = self.descriptor.task(name)
        if task is None:
            raise bad_request(f"unknown {self.descriptor.name} task '{name}'", param="task")
        return task

    async def generation_request(self, call: ModelCall) -> GenerationRequest:
        """What every generative family checks first: a generate call, a task of this family with
        the inputs it takes, the generation settings within their caps, and the decoded picture."""
        if not isinstance(call, GenerateCall):
            raise self.unsupported(call)
        task = self.task(call.task)
        names = self.input_names(call)
        text = (call.text or "").strip()
        check_task_input(self.descriptor, task, text, call.region is not None, names)
        tokens, beams = self.generation_settings(call.max_new_tokens, call.num_beams)
        picture = await self.picture(call.image, call.param_names.get("image", "image"))
        return GenerationRequest(task, names, text, tokens, beams, picture)

    @staticmethod
    def input_names(call: GenerateCall) -> InputNames:
        names = call.param_names or {}
        return InputNames(text=names.get("text", HANDLE_NAMES.text), region=names.get("region", HANDLE_NAMES.region))

    def processor_size(self) -> tuple[int, int] | None:
        """The smallest (width, height) an image must keep for this family's processor to see every
        pixel it would see of the full image: from its image processor's `size` (fixed or shortest edge)."""
        size = getattr(getattr(self, "processor", None), "image_processor", None)
        size = getattr(size, "size", None) or {}
        if "height" in size and "width" in size:
            return int(size["width"]), int(size["height"])
        if "shortest_edge" in size:
            return int(size["shortest_edge"]), int(size["shortest_edge"])
        return None

    def min_image_size(self, size: tuple[int, int], item_options: Any = None) -> tuple[int, int] | None:
        """The smallest scale an image of `size` may be decoded at (None: full size)."""
        return self.processor_size()

    async def picture(self, value: EncodedImage | Image.Image | bytes, param: str = "image", item_options: Any = None) -> Picture:
        """An image from a call, decoded on a thread at the smallest scale the processor needs.

        Encoded bytes (the gateway's `EncodedImage`, or raw bytes from a handle) are checked against
        the operator's image limits here too; a PIL image from a handle is used as it is.
        """
        if isinstance(value, Image.Image):
            self.last_image = {"arrived_as": "PIL.Image", "bytes": None, "size": list(value.size), "decoded": None}
            return Picture(value if value.mode == "RGB" else value.convert("RGB"), value.size)
        arrived_as = type(value).__name__
        if isinstance(value, (bytes, bytearray, memoryview)):
            value = probe_image(bytes(value), self.image_limits, param)
        if not isinstance(value, EncodedImage):
            raise bad_request(f"{param} must be an image: encoded bytes or a PIL image", param=param)
        wanted = self.min_image_size(value.size, item_options)
        image = await asyncio.to_thread(decode_image_for, value, self.image_limits, param, wanted)
        self.last_image = {
            "arrived_as": arrived_as,
            "bytes": len(value.data),
            "size": list(value.size),
            "decoded": list(image.size),
        }
        return Picture(image, value.size)

    def generation_settings(self, max_new_tokens: int | None, num_beams: int | None) -> tuple[int, int]:
        """Apply configured defaults and caps to requested generation settings."""
        gen = self.spec.generation
        tokens = max_new_tokens or gen.max_new_tokens
        beams = num_beams or gen.num_beams
        gen.check(tokens, beams)
        return tokens, beams

    def to_device(self, batch: Any) -> Any:
        """Move a processor output to the model's device, casting floating tensors to its dtype."""
        return batch.to(self.device).to(self.dtype) if hasattr(batch, "to") else batch

    def _pick_device(self) -> torch.device:
        wanted = self.spec.device
        if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()):
            if not torch.cuda.is_available():
                raise RuntimeError(f"model {self.spec.id} asks for CUDA but no GPU is visible to this replica")
            self._cap_gpu_memory()
            return torch.device("cuda")
        return torch.device("cpu")

    def _pick_dtype(self) -> torch.dtype:
        if self.spec.dtype != "auto":
            return DTYPES[self.spec.dtype]
        return torch.float16 if self.device.type == "cuda" else torch.float32

    def _cap_gpu_memory(self) -> None:
        # A replica given a fraction of a GPU must not take more of its memory than that fraction.
        fraction = float(self.spec.deployment.ray_actor_options.get("num_gpus", 1) or 1)
        if 0 < fraction < 1:
            torch.cuda.set_per_process_memory_fraction(fraction)

    def _limit_threads(self) -> None:
        # Without a limit every replica starts one torch thread per core and they fight for the CPUs.
        threads = self.spec.torch_threads or max(1, round(float(self.spec.deployment.ray_actor_options.get("num_cpus", 1))))
        threads = min(threads, os.cpu_count() or threads)
        torch.set_num_threads(threads)


def _region(region: dict[str, Any], param: str) -> Region:
    try:
        return Region(**{k: float(region[k]) for k in ("x1", "y1", "x2", "y2")})
    except (KeyError, TypeError, ValueError):
        raise bad_request("region needs numbers x1, y1, x2, y2 (pixels)", param=param) from None
