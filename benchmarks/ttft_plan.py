"""What the time-to-first-token benchmark measures: the two captioning models, the sample counts and
time bounds, the target and the thresholds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.workloads import CAPTION_TOKENS, data_url, sample_jpeg

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
NAME = "ttft"
THREADS = 2
"""Torch threads in this process and in each model replica (which asks Ray for as many CPUs)."""
MAX_BATCH_SIZE = 8
"""The models' `max_batch_size` in the gateway: concurrency 8 fills one batch."""
TARGET_RATIO = 1.5
"""TTFT p50 at concurrency 1 over the one-step reference (encoder + first decoder step)."""
BURST_GAP_MS = 5.0
"""Content chunks whose mean gap (first to last over chunks - 1) is below this were sent together,
not as the tokens were made: a decoder step of a real-size model on a CPU takes tens of ms, while
pieces of a finished answer arrive within a millisecond or two of each other. (The reference's own
decoder step is no yardstick here: it is the difference of two long runs, and on a shared machine
it can be off by 10x.)"""
HTTP_TIMEOUT_S = 600
LOCALHOST = "http://127.0.0.1"


@dataclass(frozen=True)
class StreamModel:
    """One captioning model of the benchmark."""

    key: str
    label: str
    checkpoint: str
    """The real-size checkpoint's name in `benchmarks.models`."""
    family: str
    model_id: str
    image_side: int
    prompt: str | None
    """The chat text (Florence-2's task token); None for BLIP's unconditional caption."""

    def request_body(self, image_url: str) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if self.prompt:
            content.append({"type": "text", "text": self.prompt})
        content.append({"type": "image_url", "image_url": {"url": image_url}})
        return {
            "model": self.model_id,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": CAPTION_TOKENS,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    def image_url(self) -> str:
        return data_url(sample_jpeg(self.image_side))


MODELS: dict[str, StreamModel] = {
    "blip": StreamModel(
        "blip", "BLIP base", "blip-stream", "blip", "Salesforce/blip-image-captioning-base", 384, None
    ),
    "florence2_base": StreamModel(
        "florence2_base", "Florence-2-base", "florence-2-base", "florence2", "microsoft/Florence-2-base", 768,
        "<CAPTION>",
    ),
}


@dataclass(frozen=True)
class Plan:
    """Sample counts and time bounds."""

    reference_runs: int
    """Interleaved in-process runs of each reference (fewer if `reference_budget_s` runs out)."""
    reference_warmup: int
    reference_budget_s: float
    batch_reference_runs: int
    """In-process runs of one step for a whole batch of `MAX_BATCH_SIZE` (0: not measured)."""
    ray_up_runs: int
    """In-process one-step runs right before and again right after the c=1 phase, with Ray up
    (`ttft.RayUpReference`; 0: not measured)."""
    c1_warmup: int
    c1_requests: int
    c8_warmup: int
    c8_requests: int
    phase_max_s: float
    """Bound of one concurrency phase of one model, warm-up included."""
    min_c1: int
    min_c8: int
    """Fewer measured requests than these make a figure invalid."""
    ready_timeout_s: float


FULL = Plan(
    reference_runs=4,
    reference_warmup=1,
    reference_budget_s=50.0,
    batch_reference_runs=1,
    ray_up_runs=2,
    c1_warmup=2,
    c1_requests=12,
    c8_warmup=8,
    c8_requests=16,
    phase_max_s=300.0,
    min_c1=12,
    min_c8=16,
    ready_timeout_s=300.0,
)
QUICK = Plan(
    reference_runs=1,
    reference_warmup=1,
    reference_budget_s=25.0,
    batch_reference_runs=0,
    ray_up_runs=1,
    c1_warmup=1,
    c1_requests=3,
    c8_warmup=0,
    c8_requests=8,
    phase_max_s=120.0,
    min_c1=12,
    min_c8=16,
    ready_timeout_s=300.0,
)
