"""The LitServe peer: the same model behind LitServe with the gateway's batch settings.

One API server process and one inference worker (LitServe's default layout on one device), the
worker's torch limited to the same two threads. `decode_request` turns the OpenAI-style body into
an image, `predict` runs the batch LitServe collected (up to `--max-batch-size` requests, waiting
at most `--batch-timeout` seconds for it to fill), `encode_response` builds the OpenAI response.

The batch timeout is at least `MIN_BATCH_TIMEOUT_S`: with `batch_timeout=0` and batching on,
LitServe 0.2.19's worker polls its queue with `get_nowait` in a loop and keeps a core busy while
idle (`litserve/loops/base.py: collate_requests`), which would slow down every other system
measured beside it. With a timeout it waits on the queue for up to 1 ms at a time instead.

With `--batch-log FILE` the worker appends the size of every batch it runs to FILE, one a line:
the benchmark's view of LitServe's batching (the worker is a process of its own).

Like the naive server it serves any workload of `benchmarks.workloads.ALL_WORKLOADS`, the photo
ones included, on the gateway's route with the gateway's request body.

    python -m benchmarks.peers.litserve_server --workload siglip2_embed --checkpoint checkpoints/real/siglip2 \
        --port 8102 --max-batch-size 8 --batch-timeout 0.005
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import litserve as ls
from PIL import Image

from benchmarks.workloads import ALL_WORKLOADS, ModelRunner, Workload, request_image, response_body

MIN_BATCH_TIMEOUT_S = 0.001


class WorkloadAPI(ls.LitAPI):
    """A benchmark workload as a LitAPI (batched when `max_batch_size` > 1)."""

    def __init__(
        self,
        workload: Workload,
        checkpoint: str,
        threads: int,
        max_batch_size: int,
        batch_timeout: float,
        batch_log: Path | None = None,
    ):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=workload.path)
        self.workload = workload
        self.checkpoint = checkpoint
        self.threads = threads
        self.batch_log = batch_log

    def setup(self, device: str) -> None:
        self.runner = ModelRunner(self.workload, self.checkpoint, self.threads)
        self.batch_sizes = self.batch_log.open("a", buffering=1) if self.batch_log else None

    def decode_request(self, request) -> Image.Image:  # unannotated: LitServe then hands over the parsed JSON body
        return request_image(self.workload, request)

    def predict(self, x: Image.Image | list[Image.Image]) -> dict[str, Any] | list[dict[str, Any]]:
        images = list(x) if self.max_batch_size > 1 else [x]
        results = self.runner.run(images)
        if self.batch_sizes:
            self.batch_sizes.write(f"{len(images)}\n")
        return results if self.max_batch_size > 1 else results[0]

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return response_body(self.workload, output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=sorted(ALL_WORKLOADS), required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the inference worker")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-timeout", type=float, default=0.005)
    parser.add_argument("--batch-log", type=Path, help="append the size of every batch to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s litserve %(message)s")
    batch_timeout = max(args.batch_timeout, MIN_BATCH_TIMEOUT_S) if args.max_batch_size > 1 else args.batch_timeout
    api = WorkloadAPI(
        ALL_WORKLOADS[args.workload], args.checkpoint, args.threads, args.max_batch_size, batch_timeout, args.batch_log
    )
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=False)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, log_level="warning", generate_client_file=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
