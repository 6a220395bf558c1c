"""Florence-2: 15 prompt tasks, parsed by the processor into pixel-space boxes, quads and polygons."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from transformers import AutoModelForImageTextToText

from deployments.base import VisionModel
from deployments.image_inputs import Picture
from deployments.streaming import TokenSink
from families.base import Task
from families.florence2 import FLORENCE2
from serve.contract import Generation, ModelCall, Region, Usage
from serve.errors import bad_request
from serve.protocol import checked_region

LOC_TOKEN = re.compile(r"<loc_\d+>")
LOC_REGION = re.compile(r"^(<loc_\d{1,3}>){4}$")
PIXEL_REGION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*$")


@dataclass
class Florence2Item:
    picture: Picture
    task: Task
    prompt: str
    max_new_tokens: int
    num_beams: int
    sink: TokenSink | None = None  # set when the answer streams token by token


class Florence2(VisionModel):
    """Florence-2 (base or large) through the native transformers classes."""

    descriptor = FLORENCE2

    def setup(self) -> None:
        self.load(AutoModelForImageTextToText)
        # The encoder reads the image tokens, then the task prompt (text_tokens counts it, expanded).
        self.image_tokens = self.measure_image_tokens("<CAPTION>")

    async def accept(self, call: ModelCall) -> Florence2Item:
        """One task on one image. The prompt (image tokens, task prompt and text) must fit the
        encoder's positions and `max_new_tokens` the decoder's, else 400 naming the caller's field."""
        r = await self.generation_request(call)
        task_input = self._task_input(r.task, r.text, call.region, r.picture.size, r.names.region)
        prompt = r.task.prompt + task_input
        # Off the event loop: a long text takes a while to tokenize.
        await asyncio.to_thread(self._check_prompt, prompt, task_input, r.max_new_tokens, call.param_names)
        return Florence2Item(r.picture, r.task, prompt, r.max_new_tokens, r.num_beams)

    def _check_prompt(self, prompt: str, text: str, max_new_tokens: int, names: dict[str, str] | None) -> None:
        prompt_tokens = self.image_tokens + self.text_tokens(prompt)
        self.check_context(prompt_tokens, text, max_new_tokens, names, shared=False)

    def _task_input(self, task: Task, text: str, region: Region | None, size: tuple[int, int], param: str) -> str:
        if task.input != "region":
            return text
        if region is not None:
            return region_tokens(region.as_dict(), size, param)
        if LOC_REGION.match(text):
            return text
        match = PIXEL_REGION.match(text)
        if not match:
            raise bad_request(f"{task.prompt} needs a region: x1,y1,x2,y2 in pixels or four <loc_N> tokens", param=param)
        x1, y1, x2, y2 = (float(v) for v in match.groups())
        return region_tokens({"x1": x1, "y1": y1, "x2": x2, "y2": y2}, size, param)

    def group_key(self, item: Florence2Item) -> Hashable:
        # One generate call needs one prompt and one set of generation settings: no padding, so a
        # request batched with others gets exactly the answer it gets alone.
        return (item.prompt, item.max_new_tokens, item.num_beams)

    def prepare(self, items: list[Florence2Item]) -> Any:
        inputs = self.processor(
            text=[item.prompt for item in items], images=[item.picture.image for item in items], return_tensors="pt"
        )
        return self.to_device(inputs)

    def forward(self, items: list[Florence2Item], inputs: Any) -> tuple[Any, Any]:
        first = items[0]
        generated = self.model.generate(
            **inputs,
            max_new_tokens=first.max_new_tokens,
            num_beams=first.num_beams,
            do_sample=False,
            streamer=self.streamer(items),
        )
        return inputs, generated

    def streams(self, item: Florence2Item) -> bool:
        # Plain-text tasks (captions, OCR, region descriptions) under greedy search: a streamer
        # cannot follow beams, and boxes or polygons mean nothing until the whole answer is parsed.
        kind = self.processor.tasks_answer_post_processing_type.get(item.task.prompt, "pure_text")
        return item.num_beams == 1 and kind == "pure_text"

    def answer_text(self, item: Florence2Item, ids: list[int]) -> str:
        # As `finish` cleans a text answer (the processor's plain-text parsing uses no tokenizer).
        raw = self.stream_tokenizer.decode(ids, skip_special_tokens=False)
        parsed = self.processor.post_process_generation(raw, task=item.task.prompt, image_size=item.picture.size)
        return without_tokens(to_fal(parsed[item.task.prompt]), self.stream_tokenizer.all_special_tokens)

    def finish(self, items: list[Florence2Item], outputs: tuple[Any, Any]) -> list[Generation]:
        inputs, generated = outputs
        texts = self.processor.batch_decode(generated, skip_special_tokens=False)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        eos = self.model.generation_config.eos_token_id
        results = []
        for item, sequence, raw in zip(items, generated.tolist(), texts):
            # Boxes in pixels of the image as it was sent, whatever scale it was decoded at.
            structured = parse_answer(self.processor, raw, item.task.prompt, item.picture.size)
            new_tokens = [t for t in sequence[1:] if t != self.processor.tokenizer.pad_token_id]
            stopped = bool(new_tokens) and new_tokens[-1] in _as_list(eos)
            results.append(
                Generation(
                    task=item.task.name,
                    text=structured if isinstance(structured, str) else json.dumps(structured),
                    results=structured,
                    finish_reason="stop" if stopped or len(new_tokens) < item.max_new_tokens else "length",
                    usage=Usage(images=1, prompt_tokens=prompt_tokens, completion_tokens=len(new_tokens)),
                )
            )
        return results


