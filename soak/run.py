"""A bounded soak: many concurrent clients, mixed models and endpoints, for a few minutes.

    python -m soak.run [--duration 180] [--clients 32] [--sample-every 10] [--json report.json]
    make soak SOAK_ARGS="--duration 60"

It starts its own Ray (a fresh local instance) and deploys the local config (tiny checkpoints,
`make checkpoints`) as the Serve application `soak`, HTTP on 127.0.0.1 at a free port; all traffic
goes there. After waking every model it runs the clients until the duration is up, then reports:

- requests by kind and HTTP status, with latency percentiles;
- unexpected outcomes: any status other than the one a request kind expects (200, or the 400/404
  of the few deliberately invalid requests in the mix), client timeouts, connection errors. The
  soak exits 1 if there is any;
- the RSS of every Serve replica process (psutil), sampled over the run, with its drift from the
  first samples to the last: flat numbers mean no leak at this load.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import socket
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
APP = "soak"

FLORENCE_LARGE = "microsoft/Florence-2-large"
FLORENCE_BASE = "microsoft/Florence-2-base"
KOSMOS = "microsoft/kosmos-2-patch14-224"
SIGLIP = "google/siglip2-base-patch16-naflex"
BLIP = "Salesforce/blip-image-captioning-base"


def image_url(side: tuple[int, int], seed: int, fmt: str = "PNG") -> str:
    rng = random.Random(seed)
    image = Image.new("RGB", side, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = rng.randrange(side[0] - 8), rng.randrange(side[1] - 8)
        draw.rectangle(
            [x, y, x + rng.randrange(4, side[0] - x), y + rng.randrange(4, side[1] - y)],
            fill=tuple(rng.randrange(256) for _ in range(3)),
        )
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    mime = "image/png" if fmt == "PNG" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode()}"


IMAGES = [
    image_url((64, 48), 1),
    image_url((224, 224), 2, "JPEG"),
    image_url((320, 200), 3),
    image_url((97, 131), 4, "JPEG"),
]


def chat(model: str, text: str, image: str, **extra: Any) -> dict:
    content = [{"type": "text", "text": text}] if text else []
    content.append({"type": "image_url", "image_url": {"url": image}})
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


@dataclass(frozen=True)
class Kind:
    """One request kind in the mix: how to build it and which status it must get."""

    name: str
    weight: int
    method: str
    path: str
    body: Any  # callable(rng) -> json body, or None
    expect: int = 200
    stream: bool = False


def _img(rng: random.Random) -> str:
    return rng.choice(IMAGES)


MIX = [
    Kind(
        "chat florence-large <OD>",
        8,
        "POST",
        "/v1/chat/completions",
        lambda r: chat(FLORENCE_LARGE, "<OD>", _img(r), max_tokens=24),
    ),
    Kind(
        "chat florence-large <CAPTION> stream",
        4,
        "POST",
        "/v1/chat/completions",
        lambda r: chat(FLORENCE_LARGE, "<CAPTION>", _img(r), stream=True),
        stream=True,
    ),
    Kind(
        "chat florence-base <OCR>",
        4,
        "POST",
        "/v1/chat/completions",
        lambda r: chat(FLORENCE_BASE, "<OCR>", _img(r), max_tokens=16),
    ),
    Kind(
        "chat kosmos <grounding>",
        4,
        "POST",
        "/v1/chat/completions",
        lambda r: chat(KOSMOS, "<grounding>An image of", _img(r), max_tokens=16),
    ),
    Kind(
        "chat blip caption",
        6,
        "POST",
        "/v1/chat/completions",
        lambda r: chat(BLIP, r.choice(["", "a picture of"]), _img(r)),
    ),
    Kind(
        "embeddings text",
        8,
        "POST",
        "/v1/embeddings",
        lambda r: {"model": SIGLIP, "input": [f"a photo of thing {r.randrange(1000)}" for _ in range(r.randint(1, 8))]},
    ),
    Kind(
        "embeddings image",
        6,
        "POST",
        "/v1/embeddings",
        lambda r: {"model": SIGLIP, "input": [_img(r) for _ in range(r.randint(1, 3))], "encoding_format": "base64"},
    ),
    Kind(
        "classifications",
        6,
        "POST",
        "/v1/classifications",
        lambda r: {"model": SIGLIP, "image": _img(r), "labels": ["cat", "dog", "red square", "car"][: r.randint(1, 4)]},
    ),
    Kind(
        "scores",
        4,
        "POST",
        "/v1/scores",
        lambda r: {"model": SIGLIP, "images": [_img(r), _img(r)], "texts": ["a box", "a cat"]},
    ),
    Kind(
        "vision task od + image",
        4,
        "POST",
        "/v1/vision/florence-2-large/object-detection",
        lambda r: {"image_url": _img(r), "include_image": True, "max_tokens": 24},
    ),
    Kind(
        "vision task region",
        2,
        "POST",
        "/v1/vision/florence-2-base/region-to-description",
        lambda r: {"image_url": IMAGES[0], "region": {"x1": 4, "y1": 4, "x2": 40, "y2": 30}, "max_tokens": 16},
    ),
    Kind("models list", 3, "GET", "/v1/models", None),
    Kind("interest", 1, "POST", f"/v1/models/{SIGLIP}/interest", None),
    # Deliberately invalid: the error paths must hold under load too.
    Kind(
        "invalid: unknown model",
        1,
        "POST",
        "/v1/chat/completions",
        lambda r: chat("acme/none", "", _img(r)),
        expect=404,
    ),
    Kind(
        "invalid: bad image",
        1,
        "POST",
        "/v1/classifications",
        lambda r: {"model": SIGLIP, "image": "data:image/png;base64,bm90IGFuIGltYWdl", "labels": ["x"]},
        expect=400,
    ),
    Kind(
        "invalid: over the token cap",
        1,
        "POST",
        "/v1/chat/completions",
        lambda r: chat(FLORENCE_LARGE, "<CAPTION>", _img(r), max_tokens=100000),
        expect=400,
    ),
]


@dataclass
class Results:
    counts: Counter = field(default_factory=Counter)  # (kind, status)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    unexpected: list[str] = field(default_factory=list)
    unexpected_count: int = 0

    def bad(self, text: str) -> None:
        self.unexpected_count += 1
        if len(self.unexpected) < 20:
            self.unexpected.append(text)


async def one_request(http: httpx.AsyncClient, kind: Kind, rng: random.Random, results: Results) -> None:
    body = kind.body(rng) if kind.body else None
    started = time.perf_counter()
    try:
        if kind.stream:
            async with http.stream(kind.method, kind.path, json=body) as response:
                lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
                if response.status_code == 200 and (not lines or lines[-1] != "data: [DONE]"):
                    results.bad(f"{kind.name}: stream did not end in [DONE]")
                status, text = response.status_code, "\n".join(lines[-2:])
        else:
            response = await http.request(kind.method, kind.path, json=body)
            status, text = response.status_code, response.text
    except httpx.HTTPError as error:
        results.counts[(kind.name, type(error).__name__)] += 1
        results.bad(f"{kind.name}: {type(error).__name__}: {error}")
        return
    results.counts[(kind.name, status)] += 1
    results.latencies[kind.name].append(time.perf_counter() - started)
    if status != kind.expect:
        results.bad(f"{kind.name}: HTTP {status}, expected {kind.expect}: {text[:300]}")


async def client_loop(base_url: str, seed: int, deadline: float, results: Results) -> None:
    rng = random.Random(seed)
    kinds, weights = MIX, [k.weight for k in MIX]
    async with httpx.AsyncClient(base_url=base_url, timeout=120, trust_env=False) as http:
        while time.monotonic() < deadline:
            await one_request(http, rng.choices(kinds, weights)[0], rng, results)


# ----- replica memory -----


def replica_rss(deployments: list[str]) -> dict[str, int]:
    """RSS in bytes of this soak's Serve processes: each replica (by deployment), the ingress, the proxy
    and the controller. Only descendants of this process count: other Ray instances on the machine don't."""
    found: dict[str, int] = {}
    marker = f"ServeReplica:{APP}:"
    names = [*deployments, "Gateway"]
    for process in psutil.Process().children(recursive=True):
        try:
            title = " ".join(process.cmdline())
            if marker in title:
                tail = title.split(marker, 1)[1]
                matches = [d for d in names if tail.startswith(d)]
                if not matches:
                    continue
                name = max(matches, key=len)
            elif "ray::ProxyActor" in title:
                name = "(proxy)"
            elif "ray::ServeController" in title:
                name = "(controller)"
            else:
                continue
            found[name if name not in found else f"{name}#{process.pid}"] = process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


