"""The toy family's deployment class: the mean RGB colour of an image or of a region, in torch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig

from deployments.base import VisionModel
from deployments.image_inputs import Picture
from families.base import Task, check_task_input
from serve.contract import GenerateCall, Generation, ModelCall, Region, Usage
from serve.protocol import checked_region
from tests.toy_family.descriptor import TOY


@dataclass
class ToyItem:
    picture: Picture
    task: Task
    region: Region | None


class ToyColour(VisionModel):
    descriptor = TOY

    def setup(self) -> None:
        # Loaded like real weights would be: a config from the checkpoint folder.
        self.config = AutoConfig.from_pretrained(self.source)
        self.scale = torch.ones(3)

    async def accept(self, call: ModelCall) -> ToyItem:
        if not isinstance(call, GenerateCall):
            raise self.unsupported(call)
        task = self.task(call.task)
        check_task_input(self.descriptor, task, call.text, call.region is not None, self.input_names(call))
        picture = await self.picture(call.image, call.param_names.get("image", "image"))
        if call.region is not None:
            checked_region(call.region.as_dict(), picture.size)
        return ToyItem(picture, task, call.region)

    def group_key(self, item: ToyItem) -> Any:
        return item.task.name

    def predict(self, items: list[ToyItem]) -> list[Generation]:
        results = []
        for item in items:
            pixels = torch.from_numpy(np.asarray(item.picture.image, dtype=np.float32))
            if item.region is not None:
                # the region is in pixels of the image as sent; the decoded one may be smaller
                sx = item.picture.image.width / item.picture.size[0]
                sy = item.picture.image.height / item.picture.size[1]
                r = item.region
                pixels = pixels[int(r.y1 * sy) : int(r.y2 * sy), int(r.x1 * sx) : int(r.x2 * sx)]
            mean = (pixels.reshape(-1, 3).mean(dim=0) * self.scale).tolist()
            answer = {"mean_rgb": [round(v, 3) for v in mean], "width": item.picture.size[0], "height": item.picture.size[1]}
            results.append(Generation(task=item.task.name, text=json.dumps(answer), results=answer, usage=Usage(images=1)))
        return results
