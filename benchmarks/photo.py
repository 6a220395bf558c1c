"""The photo benchmark: one phone-sized JPEG (4032x3024), in-process against through the gateway.

    python -m benchmarks.photo                  # the full run, about 3-5 minutes on 2 cores
    python -m benchmarks.photo --quick          # a smoke run, fewer samples (1-2 minutes)
    python -m benchmarks.photo --json out.json  # also write the JSON here

A phone photo is a 3-6 MB JPEG of 12 MP; decoding it can cost more than the model behind it,
so where and how the gateway decodes shows up here and not in `benchmarks.run` (256x256 images).
The photo is made deterministically (gradients, shapes, texture and noise, JPEG quality 92) and
kept in benchmarks/work/.

1. In this process, as a user would write it with transformers, torch on two threads (idle
   threads passive, as local.yaml's `cpu_thread_wait` has the replicas; `--omp-spin`: spin): a full
   decode (open, load, convert to RGB); a JPEG draft decode at a quarter of each side
   (`Image.draft`); tiny SigLIP2 end to end (decode, `processor(images=..., max_num_patches=256)`,
   `get_image_features`) with either decode; tiny Florence-2-base object detection end to end with
   the full decode (processor, `generate` with the catalog's default generation settings, output
   parsed).
2. The same models through the gateway on 127.0.0.1 (the two models' entries of
   serve/configs/local.yaml, live with one replica each, two torch threads): POST /v1/embeddings
   (the photo as a data: URL, 256 patches) at concurrency 1, and at concurrency 8 for images/s;
   POST /v1/vision/florence-2-base/object-detection at concurrency 1.

Writes benchmarks/results/photo.md and photo.json (the JSON also to --json). The headline is the
ratio of the gateway's p50 at concurrency 1 to the in-process p50 with the full decode (target
<= 1.0). The in-process part runs before the gateway starts, so the two never share the cores.
Every loop is bounded in count and time; everything started here is stopped on the way out.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gc
import hashlib
import io
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import yaml
from PIL import Image, ImageDraw, ImageFilter

from benchmarks.metrics import http_window
from benchmarks.servers import ROOT, WORK_DIR

logger = logging.getLogger("benchmarks.photo")

RESULTS_DIR = ROOT / "benchmarks" / "results"
LOCAL_CONFIG = ROOT / "serve" / "configs" / "local.yaml"
SIGLIP_ID = "google/siglip2-base-patch16-naflex"
FLORENCE_ID = "microsoft/Florence-2-base"
FLORENCE_TASK = "object-detection"
FLORENCE_PROMPT = "<OD>"
THREADS = 2
"""Torch threads in this process and in each model replica of the gateway."""
PATCHES = 256
"""SigLIP2's patch budget in both: the request asks for it (local.yaml's default is 64)."""
PHOTO_SIZE = (4032, 3024)
PHOTO_QUALITY = 92
PHOTO_SEED = 4032
PHOTO_PATH = WORK_DIR / f"photo-{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}-q{PHOTO_QUALITY}-v1.jpg"
DRAFT_SCALE = 4
HTTP_TIMEOUT_S = 120


@dataclass(frozen=True)
class Plan:
    """Sample counts and time bounds of one run."""

    runs: int
    """Measured runs of each in-process figure (fewer if `sample_budget_s` runs out first)."""
    warmup: int
    """Unmeasured runs before each figure, in-process and over HTTP."""
    sample_budget_s: float
    """Time bound of each figure's measured runs (at least `min_runs` are taken)."""
    min_runs: int
    c1_requests: int
    """Measured requests at concurrency 1 (fewer if `sample_budget_s` runs out first)."""
    c8_window_s: float
    c8_requests: int
    """The concurrency-8 window ends after `c8_window_s` or `c8_requests` issued, whichever comes first."""
    c8_max_s: float
    """Hard bound of the concurrency-8 job, warm-up and drain included."""
    ready_timeout_s: float


FULL = Plan(
    runs=20,
    warmup=3,
    sample_budget_s=45.0,
    min_runs=5,
    c1_requests=20,
    c8_window_s=30.0,
    c8_requests=80,
    c8_max_s=120.0,
    ready_timeout_s=300.0,
)
QUICK = Plan(
    runs=5,
    warmup=1,
    sample_budget_s=15.0,
    min_runs=2,
    c1_requests=5,
    c8_window_s=8.0,
    c8_requests=16,
    c8_max_s=60.0,
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


# ----- timing -----


def sample(call: Callable[[], Any], runs: int, warmup: int, budget_s: float, min_runs: int) -> list[float]:
    """Latencies (s) of back-to-back calls after `warmup` unmeasured ones: `runs` of them, or fewer
    (at least `min_runs`) once `budget_s` has passed."""
    for _ in range(warmup):
        call()
    latencies: list[float] = []
    started = time.perf_counter()
    while len(latencies) < runs and (len(latencies) < min_runs or time.perf_counter() - started < budget_s):
        t = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t)
    return latencies


