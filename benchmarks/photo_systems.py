"""The photo benchmark's measurements: the photo, the user's raw loop in this process, and the served
systems (the gateway, the naive server and LitServe, one under load at a time).

See `benchmarks.photo` for the method; `PhotoBench` starts everything on an `ExitStack` that
stops it again.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from benchmarks.metrics import MIN_RUNS, busy_fraction, http_window, runs_spanned, window_seconds
from benchmarks.photo_figures import (
    CONCURRENCY,
    DRAFT_SCALE,
    MODELS,
    RAW_BATCH,
    SYSTEMS,
    THREADS,
    _ms,
    _num,
)
from benchmarks.servers import WORK_DIR, fresh_database, read_at_pass_end

logger = logging.getLogger("benchmarks.photo")

SIGLIP_ID = "google/siglip2-base-patch16-naflex"
FLORENCE_ID = "microsoft/Florence-2-base"
PHOTO_SIZE = (4032, 3024)
PHOTO_QUALITY = 92
PHOTO_SEED = 4032
PHOTO_PATH = WORK_DIR / f"photo-{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}-q{PHOTO_QUALITY}-v1.jpg"
HTTP_TIMEOUT_S = 120
APP = "photo"
"""The gateway's Serve application."""


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
    runs=20,
    warmup=2,
    sample_budget_s=30.0,
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


# ----- in-process: the decomposition and the user's loop -----


def replica_thread_env() -> dict[str, str]:
    """The OpenMP setting local.yaml's `cpu_thread_wait` gives both models' replicas ({} if they differ)."""
    from benchmarks.workloads import local_entries
    from serve.config import ModelSpec

    envs = [ModelSpec.model_validate(entry).thread_env for entry in local_entries([SIGLIP_ID, FLORENCE_ID])]
    return envs[0] if all(env == envs[0] for env in envs) else {}


def load_runners(checkpoints: Path) -> dict[str, Any]:
    """Each model loaded as a user loads it (`benchmarks.workloads.ModelRunner`), torch on `THREADS` threads."""
    from benchmarks.workloads import PHOTO_WORKLOADS, ModelRunner

    runners = {}
    for model, name in MODELS.items():
        workload = PHOTO_WORKLOADS[name]
        runners[model] = ModelRunner(workload, checkpoints / workload.checkpoint, THREADS)
    return runners


def user_loop(runner: Any, photo: bytes, images: int, decode: Callable[[bytes], Image.Image] = full_decode) -> Any:
    """What a user writes: open and decode every photo, then the processor and the model on all of them."""
    return runner.run([decode(photo) for _ in range(images)])


def measure_decomposition(plan: Plan, photo: bytes, runners: dict[str, Any]) -> dict[str, Any]:
    """Decode and SigLIP2 figures of one photo in this process, before any server runs."""

    def measure(name: str, call: Callable[[], Any]) -> dict[str, Any]:
        figure = summary(sample(call, plan.runs, plan.warmup, plan.sample_budget_s, plan.min_runs))
        logger.info(
            "in-process %s: p50 %.1f ms, p90 %.1f ms (n=%d)", name, figure["p50_ms"], figure["p90_ms"], figure["n"]
        )
        return figure

    siglip2 = runners["siglip2"]
    results = {
        "decode_full": measure("full decode", lambda: full_decode(photo)),
        "decode_draft": measure("draft decode", lambda: draft_decode(photo)),
        "siglip2_full": measure("SigLIP2, full decode", lambda: user_loop(siglip2, photo, 1)),
        "siglip2_draft": measure("SigLIP2, draft decode", lambda: user_loop(siglip2, photo, 1, draft_decode)),
    }
    results["decoded_size"] = {"full": list(full_decode(photo).size), "draft": list(draft_decode(photo).size)}
    results["florence2_generation"] = dict(runners["florence2"].generation)
    return results


def time_user_loop(runner: Any, photo: bytes, images: int, runs: int) -> float:
    """The median duration (s) of `runs` back-to-back runs of the user's loop over `images` photos."""
    durations = []
    for _ in range(max(1, runs)):
        started = time.perf_counter()
        user_loop(runner, photo, images)
        durations.append(time.perf_counter() - started)
    return statistics.median(durations)


