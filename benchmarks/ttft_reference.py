"""The time-to-first-token benchmark's in-process reference: processor + `generate` with the same
checkpoint and threads, for one step, up to the first visible token, and the whole caption."""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any

from benchmarks.ttft_figures import p50_p90
from benchmarks.ttft_plan import MAX_BATCH_SIZE, THREADS, Plan, StreamModel
from benchmarks.ttft_report import num
from benchmarks.workloads import CAPTION_TOKENS, decode_data_url

logger = logging.getLogger("benchmarks.ttft")


def first_visible_step(new_tokens: list[int], tokenizer: Any) -> int | None:
    """The 1-based step of the first generated token that decodes to visible text (None if none)."""
    for step, token in enumerate(new_tokens, start=1):
        if tokenizer.decode([token], skip_special_tokens=True):
            return step
    return None


class InProcessCaptioner:
    """The model in this process (processor + `generate`, `THREADS` torch threads, greedy), loaded
    once: the in-process reference before Ray starts, and again right before and after each c=1
    phase with the gateway's Ray up.

    Measured on 2 cores (2026-12-01): the same one-step run took 1858 ms with Ray stopped and
    2563 ms with an idle Ray up (BLIP; Florence-2-base 6988 -> 8180 ms): Ray's ten or so idle
    processes take ~0.25 of the cores, and every runnable thread stalls both torch threads. The
    gateway's TTFT over the reference taken with Ray up is its own hops (proxy, ingress, replica,
    streamer); over the one taken before Ray started it also holds Ray's idle load and the drift."""

    def __init__(self, model: StreamModel, checkpoint: Path) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        torch.set_num_threads(THREADS)
        self.torch = torch
        self.prompt = model.prompt
        self.processor = AutoProcessor.from_pretrained(checkpoint)
        self.network = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32).eval()
        self.image = decode_data_url(model.image_url())

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def generate(self, tokens: int, batch: int = 1) -> Any:
        kwargs: dict[str, Any] = {"images": [self.image] * batch, "return_tensors": "pt"}
        if self.prompt:
            kwargs["text"] = [self.prompt] * batch
        with self.torch.inference_mode():
            inputs = self.processor(**kwargs)
            return self.network.generate(**inputs, max_new_tokens=tokens, num_beams=1, do_sample=False)

    def timed(self, tokens: int, batch: int = 1) -> float:
        """Seconds of processor + `generate` of `tokens` tokens for `batch` copies of the image."""
        started = time.perf_counter()
        self.generate(tokens, batch)
        return time.perf_counter() - started

    def close(self) -> None:
        del self.network, self.processor
        gc.collect()


def measure_reference(model: StreamModel, checkpoint: Path, plan: Plan) -> dict[str, Any]:
    """processor + generate in this process: one step, up to the first visible token, the whole caption."""
    captioner = InProcessCaptioner(model, checkpoint)
    timed = captioner.timed
    for _ in range(max(1, plan.reference_warmup)):
        sequence = captioner.generate(CAPTION_TOKENS)[0].tolist()
    # BLIP starts from its [DEC] token, Florence-2's decoder from </s>: one position before the new tokens.
    new_tokens = sequence[1:]
    visible_step = first_visible_step(new_tokens, captioner.tokenizer)
    visible_tokens = sum(1 for t in new_tokens if captioner.tokenizer.decode([t], skip_special_tokens=True))
    samples: dict[str, list[float]] = {"one_step": [], "first_visible": [], "full": []}
    started = time.perf_counter()
    for number in range(plan.reference_runs):
        if number and time.perf_counter() - started > plan.reference_budget_s:
            break
        samples["one_step"].append(timed(1))
        if visible_step and visible_step > 1:
            samples["first_visible"].append(timed(visible_step))
        samples["full"].append(timed(CAPTION_TOKENS))
    result: dict[str, Any] = {name: p50_p90(values) for name, values in samples.items() if values}
    if "first_visible" not in result and visible_step == 1:
        result["first_visible"] = result["one_step"]
    if plan.batch_reference_runs:
        # no warm-up of its own: the model is warm, and a batch of 8 one-step runs takes 8 encoders
        result["batch_one_step"] = p50_p90([timed(1, MAX_BATCH_SIZE) for _ in range(plan.batch_reference_runs)])
        result["batch_size"] = MAX_BATCH_SIZE
    one, full = result["one_step"]["p50_ms"], result["full"]["p50_ms"]
    result["decoder_step_ms"] = (full - one) / (CAPTION_TOKENS - 1)
    result["generated_tokens"] = len(new_tokens)
    result["visible_tokens"] = visible_tokens
    result["first_visible_step"] = visible_step
    result["sample_text"] = captioner.tokenizer.decode(new_tokens, skip_special_tokens=True)[:120]
    logger.info(
        "%s in-process: one step %.0f ms, first visible token (step %s) %s ms, %d tokens %.0f ms, decoder step %.0f ms",
        model.label,
        one,
        visible_step,
        num((result.get("first_visible") or {}).get("p50_ms"), 0),
        CAPTION_TOKENS,
        full,
        result["decoder_step_ms"],
    )
    captioner.close()
    return result