async def sample_rss(
    deployments: list[str], every_s: float, deadline: float, samples: list[tuple[float, dict]]
) -> None:
    start = time.monotonic()
    while True:
        samples.append((time.monotonic() - start, await asyncio.to_thread(replica_rss, deployments)))
        if time.monotonic() + every_s > deadline:
            return
        await asyncio.sleep(every_s)


# ----- the gateway -----


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gateway(config: Path, state_dir: str) -> tuple[str, list[str]]:
    import ray
    from ray import serve

    from serve.app import build_app
    from serve.config import AppArgs

    args = yaml.safe_load(config.read_text())["applications"][0]["args"]
    args["checkpoint_dir"] = str((ROOT / args.get("checkpoint_dir", "checkpoints/tiny")).resolve())
    args.setdefault("gateway", {})["demand_db"] = str(Path(state_dir) / "demand.sqlite3")
    deployments = [spec.deployment_name for spec in AppArgs.model_validate(args).models]
    port = free_port()
    ray.init(
        address="local",
        num_cpus=max(4, os.cpu_count() or 1),
        include_dashboard=False,
        logging_level="WARNING",
        log_to_driver=False,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args), name=APP, route_prefix="/")
    return f"http://127.0.0.1:{port}", deployments


def wake_all(base_url: str, timeout_s: float = 300) -> None:
    """One request per model, so replica start-up is not part of the memory series."""
    rng = random.Random(0)
    firsts = [k for k in MIX if k.expect == 200 and k.body is not None]
    with httpx.Client(base_url=base_url, timeout=timeout_s, trust_env=False) as http:
        for kind in firsts:
            response = http.request(kind.method, kind.path, json=kind.body(rng))
            if response.status_code != 200:
                raise SystemExit(f"warm-up failed: {kind.name}: HTTP {response.status_code} {response.text[:300]}")