def summary(latencies: list[float]) -> dict[str, float | int | None]:
    """p50, p90 and mean in milliseconds; `n` samples."""
    if not latencies:
        return {"p50_ms": None, "p90_ms": None, "mean_ms": None, "n": 0}
    values = np.asarray(latencies) * 1000.0
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p90_ms": float(np.percentile(values, 90)),
        "mean_ms": float(values.mean()),
        "n": len(latencies),
    }


# ----- in-process -----


def replica_thread_env() -> dict[str, str]:
    """The OpenMP setting local.yaml's `cpu_thread_wait` gives both models' replicas ({} if they differ)."""
    from serve.config import ModelSpec

    envs = [ModelSpec.model_validate(entry).thread_env for entry in local_entries([SIGLIP_ID, FLORENCE_ID])]
    return envs[0] if all(env == envs[0] for env in envs) else {}


def florence_generation() -> dict[str, int]:
    """Florence-2-base's default generation settings in local.yaml, as the gateway applies them."""
    from serve.config import ModelSpec

    spec = ModelSpec.model_validate(local_entries([FLORENCE_ID])[0])
    return {"max_new_tokens": spec.generation.max_new_tokens, "num_beams": spec.generation.num_beams}


def measure_in_process(plan: Plan, photo: bytes, checkpoints: Path) -> dict[str, Any]:
    """Decode, SigLIP2 and Florence-2 figures in this process, loaded as a user would load them."""
    import torch
    from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

    torch.set_num_threads(THREADS)

    def measure(name: str, call: Callable[[], Any]) -> dict[str, Any]:
        figure = summary(sample(call, plan.runs, plan.warmup, plan.sample_budget_s, plan.min_runs))
        logger.info(
            "in-process %s: p50 %.1f ms, p90 %.1f ms (n=%d)", name, figure["p50_ms"], figure["p90_ms"], figure["n"]
        )
        return figure

    results = {
        "decode_full": measure("full decode", lambda: full_decode(photo)),
        "decode_draft": measure("draft decode", lambda: draft_decode(photo)),
    }
    results["decoded_size"] = {"full": list(full_decode(photo).size), "draft": list(draft_decode(photo).size)}

    source = checkpoints / "siglip2"
    processor = AutoProcessor.from_pretrained(source)
    model = AutoModel.from_pretrained(source, dtype=torch.float32).eval()

    def siglip2(decode: Callable[[bytes], Image.Image]) -> Any:
        with torch.inference_mode():
            inputs = processor(images=[decode(photo)], max_num_patches=PATCHES, return_tensors="pt")
            return model.get_image_features(**inputs)

    results["siglip2_full"] = measure("SigLIP2, full decode", lambda: siglip2(full_decode))
    results["siglip2_draft"] = measure("SigLIP2, draft decode", lambda: siglip2(draft_decode))
    del processor, model

    generation = florence_generation()
    source = checkpoints / "florence-2-base"
    processor = AutoProcessor.from_pretrained(source)
    model = AutoModelForImageTextToText.from_pretrained(source, dtype=torch.float32).eval()

    def florence2() -> Any:
        image = full_decode(photo)
        with torch.inference_mode():
            inputs = processor(text=[FLORENCE_PROMPT], images=[image], return_tensors="pt")
            generated = model.generate(**inputs, **generation, do_sample=False)
        text = processor.batch_decode(generated, skip_special_tokens=False)[0]
        return processor.post_process_generation(text, task=FLORENCE_PROMPT, image_size=image.size)

    results["florence2_full"] = measure("Florence-2-base object detection, full decode", florence2)
    results["florence2_generation"] = generation
    del processor, model
    gc.collect()
    return results


# ----- through the gateway -----


def local_entries(model_ids: list[str]) -> list[dict[str, Any]]:
    """These models' catalog entries in serve/configs/local.yaml, unchanged."""
    config = yaml.safe_load(LOCAL_CONFIG.read_text())
    models = {entry["id"]: entry for entry in config["applications"][0]["args"]["models"]}
    return [dict(models[model_id]) for model_id in model_ids]


