"""The shared base of every model deployment: loading, device choice, batching and grouping.

A family module subclasses `VisionModel` and implements three things:

- `setup()` loads processor and model from `self.source` with `from_pretrained`;
- `group_key(item)` says which queued items can share one forward pass;
- `predict(items)` runs one group (blocking, off the event loop) and returns one result per item.

Its public async methods (the ones the ingress and other Serve apps call through a handle)
build an item and `await self.submit(item)`; batching never appears in family code.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from ray import serve
from transformers import AutoProcessor

from deployments.batching import CONCURRENT_BATCHES, Coalescer
from deployments.metrics import ModelMetrics
from deployments.preload import PRELOADED_AT_ENV
from serve.catalog import Task, find_task
from serve.config import BatchConfig, ModelSpec
from serve.errors import APIError, bad_request
from serve.images import ImageLimits, decode_image

logger = logging.getLogger("gigarouter.model")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class _Queued:
    item: Any
    arrived: float


class VisionModel:
    """One loaded model behind a Serve deployment; subclasses hold the family's model code."""

    family: str = ""

    def __init__(self, spec: dict[str, Any] | ModelSpec, source: str | None = None) -> None:
        self.spec = ModelSpec.model_validate(spec)
        self.source = source or self.spec.source
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
        self.batches_run = 0
        self.items_run = 0
        self.metrics = ModelMetrics(self.spec.id)
        self.metrics.replica_starts.inc()
        self.metrics.load.observe(self.load_seconds)
        defaults = BatchConfig()
        self._coalescer = Coalescer(self._run_model, defaults.max_batch_size, defaults.fill_wait_ratio)
        logger.info(
            "loaded %s (%s) from %s on %s/%s in %.2fs",
            self.spec.id, self.family, self.source, self.device, self.dtype, self.load_seconds,
        )

    # ----- the family contract -----

    def setup(self) -> None:
        """Load processor and model from `self.source` onto `self.device`."""
        raise NotImplementedError

    def group_key(self, item: Any) -> Hashable:
        """Items with equal keys run in one forward pass."""
        return None

    def predict(self, items: list[Any]) -> list[Any]:
        """Run one group of items; return one result per item, in order."""
        raise NotImplementedError

    # ----- plumbing -----

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply live batch settings from Serve's `user_config`."""
        config = BatchConfig.model_validate(user_config or {})
        self._run_batch.set_max_batch_size(config.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self._coalescer.max_items = config.max_batch_size
        self._coalescer.fill_wait_ratio = config.fill_wait_ratio
        logger.info("%s batching: %s", self.spec.id, config.model_dump())

    async def submit(self, item: Any) -> Any:
        """Queue one validated item for the next batch and wait for its result."""
        result = await self._run_batch(_Queued(item, time.perf_counter()))
        if isinstance(result, BaseException):
            raise result
        return result

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0, max_concurrent_batches=CONCURRENT_BATCHES)
    async def _run_batch(self, queued: list[_Queued]) -> list[Any]:
        return await self._coalescer.run(queued)

    async def _run_model(self, queued: list[_Queued]) -> list[Any]:
        """One model run: group the items, run each group off the event loop, one result per item."""
        started = time.perf_counter()
        for entry in queued:
            self.metrics.queue_wait.observe(started - entry.arrived)
        items = [entry.item for entry in queued]
        groups: dict[Hashable, list[int]] = defaultdict(list)
        for index, item in enumerate(items):
            groups[self.group_key(item)].append(index)
        results: list[Any] = [None] * len(items)
        for indices in groups.values():
            group = [items[i] for i in indices]
            try:
                outputs = await asyncio.to_thread(self._predict_group, group)
            except APIError as error:
                outputs = [error] * len(group)
            except Exception as error:  # one failing group must not fail the others
                logger.exception("%s: a batch group of %d failed", self.spec.id, len(group))
                outputs = [RuntimeError(f"{self.spec.id} failed to run the request: {type(error).__name__}")] * len(group)
            for i, output in zip(indices, outputs):
                results[i] = output
        self.batches_run += 1
        self.items_run += len(items)
        self.metrics.batch_size.observe(len(items))
        self.metrics.requests.inc(len(items))
        images = sum(_image_count(item) for item in items)
        if images:  # Serve counters refuse increments of 0
            self.metrics.images.inc(images)
        self.metrics.inference.observe(time.perf_counter() - started)
        return results

    def _predict_group(self, group: list[Any]) -> list[Any]:
        with torch.inference_mode():
            outputs = self.predict(group)
        if len(outputs) != len(group):
            raise RuntimeError(f"{type(self).__name__}.predict returned {len(outputs)} results for {len(group)} items")
        return outputs

    async def stats(self) -> dict[str, Any]:
        """Load time, batch counters and process of this replica."""
        return {
            "model": self.spec.id,
            "load_seconds": self.load_seconds,
            "batches": self.batches_run,
            "items": self.items_run,
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
        task = find_task(self.family, name)
        if task is None:
            raise bad_request(f"unknown {self.family} task '{name}'", param="task")
        return task

    def image(self, value: Image.Image | bytes, param: str = "image") -> Image.Image:
        """Accept a PIL image or encoded bytes (Python handle callers) as an RGB image."""
        if isinstance(value, Image.Image):
            return value if value.mode == "RGB" else value.convert("RGB")
        if isinstance(value, (bytes, bytearray, memoryview)):
            return decode_image(bytes(value), ImageLimits(), param)
        raise bad_request(f"{param} must be a PIL image or encoded image bytes", param=param)

    def generation_settings(self, max_new_tokens: int | None, num_beams: int | None) -> tuple[int, int]:
        """Apply configured defaults and caps to requested generation settings."""
        gen = self.spec.generation
        tokens = max_new_tokens or gen.max_new_tokens
        beams = num_beams or gen.num_beams
        gen.check(tokens, beams)
        return tokens, beams

    # ----- text limits: every text is checked against the model's positions before it is queued -----

    @property
    def text_positions(self) -> int:
        """Position embeddings of the model's text part: the most tokens it can hold in one sequence."""
        return int(self.model.config.text_config.max_position_embeddings)

    @contextmanager
    def counting(self) -> Iterator[Any]:
        """The processor that request checks tokenize with.

        A fast tokenizer keeps its padding and truncation settings in state that every call sets
        anew, so a check counting tokens (no padding) beside a batch being tokenized (padded) could
        strip the batch's padding mid-call. Checks run in threads beside the model's run, so they get
        their own copy of the processor, used by one check at a time. During `setup` nothing runs
        beside it and the processor itself is used.
        """
        counter = getattr(self, "_counter", None)
        if counter is None:
            yield self.processor
            return
        with self._count_lock:
            yield counter

    def text_tokens(self, text: str, **kwargs: Any) -> int:
        """Tokens the processor makes of a prompt without an image (special tokens included)."""
        with self.counting() as processor:
            return len(processor(text=[text], **kwargs)["input_ids"][0])

    def measure_image_tokens(self, sample: str, **kwargs: Any) -> int:
        """Tokens the processor adds to a prompt when an image comes with it (image tokens and their
        markers), measured once at load with a small probe image, so real processors need no constants."""
        probe = Image.new("RGB", (32, 32))
        with_image = len(self.processor(text=[sample], images=[probe], **kwargs)["input_ids"][0])
        return with_image - self.text_tokens(sample, **kwargs)

    def check_context(
        self, prompt_tokens: int, text: str | None, max_new_tokens: int, names: dict[str, str] | None, shared: bool
    ) -> None:
        """A 400 (`context_length_exceeded`) when a prompt, image tokens included, and the tokens to
        generate do not fit the text model's positions.

        `shared`: prompt and answer are one sequence (decoder-only), so together they must fit;
        otherwise (encoder-decoder) each must fit on its own. `names` maps the arguments `text` and
        `max_new_tokens` to the request's field names (the ingress passes its HTTP names; Python
        callers get the argument names). The text is named unless the answer alone cannot fit.
        """
        limit = self.text_positions
        used = prompt_tokens + max_new_tokens if shared else prompt_tokens
        if used <= limit and max_new_tokens <= limit:
            return
        text_param = (names or {}).get("text", "text")
        tokens_param = (names or {}).get("max_new_tokens", "max_new_tokens")
        # Only to decide which field to name: the prompt less the text is what no text can shorten.
        with self.counting() as processor:
            text_alone = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
        fixed = prompt_tokens - text_alone
        answer_room = limit - fixed if shared else limit
        if max_new_tokens > answer_room:
            prompt_part = f" and the prompt without text takes {fixed}" if shared else ""
            raise context_exceeded(
                f"{tokens_param} is {max_new_tokens}, but {self.spec.id} can generate at most {answer_room} tokens"
                f" here: its context is {limit} tokens{prompt_part}",
                tokens_param,
            )
        detail = f" and {max_new_tokens} more may be generated, {used} in all" if shared else ""
        raise context_exceeded(
            f"{text_param} is too long: the prompt comes to {prompt_tokens} tokens ({fixed} of them image, task and"
            f" special tokens){detail}, but {self.spec.id} has a context of {limit} tokens; shorten the text by at"
            f" least {used - limit} tokens",
            text_param,
        )

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


def context_exceeded(message: str, param: str) -> APIError:
    """A 400 for text beyond a model's limits, with OpenAI's code for it."""
    return bad_request(message, param=param, code="context_length_exceeded")


def _image_count(item: Any) -> int:
    """Images an item carries: family items hold either `image` or `images`."""
    if hasattr(item, "images"):
        return len(item.images)
    return 1 if hasattr(item, "image") else 0
