"""The soak's traffic: a weighted mix of request kinds, each tied to the model it needs, sent by
concurrent clients while each model's schedule says it is in use.

Coming-soon models are used in waves (on for part of each period, then idle), so that during a soak
they wake, serve, and go back to zero several times; the live model is used all the time.
"""

from __future__ import annotations

import asyncio
import base64
import io
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx
from PIL import Image, ImageDraw

FLORENCE_LARGE = "microsoft/Florence-2-large"
FLORENCE_BASE = "microsoft/Florence-2-base"
KOSMOS = "microsoft/kosmos-2-patch14-224"
SIGLIP = "google/siglip2-base-patch16-naflex"
BLIP = "Salesforce/blip-image-captioning-base"
COMING_SOON = [FLORENCE_BASE, KOSMOS, SIGLIP, BLIP]


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
    """One request kind in the mix: how to build it, which status it must get, and the model it wakes
    (None: no model, e.g. listings), whose schedule says when the kind is sent."""

    name: str
    weight: int
    method: str
    path: str
    body: Any  # callable(rng) -> json body, or None
    expect: int = 200
    stream: bool = False
    model: str | None = None


def _img(rng: random.Random) -> str:
    return rng.choice(IMAGES)


MIX = [
    Kind(
        "chat florence-large <OD>",
        8,
        "POST",
        "/v1/chat/completions",
        lambda r: chat(FLORENCE_LARGE, "<OD>", _img(r), max_tokens=24),
        model=FLORENCE_LARGE,
    ),
    Kind(
        "chat florence-large <CAPTION> stream",
        4,
        "POST",
        "/v1/chat/completions",
        lambda r: chat(FLORENCE_LARGE, "<CAPTION>", _img(r), stream=True),
        stream=True,
        model=FLORENCE_LARGE,
    ),
    Kind(
        "chat florence-base <OCR>",
        4,
        "POST",
        "/v1/chat/completions",
        lambda r: chat(FLORENCE_BASE, "<OCR>", _img(r), max_tokens=16),
        model=FLORENCE_BASE,
    ),
    Kind(
        "chat kosmos <grounding>",
        4,
        "POST",
        "/v1/chat/completions",
        lambda r: chat(KOSMOS, "<grounding>An image of", _img(r), max_tokens=16),
        model=KOSMOS,
    ),
    Kind(
        "chat blip caption",
        6,
        "POST",
        "/v1/chat/completions",
        lambda r: chat(BLIP, r.choice(["", "a picture of"]), _img(r)),
        model=BLIP,
    ),
    Kind(
        "embeddings text",
        8,
        "POST",
        "/v1/embeddings",
        lambda r: {"model": SIGLIP, "input": [f"a photo of thing {r.randrange(1000)}" for _ in range(r.randint(1, 8))]},
        model=SIGLIP,
    ),
    Kind(
        "embeddings image",
        6,
        "POST",
        "/v1/embeddings",
        lambda r: {"model": SIGLIP, "input": [_img(r) for _ in range(r.randint(1, 3))], "encoding_format": "base64"},
        model=SIGLIP,
    ),
    Kind(
        "classifications",
        6,
        "POST",
        "/v1/classifications",
        lambda r: {"model": SIGLIP, "image": _img(r), "labels": ["cat", "dog", "red square", "car"][: r.randint(1, 4)]},
        model=SIGLIP,
    ),
    Kind(
        "scores",
        4,
        "POST",
        "/v1/scores",
        lambda r: {"model": SIGLIP, "images": [_img(r), _img(r)], "texts": ["a box", "a cat"]},
        model=SIGLIP,
    ),
    Kind(
        "vision task od + image",
        4,
        "POST",
        "/v1/vision/florence-2-large/object-detection",
        lambda r: {"image_url": _img(r), "include_image": True, "max_tokens": 24},
        model=FLORENCE_LARGE,
    ),
    Kind(
        "vision task region",
        2,
        "POST",
        "/v1/vision/florence-2-base/region-to-description",
        lambda r: {"image_url": IMAGES[0], "region": {"x1": 4, "y1": 4, "x2": 40, "y2": 30}, "max_tokens": 16},
        model=FLORENCE_BASE,
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
        model=SIGLIP,
    ),
    Kind(
        "invalid: over the token cap",
        1,
        "POST",
        "/v1/chat/completions",
        lambda r: chat(FLORENCE_LARGE, "<CAPTION>", _img(r), max_tokens=100000),
        expect=400,
        model=FLORENCE_LARGE,
    ),
]