def gateway_args(checkpoints: Path) -> dict[str, Any]:
    """`build_app` arguments: local.yaml's gateway settings and its entries of the two models, each
    live with one replica (no autoscaling) and `THREADS` torch threads."""
    config = yaml.safe_load(LOCAL_CONFIG.read_text())["applications"][0]["args"]
    models = []
    for entry in local_entries([SIGLIP_ID, FLORENCE_ID]):
        deployment = {k: v for k, v in entry.get("deployment", {}).items() if k != "autoscaling_config"}
        deployment["num_replicas"] = 1
        models.append({**entry, "status": "live", "torch_threads": THREADS, "deployment": deployment})
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    gateway = {**config.get("gateway", {}), "demand_db": str(WORK_DIR / "photo-demand.sqlite3")}
    return {"checkpoint_dir": str(checkpoints), "gateway": gateway, "models": models}


def http_c1(url: str, body: bytes, plan: Plan) -> dict[str, Any]:
    """Sequential requests (one in flight) after `plan.warmup` unmeasured ones; each must answer 200."""
    headers = {"content-type": "application/json"}
    with httpx.Client(timeout=HTTP_TIMEOUT_S, trust_env=False) as client:

        def call() -> None:
            response = client.post(url, content=body, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"POST {url} answered {response.status_code}: {response.text[:500]}")

        return summary(sample(call, plan.c1_requests, plan.warmup, plan.sample_budget_s, plan.min_runs))