def raw_c1(runner: Any, photo: bytes, plan: Plan) -> dict[str, Any]:
    """The user's loop on one photo at a time: latency of each run (decode, processor, model)."""
    return summary(
        sample(
            lambda: user_loop(runner, photo, 1),
            plan.c1_requests,
            plan.warmup,
            plan.c1_budget_s,
            min(plan.min_runs, plan.c1_requests),
        )
    )


def raw_c8(runner: Any, photo: bytes, seconds: float, min_runs: float) -> dict[str, Any]:
    """The user's loop over batches of `RAW_BATCH` photos, one batch after another, for at least
    `seconds` and `min_runs` batches: images over the summed batch times (no window edges)."""
    durations: list[float] = []
    started = time.perf_counter()
    while len(durations) < max(1, min_runs) or time.perf_counter() - started < seconds:
        t = time.perf_counter()
        user_loop(runner, photo, RAW_BATCH)
        durations.append(time.perf_counter() - t)
    images = RAW_BATCH * len(durations)
    return {
        "system": "raw",
        "concurrency": CONCURRENCY,
        "batch_size": RAW_BATCH,
        "runs": float(len(durations)),
        "items": images,
        "items_per_s": images / sum(durations),
        "batch_p50_ms": 1000 * statistics.median(durations),
    }


# ----- the served systems -----


def gateway_args(checkpoints: Path) -> dict[str, Any]:
    """`build_app` arguments: local.yaml's gateway settings and its entries of the two models, each
    live with one replica (no autoscaling) and `THREADS` torch threads."""
    import yaml

    from benchmarks.workloads import LOCAL_CONFIG, local_entries

    config = yaml.safe_load(LOCAL_CONFIG.read_text())["applications"][0]["args"]
    models = []
    for entry in local_entries([SIGLIP_ID, FLORENCE_ID]):
        deployment = {k: v for k, v in entry.get("deployment", {}).items() if k != "autoscaling_config"}
        deployment["num_replicas"] = 1
        models.append({**entry, "status": "live", "torch_threads": THREADS, "deployment": deployment})
    gateway = {**config.get("gateway", {}), "demand_db": fresh_database("photo-demand.sqlite3")}
    return {"checkpoint_dir": str(checkpoints), "gateway": gateway, "models": models}


def max_batch_sizes(args: dict[str, Any]) -> dict[str, int]:
    """Each model's `max_batch_size` in the gateway's entries (what LitServe is given)."""
    from serve.config import ModelSpec

    by_id = {entry["id"]: ModelSpec.model_validate(entry).batching.max_batch_size for entry in args["models"]}
    return {"siglip2": by_id[SIGLIP_ID], "florence2": by_id[FLORENCE_ID]}


def http_c1(url: str, body: bytes, plan: Plan) -> dict[str, Any]:
    """Sequential requests (one in flight) after `plan.warmup` unmeasured ones; each must answer 200."""
    headers = {"content-type": "application/json"}
    with httpx.Client(timeout=HTTP_TIMEOUT_S, trust_env=False) as client:

        def call() -> None:
            response = client.post(url, content=body, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"POST {url} answered {response.status_code}: {response.text[:500]}")

        return summary(
            sample(call, plan.c1_requests, plan.warmup, plan.c1_budget_s, min(plan.min_runs, plan.c1_requests))
        )


def own_run_s(system: str, run_s: dict[int, float]) -> float:
    """The duration of one model call of `system`, from the timed raw runs: a batch of 8 for the systems
    that batch (the raw loop, the gateway, LitServe), one photo for the naive server."""
    return run_s[1] if system == "naive" else run_s[RAW_BATCH]


