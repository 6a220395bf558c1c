"""Kosmos-2: grounded captions whose phrases link to boxes, given normalised and in pixels."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from deployments.base import VisionModel

DEFAULT_PROMPT = "<grounding>An image of"


@dataclass
class Kosmos2Item:
    image: Image.Image
    prompt: str
    max_new_tokens: int
    num_beams: int


class Kosmos2(VisionModel):
    """Kosmos-2 through the native `Kosmos2ForConditionalGeneration`."""

    family = "kosmos2"

    def setup(self) -> None:
        self.processor = AutoProcessor.from_pretrained(self.source)
        self.model = AutoModelForImageTextToText.from_pretrained(self.source, dtype=self.dtype)
        self.model.to(self.device).eval()

    async def generate(
        self,
        image: Image.Image | bytes,
        task: str = "grounded-caption",
        text: str | None = None,
        max_new_tokens: int | None = None,
        num_beams: int | None = None,
    ) -> dict[str, Any]:
        """Continue a Kosmos-2 prompt (default `<grounding>An image of`) and extract its grounded entities."""
        tokens, beams = self.generation_settings(max_new_tokens, num_beams)
        prompt = (text or "").strip() or DEFAULT_PROMPT
        return await self.submit(Kosmos2Item(self.image(image), prompt, tokens, beams))

    def group_key(self, item: Kosmos2Item) -> Hashable:
        return (item.prompt, item.max_new_tokens, item.num_beams)

    def predict(self, items: list[Kosmos2Item]) -> list[dict[str, Any]]:
        first = items[0]
        inputs = self.processor(
            text=[item.prompt for item in items], images=[item.image for item in items], return_tensors="pt"
        )
        inputs = self.to_device(inputs)
        generated = self.model.generate(
            pixel_values=inputs["pixel_values"],
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            image_embeds_position_mask=inputs["image_embeds_position_mask"],
            max_new_tokens=first.max_new_tokens,
            num_beams=first.num_beams,
            do_sample=False,
        )
        prompt_tokens = int(inputs["input_ids"].shape[1])
        pad = self.processor.tokenizer.pad_token_id
        results = []
        for item, sequence in zip(items, generated.tolist()):
            produced = [t for t in sequence[prompt_tokens:] if t != pad]
            raw = self.processor.decode(sequence, skip_special_tokens=True)
            caption, entities = self.processor.post_process_generation(raw)
            results.append(
                {
                    "task": "grounded-caption",
                    "text": caption,
                    "results": {"caption": caption, "entities": [_entity(e, item.image.size) for e in entities]},
                    "finish_reason": "length" if len(produced) >= first.max_new_tokens else "stop",
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(produced)},
                }
            )
        return results


def _entity(entity: tuple, size: tuple[int, int]) -> dict[str, Any]:
    """One (phrase, (start, end), [normalised boxes]) entity with its boxes also in pixels."""
    phrase, (start, end), boxes = entity
    width, height = size
    return {
        "phrase": phrase,
        "span": [start, end],
        "boxes": [{"x1": x1, "y1": y1, "x2": x2, "y2": y2} for x1, y1, x2, y2 in boxes],
        "bboxes": [
            {"x": x1 * width, "y": y1 * height, "w": (x2 - x1) * width, "h": (y2 - y1) * height} for x1, y1, x2, y2 in boxes
        ],
    }
