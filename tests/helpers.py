"""Model ids and request helpers shared by the end-to-end tests."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import yaml
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
LOCAL_CONFIG = ROOT / "serve" / "configs" / "local.yaml"


def local_args() -> dict[str, Any]:
    """The `args:` of the embedded default config, as `serve run` would pass them."""
    config = yaml.safe_load(LOCAL_CONFIG.read_text())
    return config["applications"][0]["args"]


APP_NAME = "gigarouter"
"""The Serve application name of the session's gateway (tests/conftest.py)."""
FLORENCE_LARGE = "microsoft/Florence-2-large"
FLORENCE_BASE = "microsoft/Florence-2-base"
KOSMOS = "microsoft/kosmos-2-patch14-224"
SIGLIP = "google/siglip2-base-patch16-naflex"
BLIP = "Salesforce/blip-image-captioning-base"
COMING_SOON = [FLORENCE_BASE, KOSMOS, SIGLIP, BLIP]


def chat(model: str, text: str, image: str, **extra) -> dict:
    content = [{"type": "image_url", "image_url": {"url": image}}]
    if text:
        content.insert(0, {"type": "text", "text": text})
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def assert_error(response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def png_bytes(size: tuple[int, int] = (64, 48), color: str = "red") -> bytes:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).rectangle([size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] * 3 // 4], fill=color)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"