class PhotoBench:
    """The gateway, the peers and the load generator of the served part; `stack` stops all of them."""

    def __init__(
        self,
        plan: Plan,
        photo: bytes,
        checkpoints: Path,
        runners: dict[str, Any],
        run_s: dict[str, dict[int, float]],
        peer_env: dict[str, str],
        stack: contextlib.ExitStack,
    ) -> None:
        from benchmarks.workloads import FILL_WAIT_RATIO, PHOTO_WORKLOADS, data_url

        self.plan = plan
        self.photo = photo
        self.runners = runners
        self.run_s = run_s
        self.workloads = {model: PHOTO_WORKLOADS[name] for model, name in MODELS.items()}
        url = data_url(photo)
        self.bodies = {model: workload.request_body(url) for model, workload in self.workloads.items()}
        self.encoded = {model: json.dumps(body).encode() for model, body in self.bodies.items()}
        self.args = gateway_args(checkpoints)
        self.batch_sizes = max_batch_sizes(self.args)
        self.peers: dict[tuple[str, str], Any] = {}
        self.batch_logs: dict[str, Path] = {}
        self.startup_s: dict[str, float] = {}
        self.litserve_wait_s = {model: FILL_WAIT_RATIO * run_s[model][RAW_BATCH] for model in MODELS}
        self._start(checkpoints, peer_env, stack)

    def _start(self, checkpoints: Path, peer_env: dict[str, str], stack: contextlib.ExitStack) -> None:
        from benchmarks.load import LoadGenerator
        from benchmarks.servers import GatewayStack, litserve_server, naive_server

        # The peers load their models while Ray starts.
        for model, workload in self.workloads.items():
            checkpoint = checkpoints / workload.checkpoint
            naive = naive_server(workload.name, checkpoint, THREADS, name=f"photo-naive-{model}", env=peer_env)
            stack.callback(naive.stop)
            self.peers[("naive", model)] = naive
            log = WORK_DIR / f"litserve-photo-{model}-batches.txt"
            log.unlink(missing_ok=True)
            self.batch_logs[model] = log
            litserve = litserve_server(
                workload.name,
                checkpoint,
                THREADS,
                self.batch_sizes[model],
                self.litserve_wait_s[model],
                log,
                name=f"photo-litserve-{model}",
                env=peer_env,
            )
            stack.callback(litserve.stop)
            self.peers[("litserve", model)] = litserve
        started = time.perf_counter()
        self.gateway = GatewayStack(num_cpus=8)
        stack.callback(self.gateway.shutdown)
        # After ray.init, which installs a SIGTERM handler that ends the process without cleanup.
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
        self.gateway.deploy(APP, self.args, "/")
        self.gateway.wait_ready("/", timeout_s=self.plan.ready_timeout_s)
        self.startup_s["gateway"] = time.perf_counter() - started
        logger.info("gateway ready %.1fs after its start", self.startup_s["gateway"])
        for (system, model), peer in self.peers.items():
            self.startup_s[f"{system}_{model}"] = peer.wait_ready(self.plan.ready_timeout_s)
        self.loadgen = LoadGenerator()
        stack.callback(self.loadgen.close)
        self.isolate(None)

    def url(self, system: str, model: str) -> str:
        base = self.gateway.url if system == "gateway" else self.peers[(system, model)].url
        return f"{base}{self.workloads[model].path}"

    def isolate(self, active: tuple[str, str] | None) -> None:
        """Resume the peer `active` (system, model) and pause every other one (SIGSTOP)."""
        for key, peer in self.peers.items():
            if key == active:
                peer.resume()
            else:
                peer.pause()

    def stats(self, model: str) -> dict[str, Any]:
        from serve.config import slug

        return self.gateway.stats(APP, slug(self.workloads[model].model_id))

    # ----- one round -----

    def measure_round(self, number: int) -> dict[str, dict[str, dict[str, Any]]]:
        """Every system at concurrency 1 and 8 for each model, one under load at a time; the order of
        models and systems is reversed every other round."""
        models = list(MODELS) if number % 2 == 0 else list(reversed(MODELS))
        systems = SYSTEMS if number % 2 == 0 else tuple(reversed(SYSTEMS))
        measured: dict[str, dict[str, dict[str, Any]]] = {}
        for model in models:
            measured[model] = {}
            for system in systems:
                measured[model][system] = self.measure(system, model)
            log_round(model, number + 1, measured[model])
        return measured

    def measure(self, system: str, model: str) -> dict[str, Any]:
        own = own_run_s(system, self.run_s[model])
        window_s = window_seconds(own, self.plan.window_runs, self.plan.min_window_s)
        warmup_s = self.plan.warmup_runs * own
        if system == "raw":
            self.isolate(None)
            runner = self.runners[model]
            c1 = raw_c1(runner, self.photo, self.plan)
            c8 = raw_c8(runner, self.photo, window_s, self.plan.window_runs)
        else:
            self.isolate(None if system == "gateway" else (system, model))
            c1 = http_c1(self.url(system, model), self.encoded[model], self.plan)
            c8 = self.http_c8(system, model, warmup_s, window_s, own)
        c8.update(window_s=window_s, warmup_s=warmup_s, run_s=own)
        return {"c1": c1, "c8": c8}

    def http_c8(self, system: str, model: str, warmup_s: float, window_s: float, own: float) -> dict[str, Any]:
        """Images/s with 8 requests in flight over one window; the gateway's busy fraction meanwhile."""
        job = {
            "url": self.url(system, model),
            "body": self.bodies[model],
            "concurrency": CONCURRENCY,
            "warmup_s": warmup_s,
            "window_s": window_s,
            "max_s": max(self.plan.max_job_s, 2 * (warmup_s + window_s + CONCURRENCY * own) + 60),
            "timeout_s": HTTP_TIMEOUT_S,
        }
        align_s = min(60.0, 3 * own + 2.0)
        marks: dict[str, dict[str, Any]] = {}

        def stats() -> dict[str, Any]:
            return self.stats(model) if system == "gateway" else batch_log_counts(self.batch_logs[model])

        def on_measuring() -> None:
            if system in ("gateway", "litserve"):
                marks["start"] = read_at_pass_end(stats, align_s)

        def on_stopped() -> None:
            # at the window's end, while the requests in flight keep the model busy (see read_at_pass_end)
            if "start" in marks:
                marks["end"] = read_at_pass_end(stats, align_s)

        done = self.loadgen.run(job, on_measuring, on_stopped)
        window = http_window(done)
        start = done["measuring_at"]
        latencies = [r[1] - r[0] for r in done["records"] if r[2] == 200 and start is not None and r[0] >= start]
        result = {
            "system": system,
            "concurrency": CONCURRENCY,
            "items_per_s": window["items_per_s"],
            "runs": runs_spanned(window.get("span_s"), own),
            "latency": summary(latencies),
            "requests": window["requests"],
            "completed_in_window": window.get("completed_after_start", 0),
            "span_s": window.get("span_s"),
            "errors": window["errors"],
            "timed_out": window["timed_out"],
        }
        if "start" in marks:
            before, after = marks["start"]["first"], stats()
            batches = after["batches"] - before["batches"]
            result["model_runs"] = batches
            result["mean_batch_size"] = (after["items"] - before["items"]) / batches if batches else None
            if system == "gateway":
                start = marks["start"]
                end = marks.get("end") or {"reading": after, "at": time.perf_counter(), "aligned": False}
                result["busy"] = {
                    **busy_fraction(start["reading"], end["reading"], end["at"] - start["at"]),
                    "aligned": start["aligned"] and end["aligned"],
                }
        if result["errors"]:
            logger.warning("%s %s at concurrency 8: %d failed requests", system, model, result["errors"])
        return result


def batch_log_counts(path: Path) -> dict[str, int]:
    """Batches and items so far in LitServe's batch log, in the shape of the replica's stats()."""
    from benchmarks.servers import batch_log_stats

    return batch_log_stats(path)


def log_round(model: str, number: int, measured: dict[str, dict[str, Any]]) -> None:
    parts = []
    for system, figures in measured.items():
        c8 = figures["c8"]
        busy = (c8.get("busy") or {}).get("busy_fraction")
        parts.append(
            f"{system} c1 p50 {_ms(figures['c1']['p50_ms'])} ms, c8 {c8['items_per_s']:.2f}/s"
            f" ({_num(c8.get('runs'), 1)} runs{'' if busy is None else f', busy {busy:.2f}'})"
        )
    logger.info("photo %s round %d: %s", model, number, "; ".join(parts))


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
