"""Kosmos-2: grounded captions, phrase grounding, region descriptions and grounded VQA, with pixel boxes."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from PIL import Image
from transformers import AutoModelForImageTextToText

from deployments.base import VisionModel
from serve.errors import bad_request
from serve.protocol import checked_region

DEFAULT_CAPTION_PROMPT = "<grounding>An image of"
VQA_ANSWER = "Answer:"

Box = tuple[float, float, float, float]


@dataclass
class Kosmos2Item:
    image: Image.Image
    task: str
    prompt: str
    box: Box | None
    max_new_tokens: int
    num_beams: int


class Kosmos2(VisionModel):
    """Kosmos-2 through the native `Kosmos2ForConditionalGeneration`."""

    family = "kosmos2"

    def setup(self) -> None:
        self.load(AutoModelForImageTextToText)
        # `<image>`, the image's latent tokens and `</image>` come before the prompt in one sequence.
        self.image_tokens = self.measure_image_tokens(DEFAULT_CAPTION_PROMPT)

    async def generate(
        self,
        image: Image.Image | bytes,
        task: str = "grounded-caption",
        text: str | None = None,
        region: dict[str, float] | None = None,
        max_new_tokens: int | None = None,
        num_beams: int | None = None,
        param_names: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Run one Kosmos-2 task on one image; entities carry phrase, span and boxes (normalised and pixels).

        Image tokens, prompt and `max_new_tokens` share the text model's positions: more is a 400
        naming `text` or `max_new_tokens` as `param_names` maps them (see `VisionModel.check_context`).
        """
        image = self.image(image)
        spec = self.task(task)
        tokens, beams = self.generation_settings(max_new_tokens, num_beams)
        text = (text or "").strip()
        prompt, box = build_prompt(spec.name, text, region, image.size)
        # Off the event loop: a long text takes a while to tokenize.
        await asyncio.to_thread(self._check_prompt, prompt, box, text, tokens, param_names)
        return await self.submit(Kosmos2Item(image, spec.name, prompt, box, tokens, beams))

    def _check_prompt(
        self, prompt: str, box: Box | None, text: str, max_new_tokens: int, names: dict[str, str] | None
    ) -> None:
        boxes = None if box is None else [[box]]
        prompt_tokens = self.image_tokens + self.text_tokens(prompt, bboxes=boxes)
        self.check_context(prompt_tokens, text, max_new_tokens, names, shared=True)

    def group_key(self, item: Kosmos2Item) -> Hashable:
        # Equal prompts (and one box or none) tokenize to equal lengths, so no row needs padding.
        return (item.prompt, item.box is None, item.max_new_tokens, item.num_beams)

    def predict(self, items: list[Kosmos2Item]) -> list[dict[str, Any]]:
        first = items[0]
        boxes = None if first.box is None else [[item.box] for item in items]
        inputs = self.processor(
            text=[item.prompt for item in items],
            images=[item.image for item in items],
            bboxes=boxes,
            return_tensors="pt",
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
            # Decode the whole sequence: the processor keeps what follows `</image>`, prompt included.
            raw = self.processor.decode(sequence, skip_special_tokens=True)
            text, structured = parse_answer(self.processor, raw, item.task, item.image.size)
            results.append(
                {
                    "task": item.task,
                    "text": text,
                    "results": structured,
                    "finish_reason": "length" if len(produced) >= first.max_new_tokens else "stop",
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(produced)},
                }
            )
        return results


def build_prompt(task: str, text: str, region: dict[str, float] | None, size: tuple[int, int]) -> tuple[str, Box | None]:
    """The Kosmos-2 prompt of a task, and the normalised box it refers to (if any)."""
    if task == "grounded-caption":
        if not text:
            return DEFAULT_CAPTION_PROMPT, None
        return (text if text.startswith("<grounding>") else f"<grounding>{text}"), None
    if task == "phrase-grounding":
        if not text:
            raise bad_request("phrase-grounding needs a phrase in text_input", param="text_input")
        return f"<grounding><phrase> {text}</phrase>", None
    if task == "grounded-vqa":
        if not text:
            raise bad_request("grounded-vqa needs a question in text_input", param="text_input")
        return f"<grounding> Question: {text} {VQA_ANSWER}", None
    if region is None:
        raise bad_request("referring-expression-generation needs a region", param="region")
    return "<grounding><phrase> It</phrase> is", normalised_box(region, size)


def normalised_box(region: dict[str, float], size: tuple[int, int]) -> Box:
    """A pixel region {x1, y1, x2, y2} as Kosmos-2's normalised box, checked against the image."""
    x1, y1, x2, y2 = checked_region(region, size)
    width, height = size
    return (x1 / width, y1 / height, x2 / width, y2 / height)


def parse_answer(processor: Any, raw: str, task: str, size: tuple[int, int]) -> tuple[str, dict[str, Any]]:
    """Decoded Kosmos-2 output -> (answer text, {text, entities}) with entity boxes in pixels too."""
    cleaned, entities = processor.post_process_generation(raw)
    answer = cleaned
    if task == "grounded-vqa" and VQA_ANSWER in cleaned:
        answer = cleaned.split(VQA_ANSWER, 1)[1].strip()
    return answer, {"text": cleaned, "answer": answer, "entities": [entity(e, size) for e in entities]}


def entity(raw: tuple, size: tuple[int, int]) -> dict[str, Any]:
    """One (phrase, (start, end), [normalised boxes]) entity, with its boxes also in pixels."""
    phrase, (start, end), boxes = raw
    width, height = size
    return {
        "phrase": phrase,
        "span": [start, end],
        "boxes": [{"x1": x1, "y1": y1, "x2": x2, "y2": y2} for x1, y1, x2, y2 in boxes],
        "bboxes": [
            {"x": x1 * width, "y": y1 * height, "w": (x2 - x1) * width, "h": (y2 - y1) * height, "label": phrase}
            for x1, y1, x2, y2 in boxes
        ],
    }
