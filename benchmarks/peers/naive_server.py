"""The naive peer: one uvicorn + FastAPI process calling the model once per request.

What a user writes first: a plain (sync) FastAPI route, which FastAPI runs in its thread pool,
decodes the request's image and calls the model on that one image. The model call holds a lock,
so one forward pass runs at a time with both torch threads (without it, 32 concurrent calls would
each start their own threads on the same two cores). No batching.

It serves any workload of `benchmarks.workloads.ALL_WORKLOADS` on the gateway's route with the
gateway's request body: the real-size ones, and the photo ones (`photo_siglip2` on /v1/embeddings,
`photo_florence2_od` on /v1/vision/florence-2-base/object-detection), one workload per process.

    python -m benchmarks.peers.naive_server --workload siglip2_embed --checkpoint checkpoints/real/siglip2 --port 8101
    python -m benchmarks.peers.naive_server --workload photo_florence2_od \
        --checkpoint checkpoints/tiny/florence-2-base --port 8103
"""

from __future__ import annotations

import argparse
import logging
import threading
from typing import Any

import uvicorn
from fastapi import FastAPI

from benchmarks.workloads import ALL_WORKLOADS, ModelRunner, Workload, request_image, response_body


def create_app(workload: Workload, runner: ModelRunner) -> FastAPI:
    """The FastAPI app: the workload's OpenAI route and /health."""
    app = FastAPI(title=f"naive {workload.name}")
    lock = threading.Lock()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(workload.path)
    def predict(body: dict[str, Any]) -> dict[str, Any]:
        image = request_image(workload, body)
        with lock:
            result = runner.run([image])[0]
        return response_body(workload, result)

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=sorted(ALL_WORKLOADS), required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s naive %(message)s")
    workload = ALL_WORKLOADS[args.workload]
    app = create_app(workload, ModelRunner(workload, args.checkpoint, args.threads))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