@dataclass(frozen=True)
class Schedule:
    """When each coming-soon model is in use: for `on_s` of every `period_s`, at a phase of its own."""

    period_s: float
    on_s: float

    def active(self, model: str | None, t: float) -> bool:
        if model is None or model not in COMING_SOON:
            return True
        phase = COMING_SOON.index(model) * self.period_s / len(COMING_SOON)
        return (t + phase) % self.period_s < self.on_s


@dataclass
class Outcome:
    """One request: its kind, what came back, and when it was in flight (seconds since the soak began)."""

    kind: str
    status: int | str
    started: float
    ended: float
    problem: str | None = None  # unexpected status, body outside the envelope, client error
    bad_envelope: bool = False  # an error body that is not the gateway's envelope


@dataclass
class Results:
    outcomes: list[Outcome] = field(default_factory=list)

    def counts(self) -> Counter:
        return Counter((o.kind, o.status) for o in self.outcomes)

    def latencies(self) -> dict[str, list[float]]:
        found: dict[str, list[float]] = defaultdict(list)
        for o in self.outcomes:
            if isinstance(o.status, int):
                found[o.kind].append(o.ended - o.started)
        return found


def envelope_problem(status: int, content_type: str, text: str) -> str | None:
    """Why an error body is not the gateway's envelope, or None if it is."""
    if not content_type.startswith("application/json"):
        return f"HTTP {status} with {content_type or 'no content type'}: {text[:200]!r}"
    try:
        error = httpx.Response(status, content=text.encode()).json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status} without an error envelope: {text[:200]!r}"
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
        return f"HTTP {status} with an envelope of other keys: {text[:200]!r}"
    return None


async def one_request(http: httpx.AsyncClient, kind: Kind, rng: random.Random, t0: float) -> Outcome:
    body = kind.body(rng) if kind.body else None
    started = time.monotonic() - t0
    try:
        if kind.stream:
            async with http.stream(kind.method, kind.path, json=body) as response:
                raw = (await response.aread()).decode(errors="replace")
                lines = [line for line in raw.splitlines() if line.startswith("data: ")]
                stream_problem = None
                if response.status_code == 200 and (not lines or lines[-1] != "data: [DONE]"):
                    stream_problem = f"{kind.name}: stream did not end in [DONE]"
                status, text = response.status_code, raw
                content_type = response.headers.get("content-type", "")
        else:
            response = await http.request(kind.method, kind.path, json=body)
            status, text, stream_problem = response.status_code, response.text, None
            content_type = response.headers.get("content-type", "")
    except httpx.HTTPError as error:
        ended = time.monotonic() - t0
        return Outcome(kind.name, type(error).__name__, started, ended, f"{kind.name}: {type(error).__name__}: {error}")
    ended = time.monotonic() - t0
    bad = envelope_problem(status, content_type, text) if status >= 400 else None
    problem = stream_problem or (f"{kind.name}: {bad}" if bad else None)
    if problem is None and status != kind.expect:
        problem = f"{kind.name}: HTTP {status}, expected {kind.expect}: {text[:300]}"
    return Outcome(kind.name, status, started, ended, problem, bad_envelope=bad is not None)


async def client_loop(
    base_url: str, seed: int, t0: float, deadline: float, schedule: Schedule, results: Results
) -> None:
    """One client: requests of the kinds whose model is in use now, back to back, until `deadline`."""
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=base_url, timeout=180, trust_env=False) as http:
        while time.monotonic() < deadline:
            t = time.monotonic() - t0
            kinds = [k for k in MIX if schedule.active(k.model, t)]
            kind = rng.choices(kinds, [k.weight for k in kinds])[0]
            results.outcomes.append(await one_request(http, kind, rng, t0))
