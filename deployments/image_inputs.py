"""Images from calls: checked against the operator's limits and decoded only as large as the processor needs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from PIL import Image

from serve.contract import EncodedImage
from serve.errors import bad_request
from serve.image_codec import decode_image_for, probe_image
from serve.images import ImageLimits


@dataclass
class Picture:
    """A decoded image and the size it was sent at: results and regions are in pixels of `size`,
    while `image` may be smaller (decoded at the scale the processor needs)."""

    image: Image.Image
    size: tuple[int, int]


class ImageInputs:
    """Mixed into `VisionModel`: turning a call's image into a `Picture`.

    Uses the model's `image_limits` and, for the decoding scale, its `processor`; a family whose
    processor needs another scale overrides `min_image_size`. Records what the last image arrived
    as in `last_image` (reported by `stats`).
    """

    image_limits: ImageLimits
    last_image: dict[str, Any] | None

    def processor_size(self) -> tuple[int, int] | None:
        """The smallest (width, height) an image must keep for this family's processor to see every
        pixel it would see of the full image: from its image processor's `size` (fixed or shortest edge)."""
        size = getattr(getattr(self, "processor", None), "image_processor", None)
        size = getattr(size, "size", None) or {}
        if "height" in size and "width" in size:
            return int(size["width"]), int(size["height"])
        if "shortest_edge" in size:
            return int(size["shortest_edge"]), int(size["shortest_edge"])
        return None

    def min_image_size(self, size: tuple[int, int], item_options: Any = None) -> tuple[int, int] | None:
        """The smallest scale an image of `size` may be decoded at (None: full size)."""
        return self.processor_size()

    async def picture(self, value: EncodedImage | Image.Image | bytes, param: str = "image", item_options: Any = None) -> Picture:
        """An image from a call, decoded on a thread at the smallest scale the processor needs.

        Encoded bytes (the gateway's `EncodedImage`, or raw bytes from a handle) are checked against
        the operator's image limits here too; a PIL image from a handle is used as it is.
        """
        if isinstance(value, Image.Image):
            self.last_image = {"arrived_as": "PIL.Image", "bytes": None, "size": list(value.size), "decoded": None}
            return Picture(value if value.mode == "RGB" else value.convert("RGB"), value.size)
        arrived_as = type(value).__name__
        if isinstance(value, (bytes, bytearray, memoryview)):
            value = probe_image(bytes(value), self.image_limits, param)
        if not isinstance(value, EncodedImage):
            raise bad_request(f"{param} must be an image: encoded bytes or a PIL image", param=param)
        wanted = self.min_image_size(value.size, item_options)
        image = await asyncio.to_thread(decode_image_for, value, self.image_limits, param, wanted)
        self.last_image = {
            "arrived_as": arrived_as,
            "bytes": len(value.data),
            "size": list(value.size),
            "decoded": list(image.size),
        }
        return Picture(image, value.size)
