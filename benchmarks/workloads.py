"""The two benchmark workloads: their requests, and the plain model code the raw loop and the peers run.

- `siglip2_embed`: POST /v1/embeddings with one 256x256 image as a data: URL (modality image),
  which SigLIP2 naflex cuts into exactly 256 patches of 16x16 pixels.
- `blip_caption`: POST /v1/chat/completions with one 384x384 image and no text (an unconditional
  caption) of exactly `CAPTION_TOKENS` tokens (see `benchmarks.models` for why every system
  generates the same number of tokens).

The gateway runs the model through its own deployment classes; the raw loop, the naive server and
LitServe run `ModelRunner` below, which is what a user would write with transformers: the same
processor calls, the same forward pass, the same normalisation or generation settings.
"""

from __future__ import annotations

import base64
import io
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

from serve.config import BatchConfig

CAPTION_TOKENS = 20
PATCHES = 256
FILL_WAIT_RATIO = BatchConfig().fill_wait_ratio
"""The gateway's default wait for a batch that is not full, as a share of its last model run."""


@dataclass(frozen=True)
class Workload:
    """One benchmarked model call."""

    name: str
    checkpoint: str
    family: str
    model_id: str
    path: str
    image_side: int

    def request_body(self, image_url: str) -> dict[str, Any]:
        """The OpenAI-style JSON body every system receives."""
        if self.family == "siglip2":
            return {"model": self.model_id, "input": image_url, "modality": "image"}
        content = [{"type": "image_url", "image_url": {"url": image_url}}]
        messages = [{"role": "user", "content": content}]
        return {"model": self.model_id, "messages": messages, "max_tokens": CAPTION_TOKENS}

    def image_url(self) -> str:
        """The workload's image as a data: URL (a deterministic, photo-like JPEG)."""
        return data_url(sample_jpeg(self.image_side))


WORKLOADS: dict[str, Workload] = {
    "siglip2_embed": Workload(
        "siglip2_embed", "siglip2", "siglip2", "google/siglip2-base-patch16-naflex", "/v1/embeddings", 256
    ),
    "blip_caption": Workload(
        "blip_caption", "blip", "blip", "Salesforce/blip-image-captioning-base", "/v1/chat/completions", 384
    ),
}


def sample_jpeg(side: int, seed: int = 0) -> bytes:
    """A square JPEG with smooth gradients and noise, so decoding costs what a photo costs."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    channels = [ramp[None, :].repeat(side, 0), ramp[:, None].repeat(side, 1), ramp[::-1][None, :].repeat(side, 0)]
    pixels = np.stack(channels, -1)
    pixels = np.clip(pixels + rng.normal(0, 24, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def decode_data_url(url: str) -> Image.Image:
    """A data: URL as an RGB image."""
    if not url.startswith("data:image/") or ";base64," not in url:
        raise ValueError("expected a base64 data:image/ URL")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")


def request_image(workload: Workload, body: dict[str, Any]) -> Image.Image:
    """The image of one request body."""
    if workload.family == "siglip2":
        return decode_data_url(body["input"])
    parts = body["messages"][-1]["content"]
    return decode_data_url(next(part["image_url"]["url"] for part in parts if part.get("type") == "image_url"))


def response_body(workload: Workload, result: dict[str, Any]) -> dict[str, Any]:
    """One model result in the OpenAI response shape the gateway answers with."""
    if workload.family == "siglip2":
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": result["embedding"]}],
            "model": workload.model_id,
            "usage": {"prompt_tokens": 0, "total_tokens": 0, "images": 1},
        }
    tokens = result["completion_tokens"]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": workload.model_id,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": result["text"]}, "finish_reason": "length"}
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens},
    }


class ModelRunner:
    """A workload's model, loaded with transformers and called on a list of images."""

    def __init__(self, workload: Workload, checkpoint: str | Path, threads: int = 2) -> None:
        torch.set_num_threads(threads)
        self.workload = workload
        self.processor = AutoProcessor.from_pretrained(checkpoint)
        model_class = AutoModel if workload.family == "siglip2" else AutoModelForImageTextToText
        self.model = model_class.from_pretrained(checkpoint, dtype=torch.float32).eval()

    def run(self, images: list[Image.Image]) -> list[dict[str, Any]]:
        """One forward pass (or one `generate`) over the batch; one result per image."""
        with torch.inference_mode():
            if self.workload.family == "siglip2":
                return self._embed(images)
            return self._caption(images)

    def _embed(self, images: list[Image.Image]) -> list[dict[str, Any]]:
        inputs = self.processor(images=images, max_num_patches=PATCHES, return_tensors="pt")
        vectors = self.model.get_image_features(**inputs).pooler_output.float()
        vectors = vectors / vectors.norm(p=2, dim=-1, keepdim=True)
        return [{"embedding": row} for row in vectors.numpy().tolist()]

    def _caption(self, images: list[Image.Image]) -> list[dict[str, Any]]:
        inputs = self.processor(images=images, return_tensors="pt")
        generated = self.model.generate(
            **inputs, max_new_tokens=CAPTION_TOKENS, min_new_tokens=CAPTION_TOKENS, num_beams=1, do_sample=False
        )
        # Without a text prefix BLIP starts from its [DEC] token alone: that one position is the prompt.
        prompt = inputs["input_ids"].shape[1] if "input_ids" in inputs else 1
        texts = self.processor.batch_decode(generated, skip_special_tokens=True)
        return [{"text": text.strip(), "completion_tokens": int(generated.shape[1] - prompt)} for text in texts]
