"""BLIP: unconditional captions, and conditional captions that continue a text prefix."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from PIL import Image
from transformers import AutoModelForImageTextToText

from deployments.base import VisionModel


@dataclass
class BlipItem:
    image: Image.Image
    prefix: str
    max_new_tokens: int
    num_beams: int


class Blip(VisionModel):
    """BLIP image captioning through the native `BlipForConditionalGeneration`."""

    family = "blip"

    def setup(self) -> None:
        self.load(AutoModelForImageTextToText)
        # The image reaches the text decoder through cross-attention: no tokens in its sequence.
        self.image_tokens = self.measure_image_tokens("a picture of")

    async def generate(
        self,
        image: Image.Image | bytes,
        task: str = "caption",
        text: str | None = None,
        max_new_tokens: int | None = None,
        num_beams: int | None = None,
        param_names: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Caption one image; with `text`, the caption continues that prefix.

        Prefix and `max_new_tokens` share the text decoder's positions: more is a 400 naming `text`
        or `max_new_tokens` as `param_names` maps them (see `VisionModel.check_context`).
        """
        tokens, beams = self.generation_settings(max_new_tokens, num_beams)
        picture = self.image(image)
        prefix = (text or "").strip()
        # Off the event loop: a long text takes a while to tokenize.
        await asyncio.to_thread(self._check_prompt, prefix, tokens, param_names)
        return await self.submit(BlipItem(picture, prefix, tokens, beams))

    def _check_prompt(self, prefix: str, max_new_tokens: int, names: dict[str, str] | None) -> None:
        # As `usage.prompt_tokens` counts it: without a prefix the decoder starts from its start token alone.
        prompt_tokens = self.image_tokens + self.text_tokens(prefix) if prefix else 0
        self.check_context(prompt_tokens, prefix, max_new_tokens, names, shared=True)

    def group_key(self, item: BlipItem) -> Hashable:
        return (item.prefix, item.max_new_tokens, item.num_beams)

    def predict(self, items: list[BlipItem]) -> list[dict[str, Any]]:
        first = items[0]
        images = [item.image for item in items]
        if first.prefix:
            inputs = self.processor(images=images, text=[item.prefix for item in items], return_tensors="pt")
        else:
            inputs = self.processor(images=images, return_tensors="pt")
        inputs = self.to_device(inputs)
        generated = self.model.generate(
            **inputs, max_new_tokens=first.max_new_tokens, num_beams=first.num_beams, do_sample=False
        )
        prompt_tokens = int(inputs["input_ids"].shape[1]) if "input_ids" in inputs else 0
        # Without a prefix the output still starts with the decoder's start token: not generated.
        first_new = prompt_tokens or 1
        texts = self.processor.batch_decode(generated, skip_special_tokens=True)
        pad = self.processor.tokenizer.pad_token_id
        results = []
        for sequence, text in zip(generated.tolist(), texts):
            produced = [t for t in sequence[first_new:] if t != pad]
            caption = text.strip()
            results.append(
                {
                    "task": "conditional-caption" if first.prefix else "caption",
                    "text": caption,
                    "results": caption,
                    "finish_reason": "length" if len(produced) >= first.max_new_tokens else "stop",
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(produced)},
                }
            )
        return results