# ----- report -----


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def report(results: Results, samples: list[tuple[float, dict]], duration: float, clients: int) -> dict[str, Any]:
    total = sum(results.counts.values())
    by_kind: dict[str, dict[str, Any]] = {}
    for (kind, status), n in sorted(results.counts.items(), key=lambda item: (item[0][0], str(item[0][1]))):
        entry = by_kind.setdefault(kind, {"statuses": {}})
        entry["statuses"][str(status)] = n
    for kind, values in results.latencies.items():
        by_kind[kind].update(p50_s=round(percentile(values, 0.5), 3), p95_s=round(percentile(values, 0.95), 3))
    statuses = Counter()
    for (_, status), n in results.counts.items():
        statuses[str(status)] += n
    memory: dict[str, dict[str, float]] = {}
    names = sorted({name for _, rss in samples for name in rss})
    for name in names:
        series = [(t, rss[name] / 2**20) for t, rss in samples if name in rss]
        values = [v for _, v in series]
        # Allocators and caches grow while the first requests of each shape arrive; a leak keeps
        # growing after that. So: growth in the first third of the run, and growth after it.
        third = next((v for t, v in series if t >= duration / 3), values[-1])
        memory[name] = {
            "samples": len(values),
            "first_mib": round(values[0], 1),
            "at_one_third_mib": round(third, 1),
            "last_mib": round(values[-1], 1),
            "max_mib": round(max(values), 1),
            "growth_first_third_mib": round(third - values[0], 1),
            "growth_after_mib": round(values[-1] - third, 1),
        }
    return {
        "duration_s": round(duration, 1),
        "clients": clients,
        "requests": total,
        "requests_per_s": round(total / duration, 2) if duration else 0,
        "by_status": dict(sorted(statuses.items())),
        "unexpected": results.unexpected_count,
        "unexpected_examples": results.unexpected,
        "by_kind": by_kind,
        "replica_rss": memory,
        "rss_series_mib": [
            {"t_s": round(t, 1), **{k: round(v / 2**20, 1) for k, v in sorted(rss.items())}} for t, rss in samples
        ],
    }


def print_report(summary: dict[str, Any]) -> None:
    print(
        f"\nsoak: {summary['requests']} requests in {summary['duration_s']} s from {summary['clients']} clients"
        f" ({summary['requests_per_s']}/s)"
    )
    print(f"by status: {summary['by_status']}")
    print(f"unexpected: {summary['unexpected']}")
    for line in summary["unexpected_examples"]:
        print(f"  {line}")
    print("\nby kind:")
    for kind, entry in summary["by_kind"].items():
        print(f"  {kind:40s} {entry['statuses']}  p50 {entry.get('p50_s')} s  p95 {entry.get('p95_s')} s")
    print("\nRSS (MiB) of each Serve process: first sample, at 1/3 of the run, last, max; growth before and after 1/3")
    for name, entry in summary["replica_rss"].items():
        print(
            f"  {name:30s} {entry['first_mib']:7.1f} {entry['at_one_third_mib']:7.1f} {entry['last_mib']:7.1f}"
            f" {entry['max_mib']:7.1f}   {entry['growth_first_third_mib']:+6.1f} {entry['growth_after_mib']:+6.1f}"
            f"   ({entry['samples']} samples)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load (default 180)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--config", type=Path, default=ROOT / "serve" / "configs" / "local.yaml")
    parser.add_argument("--json", type=Path, help="also write the report here")
    options = parser.parse_args(argv)
    if not 1 <= options.clients <= 256 or not 1 <= options.duration <= 3600:
        parser.error("clients must be 1..256 and duration 1..3600 s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    with tempfile.TemporaryDirectory(prefix="soak-") as state_dir:
        base_url, deployments = start_gateway(options.config, state_dir)
        try:
            print(f"gateway at {base_url}; waking every model ...", flush=True)
            wake_all(base_url)
            print(f"{options.clients} clients for {options.duration:g} s ...", flush=True)
            results = Results()
            samples: list[tuple[float, dict]] = []

            async def run() -> float:
                start = time.monotonic()
                deadline = start + options.duration
                await asyncio.gather(
                    sample_rss(deployments, options.sample_every, deadline, samples),
                    *(client_loop(base_url, seed, deadline, results) for seed in range(options.clients)),
                )
                samples.append((time.monotonic() - start, await asyncio.to_thread(replica_rss, deployments)))
                return time.monotonic() - start

            duration = asyncio.run(run())
        finally:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    summary = report(results, samples, duration, options.clients)
    print_report(summary)
    if options.json:
        options.json.write_text(json.dumps(summary, indent=2))
    return 1 if summary["unexpected"] else 0


if __name__ == "__main__":
    sys.exit(main())
