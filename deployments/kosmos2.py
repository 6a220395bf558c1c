"""Kosmos-2: grounded captions, phrase grounding, region descriptions and grounded VQA, with pixel boxes."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from transformers import AutoModelForImageTextToText

from deployments.base import VisionModel
from deployments.image_inputs import Picture
from families.kosmos2 import DEFAULT_CAPTION_PROMPT, KOSMOS2
from serve.contract import Generation, ModelCall, Region, Usage
from serve.errors import bad_request
from serve.protocol import checked_region

VQA_ANSWER = "Answer:"

Box = tuple[float, float, float, float]


@dataclass
class Kosmos2Item:
    picture: Picture
    task: str
    prompt: str
    box: Box | None
    max_new_tokens: int
    num_beams: int


class Kosmos2(VisionModel):
    """Kosmos-2 through the native `Kosmos2ForConditionalGeneration`."""

    descriptor = KOSMOS2

    def setup(self) -> None:
        self.load(AutoModelForImageTextToText)
        # `<image>`, the image's latent tokens and `</image>` come before the prompt in one sequence.
        self.image_tokens = self.measure_image_tokens(DEFAULT_CAPTION_PROMPT)

    async def accept(self, call: ModelCall) -> Kosmos2Item:
        """One Kosmos-2 task on one image; entities carry phrase, span and boxes (normalised and pixels).

        Image tokens, prompt and `max_new_tokens` share the text model's positions: more is a 400
        naming the caller's field (see `VisionModel.check_context`).
        """
        r = await self.generation_request(call)
        prompt, box = build_prompt(r.task.name, r.text, call.region, r.picture.size, r.names.region)
        # Off the event loop: a long text takes a while to tokenize.
        await asyncio.to_thread(self._check_prompt, prompt, box, r.text, r.max_new_tokens, call.param_names)
        return Kosmos2Item(r.picture, r.task.name, prompt, box, r.max_new_tokens, r.num_beams)

    def _check_prompt(
        self, prompt: str, box: Box | None, text: str, max_new_tokens: int, names: dict[str, str] | None
    ) -> None:
        boxes = None if box is None else [[box]]
        prompt_tokens = self.image_tokens + self.text_tokens(prompt, bboxes=boxes)
        self.check_context(prompt_tokens, text, max_new_tokens, names, shared=True)

    def group_key(self, item: Kosmos2Item) -> Hashable:
        # Equal prompts (and one box or none) tokenize to equal lengths, so no row needs padding.
        return (item.prompt, item.box is None, item.max_new_tokens, item.num_beams)

    def prepare(self, items: list[Kosmos2Item]) -> Any:
        boxes = None if items[0].box is None else [[item.box] for item in items]
        inputs = self.processor(
            text=[item.prompt for item in items],
            images=[item.picture.image for item in items],
            bboxes=boxes,
            return_tensors="pt",
        )
        return self.to_device(inputs)

    def forward(self, items: list[Kosmos2Item], inputs: Any) -> tuple[Any, Any]:
        first = items[0]
        generated = self.model.generate(
            pixel_values=inputs["pixel_values"],
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            image_embeds_position_mask=inputs["image_embeds_position_mask"],
            max_new_tokens=first.max_new_tokens,
            num_beams=first.num_beams,
            do_sample=False,
        )
        return inputs, generated

    def finish(self, items: list[Kosmos2Item], outputs: tuple[Any, Any]) -> list[Generation]:
        inputs, generated = outputs
        first = items[0]
        prompt_tokens = int(inputs["input_ids"].shape[1])
        pad = self.processor.tokenizer.pad_token_id
        results = []
        for item, sequence in zip(items, generated.tolist()):
            produced = [t for t in sequence[prompt_tokens:] if t != pad]
            # Decode the whole sequence: the processor keeps what follows `</image>`, prompt included.
            raw = self.processor.decode(sequence, skip_special_tokens=True)
            text, structured = parse_answer(self.processor, raw, item.task, item.picture.size)
            results.append(
                Generation(
                    task=item.task,
                    text=text,
                    results=structured,
                    finish_reason="length" if len(produced) >= first.max_new_tokens else "stop",
                    usage=Usage(images=1, prompt_tokens=prompt_tokens, completion_tokens=len(produced)),
                )
            )
        return results


def build_prompt(
    task: str, text: str, region: Region | None, size: tuple[int, int], region_param: str = "region"
) -> tuple[str, Box | None]:
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
        raise bad_request("referring-expression-generation needs a region", param=region_param)
    return "<grounding><phrase> It</phrase> is", normalised_box(region.as_dict(), size, region_param)


def normalised_box(region: dict[str, float], size: tuple[int, int], param: str = "region") -> Box:
    """A pixel region {x1, y1, x2, y2} as Kosmos-2's normalised box, checked against the image."""
    x1, y1, x2, y2 = checked_region(region, size, param)
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
