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
The rest of a replica's machinery comes from mixins: batched runs on the replica's threads
(`deployments.model_runs`), image decoding (`deployments.image_inputs`) and text limits
(`deployments.text_limits`).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass, replace
from typing import Any

import torch
from PIL import Image
from transformers import AutoProcessor

from deployments.image_inputs import ImageInputs, Picture
from deployments.metrics import ModelMetrics
from deployments.model_runs import ModelRuns
from deployments.preload import PRELOADED_AT_ENV
from deployments.streaming import Streaming, TokenSink
from deployments.text_limits import TextLimits
from families.base import HANDLE_NAMES, Family, InputNames, Task, check_task_input
from families.registry import register
from serve.config import ModelSpec
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
from serve.images import ImageLimits

logger = logging.getLogger("gigarouter.model")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class GenerationRequest:
    """A checked generate call (see `VisionModel.generation_request`)."""

    task: Task
    names: InputNames
    text: str
    max_new_tokens: int
    num_beams: int
    picture: Picture


class VisionModel(TextLimits, Streaming, ImageInputs, ModelRuns):
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
        self.metrics = ModelMetrics(self.spec.id)
        self.metrics.replica_starts.inc()
        self.metrics.load.observe(self.load_seconds)
        self._start_runs()
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

    # ----- the replica, for operators -----

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
