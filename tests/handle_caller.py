"""A second Ray Serve application that calls the gateway's model deployments through Python handles."""

from __future__ import annotations

import io

from PIL import Image
from ray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class HandleCaller:
    """Calls BLIP and Florence-2 by deployment name with a PIL image and with encoded bytes."""

    def __init__(self, app_name: str) -> None:
        self.blip = serve.get_deployment_handle("blip-image-captioning-base", app_name=app_name)
        self.florence = serve.get_deployment_handle("florence-2-large", app_name=app_name)
        self.siglip = serve.get_deployment_handle("siglip2-base-patch16-naflex", app_name=app_name)

    async def __call__(self, png: bytes) -> dict:
        image = Image.open(io.BytesIO(png)).convert("RGB")
        return {
            "blip_from_pil": await self.blip.generate.remote(image=image),
            "blip_from_bytes": await self.blip.generate.remote(image=png),
            "florence_od": await self.florence.generate.remote(image=image, task="<OD>", max_new_tokens=24),
            "siglip_labels": await self.siglip.classify.remote(image=png, labels=["red square", "cat"]),
        }


app = HandleCaller.bind("gigarouter")
