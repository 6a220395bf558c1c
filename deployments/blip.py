"""BLIP: unconditional captions, and conditional captions that continue a text prefix."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from transformers import AutoModelForImageTextToText

from deployments.base import VisionModel
from deployments.image_inputs import Picture
from deployments.streaming import TokenSink
from families.base import check_task_input
from families.blip import BLIP
from serve.contract import GenerateCall, Generation, ModelCall, Usage


@dataclass
class BlipItem:
    picture: Picture
    prefix: str
    max_new_tokens: int
    num_beams: int
    sink: TokenSink | None = None  # set when the caption streams token by token


class Blip(VisionModel):
    """BLIP image captioning through the native `BlipForConditionalGeneration`."""

    descriptor = BLIP

    def setup(self) -> None:
        self.load(AutoModelForImageTextToText)
        # The image reaches the text decoder through cross-attention: no tokens in its sequence.
        self.image_tokens = self.measure_image_tokens("a picture of")

    async def accept(self, call: ModelCall) -> BlipItem:
        """Caption one image; with `text` (task `conditional-caption`), the caption continues that prefix.

        Prefix and `max_new_tokens` share the text decoder's positions: more is a 400 naming the
        caller's field (see `VisionModel.check_context`).
        """
        if not isinstance(call, GenerateCall):
            raise self.unsupported(call)
        prefix = (call.text or "").strip()
        # `caption` with a text is the conditional caption: the task follows the input, as in chat.
        task = self.task("conditional-caption" if prefix else call.task)
        check_task_input(self.descriptor, task, prefix, call.region is not None, self.input_names(call))
        tokens, beams = self.generation_settings(call.max_new_tokens, call.num_beams)
        picture = await self.picture(call.image, call.param_names.get("image", "image"))
        # Off the event loop: a long text takes a while to tokenize.
        await asyncio.to_thread(self._check_prompt, prefix, tokens, call.param_names)
        return BlipItem(picture, prefix, tokens, beams)

    def _check_prompt(self, prefix: str, max_new_tokens: int, names: dict[str, str] | None) -> None:
        # As `usage.prompt_tokens` counts it: without a prefix the decoder starts from its start token alone.
        prompt_tokens = self.image_tokens + self.text_tokens(prefix) if prefix else 0
        self.check_context(prompt_tokens, prefix, max_new_tokens, names, shared=True)

    def group_key(self, item: BlipItem) -> Hashable:
        return (item.prefix, item.max_new_tokens, item.num_beams)

    def prepare(self, items: list[BlipItem]) -> Any:
        images = [item.picture.image for item in items]
        if items[0].prefix:
            inputs = self.processor(images=images, text=[item.prefix for item in items], return_tensors="pt")
        else:
            inputs = self.processor(images=images, return_tensors="pt")
        return self.to_device(inputs)

    def forward(self, items: list[BlipItem], inputs: Any) -> tuple[Any, Any]:
        first = items[0]
        generated = self.model.generate(
            **inputs,
            max_new_tokens=first.max_new_tokens,
            num_beams=first.num_beams,
            do_sample=False,
            streamer=self.streamer(items),
        )
        return inputs, generated

    def streams(self, item: BlipItem) -> bool:
        # Captions are text (a conditional one starts with its prefix); a streamer cannot follow beams.
        return item.num_beams == 1

    def finish(self, items: list[BlipItem], outputs: tuple[Any, Any]) -> list[Generation]:
        inputs, generated = outputs
        first = items[0]
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
                Generation(
                    task="conditional-caption" if first.prefix else "caption",
                    text=caption,
                    results=caption,
                    finish_reason="length" if len(produced) >= first.max_new_tokens else "stop",
                    usage=Usage(images=1, prompt_tokens=prompt_tokens, completion_tokens=len(produced)),
                )
            )
        return results