def http_c8(loadgen: Any, url: str, body: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """Images/s with 8 requests in flight (the load generator, its own process): a warm-up of 16
    requests, then a window from the first response until `c8_window_s` or `c8_requests` issued."""
    concurrency = 8
    warmup = {"url": url, "body": body, "concurrency": concurrency, "warmup_s": 0.0, "window_s": 0.0}
    loadgen.run({**warmup, "max_requests": 2 * concurrency, "max_s": plan.c8_max_s, "timeout_s": HTTP_TIMEOUT_S})
    job = {
        **warmup,
        "window_s": plan.c8_window_s,
        # the first `concurrency` are in flight before the window opens (at the first response)
        "max_requests": concurrency + plan.c8_requests,
        "max_s": plan.c8_max_s,
        "timeout_s": HTTP_TIMEOUT_S,
    }
    done = loadgen.run(job)
    window = http_window(done)
    start = done["measuring_at"]
    latencies = [r[1] - r[0] for r in done["records"] if r[2] == 200 and start is not None and r[0] >= start]
    return {
        "concurrency": concurrency,
        "images_per_s": window["items_per_s"],
        "latency": summary(latencies),
        "requests": window["requests"],
        "completed_in_window": window["completed_after_start"],
        "window_s": window["span_s"],
        "errors": window["errors"],
        "timed_out": window["timed_out"],
    }


def measure_gateway(plan: Plan, photo: bytes, checkpoints: Path) -> dict[str, Any]:
    """Start a local Ray Serve stack with the two models, measure, stop it (also on errors)."""
    from benchmarks.load import LoadGenerator
    from benchmarks.servers import GatewayStack
    from serve.config import slug

    url_photo = data_url(photo)
    siglip_body = {"model": SIGLIP_ID, "input": [url_photo], "modality": "image", "max_num_patches": PATCHES}
    florence_body = {"image_url": url_photo}
    args = gateway_args(checkpoints)
    with contextlib.ExitStack() as stack:
        started = time.perf_counter()
        gateway = GatewayStack(num_cpus=8)
        stack.callback(gateway.shutdown)
        # After ray.init, which installs a SIGTERM handler that ends the process without cleanup.
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
        gateway.deploy("photo", args, "/")
        ready_s = gateway.wait_ready("/", timeout_s=plan.ready_timeout_s)
        logger.info("gateway ready %.1fs after its start", time.perf_counter() - started)
        loadgen = LoadGenerator()
        stack.callback(loadgen.close)

        embeddings = f"{gateway.url}/v1/embeddings"
        detection = f"{gateway.url}/v1/vision/{slug(FLORENCE_ID)}/{FLORENCE_TASK}"
        results: dict[str, Any] = {"ready_s": ready_s, "models": args["models"]}
        results["siglip2_c1"] = http_c1(embeddings, json.dumps(siglip_body).encode(), plan)
        c1 = results["siglip2_c1"]
        logger.info("gateway SigLIP2 c=1: p50 %.1f ms, p90 %.1f ms", c1["p50_ms"], c1["p90_ms"])
        results["siglip2_c8"] = http_c8(loadgen, embeddings, siglip_body, plan)
        logger.info(
            "gateway SigLIP2 c=8: %.2f images/s (%d in the window, %d errors)",
            results["siglip2_c8"]["images_per_s"],
            results["siglip2_c8"]["completed_in_window"],
            results["siglip2_c8"]["errors"],
        )
        results["florence2_c1"] = http_c1(detection, json.dumps(florence_body).encode(), plan)
        logger.info("gateway Florence-2 c=1: p50 %.1f ms", results["florence2_c1"]["p50_ms"])
    return results


# ----- report -----


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if not numerator or not denominator else numerator / denominator


def header(plan: Plan, quick: bool, photo: bytes, started_at: datetime) -> dict[str, Any]:
    import torch

    packages = ("torch", "transformers", "ray", "pillow", "numpy", "httpx")
    return {
        "started_at": started_at.isoformat(timespec="seconds"),
        "quick": quick,
        "plan": asdict(plan),
        "machine": {
            "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "physical_cores": psutil.cpu_count(logical=False),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(),
            "load_average_at_start": [round(x, 2) for x in psutil.getloadavg()],
        },
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": {package: _version(package) for package in packages},
        "libjpeg_turbo": _libjpeg_turbo(),
        "git_commit": _git_commit(),
        "photo": {
            "path": str(PHOTO_PATH.relative_to(ROOT)),
            "width": PHOTO_SIZE[0],
            "height": PHOTO_SIZE[1],
            "jpeg_quality": PHOTO_QUALITY,
            "bytes": len(photo),
            "sha256": hashlib.sha256(photo).hexdigest(),
        },
        "siglip2_max_num_patches": PATCHES,
    }


def markdown(results: dict[str, Any]) -> str:
    head, local, gate, ratios = results["header"], results["in_process"], results["gateway"], results["ratios"]
    photo, machine = head["photo"], head["machine"]
    generation = local["florence2_generation"]
    draft = "x".join(str(v) for v in local["decoded_size"]["draft"])

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    def row(label: str, figure: dict[str, Any]) -> str:
        return f"| {label} | {ms(figure['p50_ms'])} | {ms(figure['p90_ms'])} | {figure['n']} |"

    c8 = gate["siglip2_c8"]
    slug = FLORENCE_ID.rsplit("/", 1)[-1].lower()
    lines = [
        "# Photo benchmark" + (" (--quick: a smoke run, not a measurement)" if head["quick"] else ""),
        "",
        f"One {photo['width']}x{photo['height']} JPEG (quality {photo['jpeg_quality']}, {photo['bytes'] / 1e6:.1f} MB),"
        f" tiny checkpoints, torch on {head['torch_threads']} threads in-process and in each model replica"
        f" (OMP_WAIT_POLICY in-process: {local['omp_wait_policy']}; replicas: local.yaml's `cpu_thread_wait`);"
        f" {machine['cpus_usable']} CPUs ({machine['cpu']}), load average at start"
        f" {', '.join(str(v) for v in machine['load_average_at_start'])}."
        f" Run {head['started_at']}, commit {head['git_commit']}, {results['wall_time_s']:.0f} s.",
        "",
        "| figure | p50 ms | p90 ms | n |",
        "|---|---:|---:|---:|",
        row("in-process: full decode (open, load, RGB)", local["decode_full"]),
        row(f"in-process: JPEG draft decode (1/{DRAFT_SCALE} per side, {draft})", local["decode_draft"]),
        row(f"in-process SigLIP2: full decode + processor ({PATCHES} patches) + model", local["siglip2_full"]),
        row("in-process SigLIP2: draft decode + processor + model", local["siglip2_draft"]),
        row(
            f"in-process Florence-2-base `<OD>`: full decode + processor + generate"
            f" ({generation['max_new_tokens']} tokens) + parse",
            local["florence2_full"],
        ),
        row("gateway SigLIP2 POST /v1/embeddings, concurrency 1", gate["siglip2_c1"]),
        row(f"gateway Florence-2-base POST /v1/vision/{slug}/{FLORENCE_TASK}, concurrency 1", gate["florence2_c1"]),
        row("gateway SigLIP2 POST /v1/embeddings, concurrency 8 (latency)", c8["latency"]),
        "",
        f"Gateway SigLIP2 at concurrency 8: **{c8['images_per_s']:.2f} images/s**"
        f" ({c8['completed_in_window']} responses"
        f" in a {c8['window_s']:.1f} s window, {c8['errors']} errors); in-process, one loop with the full decode:"
        f" {ratios['in_process_siglip2_images_per_s']:.2f} images/s.",
        "",
        "| ratio | value | target |",
        "|---|---:|---:|",
        f"| gateway SigLIP2 c=1 p50 / in-process SigLIP2 full-decode p50 | {_ratio_text(ratios['siglip2_c1_p50'])}"
        " | <= 1.0 |",
        "| gateway Florence-2 c=1 p50 / in-process Florence-2 full-decode p50"
        f" | {_ratio_text(ratios['florence2_c1_p50'])} | <= 1.0 |",
        "",
        "`python -m benchmarks.photo` (see its docstring for the method); JSON beside this file.",
        "",
    ]
    return "\n".join(lines)


def _ratio_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def write(results: dict[str, Any], results_dir: Path, extra_json: Path | None) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2) + "\n"
    (results_dir / "photo.json").write_text(text)
    (results_dir / "photo.md").write_text(markdown(results))
    if extra_json is not None:
        extra_json.parent.mkdir(parents=True, exist_ok=True)
        extra_json.write_text(text)


