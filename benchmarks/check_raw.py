"""The independent check's own raw loop: SigLIP2 image embeddings the way a user writes them.

`benchmarks.check` measures the gateway from a client of its own; to tell a disagreement caused by
the gateway or the benchmark's arithmetic from one caused by the machine running faster or slower
than when latest.json was written (on a shared 2-core VM, the same loop varies by ~10 % from one
40-second window to the next), it also times the model itself, between its gateway windows, with
this loop. Nothing of `benchmarks.workloads.ModelRunner` or of the benchmark's raw loop is used:
the loop is written here from the model card, so a fault in theirs shows up as a disagreement.

One run: decode `batch_size` copies of the request's image from its data URL (base64, JPEG, RGB),
the processor with 256 patches, `get_image_features`, L2-normalise: the same work the gateway does
for a batch of the same size.
"""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path
from typing import Any

PATCHES = 256
"""SigLIP2 naflex patches per image: a 256x256 image in 16x16 patches, as the gateway cuts it."""


class PlainLoop:
    """SigLIP2 on this process's CPU, `threads` torch threads, batches of `batch_size` images."""

    def __init__(self, checkpoint: Path, image_url: str, batch_size: int, threads: int = 2) -> None:
        import torch
        from transformers import AutoModel, AutoProcessor

        torch.set_num_threads(threads)
        self.torch = torch
        self.processor = AutoProcessor.from_pretrained(checkpoint)
        self.model = AutoModel.from_pretrained(checkpoint, dtype=torch.float32).eval()
        self.image_url = image_url
        self.batch_size = batch_size

    def embed(self) -> Any:
        """One batch through decode, processor and model: the embeddings (numpy, one row per image)."""
        from PIL import Image

        encoded = self.image_url.split(",", 1)[1]
        images = [Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB") for _ in range(self.batch_size)]
        with self.torch.inference_mode():
            inputs = self.processor(images=images, max_num_patches=PATCHES, return_tensors="pt")
            vectors = self.model.get_image_features(**inputs).pooler_output
            vectors = vectors / vectors.norm(p=2, dim=-1, keepdim=True)
        return vectors.numpy()

    def run_once(self) -> int:
        """One batch; the number of embeddings made."""
        return int(self.embed().shape[0])

    def window(self, seconds: float, warmup_runs: int = 1) -> dict[str, Any]:
        """Images/s over whole runs: after `warmup_runs`, runs back to back until `seconds` have
        passed; the rate is the images made over the time from the first run's start to the last
        one's end (no run cut by the window's edge)."""
        for _ in range(warmup_runs):
            self.run_once()
        started = time.perf_counter()
        images = runs = 0
        while time.perf_counter() - started < seconds:
            images += self.run_once()
            runs += 1
        elapsed = time.perf_counter() - started
        return {"images_per_s": images / elapsed, "runs": runs, "seconds": elapsed}
