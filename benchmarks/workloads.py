"""The benchmark workloads: their requests, and the plain model code the raw loop and the peers run.

Real-size workloads (`WORKLOADS`, `benchmarks.run`):

- `siglip2_embed`: POST /v1/embeddings with one 256x256 image as a data: URL (modality image),
  which SigLIP2 naflex cuts into exactly 256 patches of 16x16 pixels.
- `blip_caption`: POST /v1/chat/completions with one 384x384 image and no text (an unconditional
  caption) of exactly `CAPTION_TOKENS` tokens (see `benchmarks.models` for why every system
  generates the same number of tokens).

Photo workloads (`PHOTO_WORKLOADS`, `benchmarks.photo`; tiny checkpoints, one 12 MP JPEG):

- `photo_siglip2`: POST /v1/embeddings `{"model", "input": [data URL], "modality": "image",
  "max_num_patches": 256}`, the gateway's body, which the peers accept too.
- `photo_florence2_od`: POST /v1/vision/florence-2-base/object-detection `{"image_url": data URL}`,
  Florence-2-base's `<OD>` with serve/configs/local.yaml's generation settings; every system answers
  `{"results": {"bboxes": [{"x", "y", "w", "h", "label"}]}}` in pixels of the photo.

The gateway runs the model through its own deployment classes; the raw loop, the naive server and
LitServe run `ModelRunner` below, which is what a user would write with transformers: a full decode
of the image (open, load, RGB), the same processor calls, the same forward pass, the same
normalisation or generation settings.

torch and transformers are imported when a `ModelRunner` is made, not with this module: the photo
benchmark reads the workloads and local.yaml before it sets the OpenMP environment that torch reads
once, when it is loaded.
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
from PIL import Image

from serve.config import BatchConfig

CAPTION_TOKENS = 20
PATCHES = 256
FILL_WAIT_RATIO = BatchConfig().fill_wait_ratio
"""The gateway's default wait for a batch that is not full, as a share of its last model run."""
LOCAL_CONFIG = Path(__file__).resolve().parent.parent / "serve" / "configs" / "local.yaml"
FLORENCE_PROMPT = "<OD>"


@dataclass(frozen=True)
class Workload:
    """One benchmarked model call."""

    name: str
    checkpoint: str
    family: str
    model_id: str
    path: str
    image_side: int
    """The side of the workload's square test image (0: the photo workloads bring their own image)."""
    photo: bool = False

    def request_body(self, image_url: str) -> dict[str, Any]:
        """The JSON body every system receives (the gateway's request shape)."""
        if self.family == "siglip2" and self.photo:
            return {"model": self.model_id, "input": [image_url], "modality": "image", "max_num_patches": PATCHES}
        if self.family == "siglip2":
            return {"model": self.model_id, "input": image_url, "modality": "image"}
        if self.family == "florence2":
            return {"image_url": image_url}
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
PHOTO_WORKLOADS: dict[str, Workload] = {
    "photo_siglip2": Workload(
        "photo_siglip2", "siglip2", "siglip2", "google/siglip2-base-patch16-naflex", "/v1/embeddings", 0, photo=True
    ),
    "photo_florence2_od": Workload(
        "photo_florence2_od",
        "florence-2-base",
        "florence2",
        "microsoft/Florence-2-base",
        "/v1/vision/florence-2-base/object-detection",
        0,
        photo=True,
    ),
}
ALL_WORKLOADS: dict[str, Workload] = {**WORKLOADS, **PHOTO_WORKLOADS}
"""Every workload a peer server can serve."""


def local_entries(model_ids: list[str]) -> list[dict[str, Any]]:
    """These models' catalog entries in serve/configs/local.yaml, unchanged."""
    import yaml

    config = yaml.safe_load(LOCAL_CONFIG.read_text())
    models = {entry["id"]: entry for entry in config["applications"][0]["args"]["models"]}
    return [dict(models[model_id]) for model_id in model_ids]


def local_generation(model_id: str) -> dict[str, int]:
    """A generative model's default generation settings in local.yaml, as the gateway applies them."""
    from serve.config import ModelSpec

    spec = ModelSpec.model_validate(local_entries([model_id])[0])
    return {"max_new_tokens": spec.generation.max_new_tokens, "num_beams": spec.generation.num_beams}


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
    """The image of one request body (exactly one per request), fully decoded."""
    if workload.family == "siglip2":
        inputs = body["input"]
        if isinstance(inputs, list):
            if len(inputs) != 1:
                raise ValueError(f"expected one image per request, got {len(inputs)}")
            inputs = inputs[0]
        return decode_data_url(inputs)
    if workload.family == "florence2":
        return decode_data_url(body["image_url"])
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
    if workload.family == "florence2":
        return {"results": {"bboxes": result["bboxes"]}}
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
        import torch
        from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

        self.torch = torch
        torch.set_num_threads(threads)
        self.workload = workload
        self.processor = AutoProcessor.from_pretrained(checkpoint)
        model_class = AutoModel if workload.family == "siglip2" else AutoModelForImageTextToText
        self.model = model_class.from_pretrained(checkpoint, dtype=torch.float32).eval()
        self.generation = local_generation(workload.model_id) if workload.family == "florence2" else {}

    def run(self, images: list[Image.Image]) -> list[dict[str, Any]]:
        """One forward pass (or one `generate`) over the batch; one result per image."""
        with self.torch.inference_mode():
            if self.workload.family == "siglip2":
                return self._embed(images)
            if self.workload.family == "florence2":
                return self._detect(images)
            return self._caption(images)

    def _detect(self, images: list[Image.Image]) -> list[dict[str, Any]]:
        """Florence-2 `<OD>` as its model card shows it, batched: processor, generate, decode, parse."""
        inputs = self.processor(text=[FLORENCE_PROMPT] * len(images), images=images, return_tensors="pt")
        generated = self.model.generate(**inputs, **self.generation, do_sample=False)
        texts = self.processor.batch_decode(generated, skip_special_tokens=False)
        results = []
        for image, text in zip(images, texts):
            text = text.replace(self.processor.tokenizer.pad_token, "")
            parsed = self.processor.post_process_generation(text, task=FLORENCE_PROMPT, image_size=image.size)
            found = parsed[FLORENCE_PROMPT]
            results.append({"bboxes": [_box(box, label) for box, label in zip(found["bboxes"], found["labels"])]})
        return results

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


def _box(box: list[float], label: str) -> dict[str, Any]:
    """Corners in pixels as the gateway's `{"x", "y", "w", "h", "label"}`."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return {"x": min(x1, x2), "y": min(y1, y2), "w": abs(x2 - x1), "h": abs(y2 - y1), "label": label.strip()}