def region_tokens(region: dict[str, float], size: tuple[int, int], param: str = "region") -> str:
    """A pixel region as Florence's four location tokens (1000 bins per side)."""
    x1, y1, x2, y2 = checked_region(region, size, param)
    width, height = size
    bins = [min(999, int(value / side * 1000)) for value, side in ((x1, width), (y1, height), (x2, width), (y2, height))]
    return "".join(f"<loc_{b}>" for b in bins)


def parse_answer(processor: Any, raw: str, task_prompt: str, size: tuple[int, int]) -> Any:
    """Decoded Florence-2 output -> the task's result in fal.ai's shapes, in pixels of the input image."""
    result = to_fal(processor.post_process_generation(raw, task=task_prompt, image_size=size)[task_prompt])
    if isinstance(result, str):
        result = without_tokens(result, processor.tokenizer.all_special_tokens)
    return result


def without_tokens(text: str, tokens: list[str]) -> str:
    """A text answer without these (special) tokens, trimmed."""
    for token in tokens:
        text = text.replace(token, "")
    return text.strip()


def to_fal(parsed: Any) -> Any:
    """The processor's parsed answer in fal.ai's Florence-2 result shapes, in pixels."""
    if isinstance(parsed, str):
        # The processor leaves location tokens in plain-text answers; a text answer holds none.
        return LOC_TOKEN.sub("", parsed).strip()
    if "quad_boxes" in parsed:
        return {"quad_boxes": [_quad(q, label) for q, label in zip(parsed["quad_boxes"], parsed["labels"])]}
    result: dict[str, Any] = {}
    if "polygons" in parsed:
        labels = parsed.get("polygons_labels", parsed.get("labels", []))
        result["polygons"] = [
            {"points": [{"x": float(xs[i]), "y": float(xs[i + 1])} for i in range(0, len(xs) - 1, 2)], "label": label}
            for polygons, label in zip(parsed["polygons"], labels)
            for xs in polygons
        ]
    if "bboxes" in parsed:
        labels = parsed.get("bboxes_labels", parsed.get("labels", []))
        result["bboxes"] = [_box(box, label) for box, label in zip(parsed["bboxes"], labels)]
    if set(result) == {"polygons", "bboxes"} and not result["polygons"]:
        del result["polygons"]
    return result


def _box(box: list[float], label: str) -> dict[str, Any]:
    # A model may emit corners in either order; the box is the same rectangle.
    x1, x2 = sorted(float(v) for v in box[0::2])
    y1, y2 = sorted(float(v) for v in box[1::2])
    return {"x": x1, "y": y1, "w": x2 - x1, "h": y2 - y1, "label": _clean(label)}


def _quad(quad: list[float], label: str) -> dict[str, Any]:
    xs, ys = [float(v) for v in quad[0::2]], [float(v) for v in quad[1::2]]
    return {
        "x": min(xs),
        "y": min(ys),
        "w": max(xs) - min(xs),
        "h": max(ys) - min(ys),
        "label": _clean(label),
        "points": [{"x": x, "y": y} for x, y in zip(xs, ys)],
    }


def _clean(label: str) -> str:
    return label.replace("</s>", "").replace("<s>", "").strip()


def _as_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
