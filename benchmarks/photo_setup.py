"""The photo benchmark's setup: its models, the photo and how it is decoded, the sample counts and time
bounds of a run, and the OpenMP setting of the replicas' idle threads.

See `benchmarks.photo` for the method. torch is not imported here, nor by anything this module
imports: `benchmarks.photo` reads `replica_thread_env` and makes its photo before it sets the OpenMP
environment that torch reads once, when it is loaded (a test imports this module in a fresh
interpreter and checks that).
"""

from __future__ import annotations

import base64
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from benchmarks.metrics import MIN_RUNS
from benchmarks.photo_figures import DRAFT_SCALE
from benchmarks.servers import WORK_DIR

logger = logging.getLogger("benchmarks.photo")

SIGLIP_ID = "google/siglip2-base-patch16-naflex"
FLORENCE_ID = "microsoft/Florence-2-base"
PHOTO_SIZE = (4032, 3024)
PHOTO_QUALITY = 92
PHOTO_SEED = 4032
PHOTO_PATH = WORK_DIR / f"photo-{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}-q{PHOTO_QUALITY}-v1.jpg"


@dataclass(frozen=True)
class Plan:
    """Sample counts, windows and time bounds of one run."""

    runs: int
    """Measured runs of each in-process decomposition figure (fewer if `sample_budget_s` runs out first)."""
    warmup: int
    """Unmeasured runs before each figure, in-process and over HTTP."""
    sample_budget_s: float
    """Time bound of each decomposition figure's measured runs (at least `min_runs` are taken)."""
    min_runs: int
    rounds: int
    c1_requests: int
    """Measured requests (or raw runs) at concurrency 1, per system, model and round."""
    c1_budget_s: float
    window_runs: float
    """A concurrency-8 window spans this many runs of the system's own model call."""
    warmup_runs: float
    """The warm-up before a concurrency-8 window, in the same runs (and at least until the first response)."""
    min_window_s: float
    timing_runs: int
    """Timed raw runs of 1 and 8 photos (medians) that size the windows."""
    max_job_s: float
    ready_timeout_s: float


FULL = Plan(
    runs=12,
    warmup=2,
    sample_budget_s=20.0,
    min_runs=5,
    rounds=2,
    c1_requests=10,
    c1_budget_s=30.0,
    window_runs=MIN_RUNS,
    warmup_runs=1.0,
    min_window_s=8.0,
    timing_runs=3,
    max_job_s=300.0,
    ready_timeout_s=300.0,
)
QUICK = Plan(
    runs=5,
    warmup=1,
    sample_budget_s=10.0,
    min_runs=2,
    rounds=2,
    c1_requests=3,
    c1_budget_s=10.0,
    window_runs=1,
    warmup_runs=0.0,
    min_window_s=2.0,
    timing_runs=1,
    max_job_s=120.0,
    ready_timeout_s=300.0,
)


# ----- the photo -----


def make_photo(path: Path = PHOTO_PATH) -> bytes:
    """The benchmark's JPEG: made once (a few seconds) and kept at `path`; the same pixels every time."""
    if path.exists():
        return path.read_bytes()
    width, height = PHOTO_SIZE
    rng = np.random.default_rng(PHOTO_SEED)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    # smooth sky-to-ground gradients
    red = 200 - 120 * y + 30 * np.sin(6 * x + 1)
    green = 150 + 60 * x - 40 * y + 25 * np.cos(12 * x * y)
    blue = 90 + 140 * y * (1 - x) + 20 * np.sin(9 * x + 3 * y)
    planes = [np.broadcast_to(plane, (height, width)) for plane in (red, green, blue)]
    image = Image.fromarray(np.clip(np.stack(planes, axis=-1), 0, 255).astype(np.uint8))
    # objects: soft-edged ellipses, boxes and triangles
    draw = ImageDraw.Draw(image)
    for i in range(40):
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(80, 700))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if i % 3 == 0:
            draw.ellipse([cx - size, cy - size // 2, cx + size, cy + size // 2], fill=colour)
        elif i % 3 == 1:
            draw.rectangle([cx - size // 2, cy - size // 3, cx + size // 2, cy + size // 3], fill=colour)
        else:
            draw.polygon([(cx, cy - size), (cx + size, cy + size // 2), (cx - size, cy + size // 2)], fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(3))
    # texture (noise at 1/8 scale, upsampled) and sensor noise: what makes a photo's JPEG big
    coarse = rng.normal(0, 40, (height // 8, width // 8)) + 128
    texture = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(image).astype(np.int16)
    pixels += ((np.asarray(texture).astype(np.int16) - 128) // 2)[..., None]
    pixels += rng.normal(0, 7, pixels.shape).astype(np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=PHOTO_QUALITY)
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    logger.info("made %s (%.1f MB)", path, len(data) / 1e6)
    return data


def data_url(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def full_decode(data: bytes) -> Image.Image:
    """What a user writes: open, decode every pixel, RGB."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


def draft_decode(data: bytes) -> Image.Image:
    """libjpeg's DCT scaling: decode straight to a quarter of each side (JPEG only)."""
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (image.width // DRAFT_SCALE, image.height // DRAFT_SCALE))
    image.load()
    return image.convert("RGB")


# ----- the replicas' idle threads -----


def replica_thread_env() -> dict[str, str]:
    """The OpenMP setting local.yaml's `cpu_thread_wait` gives both models' replicas ({} if they differ)."""
    from benchmarks.workloads import local_entries
    from serve.config import ModelSpec

    envs = [ModelSpec.model_validate(entry).thread_env for entry in local_entries([SIGLIP_ID, FLORENCE_ID])]
    return envs[0] if all(env == envs[0] for env in envs) else {}