def run(plan: Plan, quick: bool, spin: bool = False) -> dict[str, Any]:
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    checkpoints = ROOT / "checkpoints" / "tiny"
    if not (checkpoints / "siglip2").is_dir() or not (checkpoints / "florence-2-base").is_dir():
        raise SystemExit(f"no tiny checkpoints in {checkpoints}: run `make checkpoints` first")
    photo = make_photo()
    # Idle torch threads as in the replicas (tiny models: passive, see local.yaml): with OpenMP's
    # default spin, two threads of a ~1 ms forward fight every other process for two cores, and
    # the in-process figure measures that fight (Florence-2's generate ~10x slower). Set before
    # torch is imported, and taken back before Ray starts, so that Ray's processes inherit the
    # environment `serve run` would give them.
    thread_env = {} if spin else {k: v for k, v in replica_thread_env().items() if k not in os.environ}
    os.environ.update(thread_env)
    try:
        in_process = measure_in_process(plan, photo, checkpoints)
        in_process["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "default (spin)")
    finally:
        for name in thread_env:
            os.environ.pop(name, None)
    results: dict[str, Any] = {"header": header(plan, quick, photo, started_at), "in_process": in_process}
    results["gateway"] = measure_gateway(plan, photo, checkpoints)
    gate = results["gateway"]
    results["ratios"] = {
        "siglip2_c1_p50": ratio(gate["siglip2_c1"]["p50_ms"], in_process["siglip2_full"]["p50_ms"]),
        "florence2_c1_p50": ratio(gate["florence2_c1"]["p50_ms"], in_process["florence2_full"]["p50_ms"]),
        "siglip2_c1_p50_vs_draft": ratio(gate["siglip2_c1"]["p50_ms"], in_process["siglip2_draft"]["p50_ms"]),
        "in_process_siglip2_images_per_s": 1000.0 / in_process["siglip2_full"]["p50_ms"],
        "siglip2_c8_images_per_s_vs_in_process": ratio(
            gate["siglip2_c8"]["images_per_s"], 1000.0 / in_process["siglip2_full"]["p50_ms"]
        ),
        "target": 1.0,
    }
    results["header"]["machine"]["load_average_at_end"] = [round(x, 2) for x in psutil.getloadavg()]
    results["wall_time_s"] = time.perf_counter() - started
    return results


# ----- helpers -----


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _libjpeg_turbo() -> bool | None:
    from PIL import features

    with contextlib.suppress(Exception):
        return bool(features.check_feature("libjpeg_turbo"))
    return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True).strip()
        changed = ["git", "diff", "--quiet", "HEAD", "--", ".", ":(exclude)benchmarks/results"]
        dirty = subprocess.run(changed, cwd=ROOT, check=False).returncode != 0
        return commit + ("-dirty" if dirty else "")
    return None


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and a short window: a smoke run")
    parser.add_argument("--json", type=Path, help="also write the JSON results here")
    parser.add_argument(
        "--omp-spin",
        action="store_true",
        help="in-process: OpenMP's default spinning idle threads, not the replicas' cpu_thread_wait",
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="where photo.{md,json} go")
    args = parser.parse_args(argv)
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"), ("RAY_USAGE_STATS_ENABLED", "0")):
        os.environ.setdefault(name, value)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "ray", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    results = run(QUICK if args.quick else FULL, args.quick, args.omp_spin)
    write(results, args.results, args.json)
    print(markdown(results))
    logger.info("wall time %.0fs; results in %s", results["wall_time_s"], args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
