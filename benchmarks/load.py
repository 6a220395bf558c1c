"""A closed-loop HTTP load generator (httpx + asyncio), run as its own process.

`LoadGenerator` starts `python -m benchmarks.load` once and sends it one job per measurement
window over stdin; the process answers on stdout with JSON lines:

    {"event": "measuring", "t": ...}      warm-up is over, the measured part begins
    {"event": "stopped_issuing", "t": ...}  the window is over: no new requests (those in flight drain)
    {"event": "done", ...}                every request finished; the raw records

A job keeps `concurrency` requests in flight, each sending the same JSON body to one URL. The
warm-up lasts `warmup_s` and at least until the first response; then new requests are issued
for `window_s` more seconds, and the requests still in flight are waited for (the drain), so
every request issued in the measured part has a latency. Jobs are bounded: at most
`max_requests` requests and `max_s` seconds, after which what is in flight is cancelled.

Each record is `[sent, done, status, completion_tokens]`, times in seconds from the job's start;
status -1 marks a transport error or a cancelled request, tokens -1 a response without them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

logger = logging.getLogger("benchmarks.load")

LOCALHOST = "http://127.0.0.1"


async def run_job(job: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Run one measurement job; `emit` receives the `measuring` event when warm-up ends."""
    url: str = job["url"]
    if not url.startswith(LOCALHOST):
        raise ValueError(f"the load generator only sends to {LOCALHOST}, not {url}")
    body = json.dumps(job["body"]).encode()
    concurrency = int(job["concurrency"])
    count_tokens = bool(job.get("count_tokens", False))
    max_requests = int(job.get("max_requests", 100_000))
    records: list[list[float]] = []
    issued = 0
    started = time.perf_counter()
    deadline = started + float(job["max_s"])
    first_response = asyncio.Event()
    first_response_at: float | None = None
    measuring_at: float | None = None
    stop_issuing_at = deadline

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(float(job.get("timeout_s", 600)))
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def one_request() -> None:
            nonlocal first_response_at
            sent = time.perf_counter()
            status, tokens = -1, -1
            try:
                response = await client.post(url, content=body, headers=headers)
                status = response.status_code
                if count_tokens and status == 200:
                    tokens = int(response.json()["usage"]["completion_tokens"])
            except (httpx.HTTPError, ValueError, KeyError) as error:
                logger.warning("request failed: %s", error)
            finally:
                done = time.perf_counter()
                records.append([sent - started, done - started, status, tokens])
                if first_response_at is None:
                    first_response_at = done
                    first_response.set()

        async def worker() -> None:
            nonlocal issued
            while time.perf_counter() < stop_issuing_at and issued < max_requests:
                issued += 1
                await one_request()

        async def mark_measuring() -> None:
            nonlocal measuring_at, stop_issuing_at
            await asyncio.sleep(float(job["warmup_s"]))
            await first_response.wait()
            # From the first response itself: the requests sent right after it belong to the measured part.
            measuring_at = max(first_response_at, started + float(job["warmup_s"]))
            stop_issuing_at = min(deadline, measuring_at + float(job["window_s"]))
            emit({"event": "measuring", "t": measuring_at - started})
            await asyncio.sleep(max(0.0, stop_issuing_at - time.perf_counter()))
            emit({"event": "stopped_issuing", "t": stop_issuing_at - started})

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        marker = asyncio.create_task(mark_measuring())
        remaining = max(0.0, deadline - time.perf_counter())
        _, pending = await asyncio.wait(workers, timeout=remaining)
        for task in (*pending, marker):
            task.cancel()
        await asyncio.gather(*pending, marker, return_exceptions=True)
    return {
        "event": "done",
        "records": records,
        "measuring_at": None if measuring_at is None else measuring_at - started,
        "stopped_issuing_at": stop_issuing_at - started,
        "elapsed_s": time.perf_counter() - started,
        "timed_out": bool(pending),
    }


def serve_jobs() -> None:
    """Read jobs from stdin, one JSON object a line, until it closes; answer on stdout."""

    def emit(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    for line in sys.stdin:
        if line.strip():
            emit(asyncio.run(run_job(json.loads(line), emit)))


class LoadGenerator:
    """The load-generator process, started once and given one job per window."""

    def __init__(self, python: str = sys.executable) -> None:
        self.process = subprocess.Popen(
            [python, "-m", "benchmarks.load"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def run(
        self,
        job: dict[str, Any],
        on_measuring: Callable[[], None] | None = None,
        on_stopped: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Run one job; `on_measuring` is called when its warm-up ends, `on_stopped` when its window
        ends (while the requests in flight drain; not when the job ended before). Returns the `done`
        message."""
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        for line in self.process.stdout:
            message = json.loads(line)
            if message["event"] == "measuring":
                if on_measuring:
                    on_measuring()
            elif message["event"] == "stopped_issuing":
                if on_stopped:
                    on_stopped()
            elif message["event"] == "done":
                return message
        raise RuntimeError(f"the load generator exited with code {self.process.wait()}")

    def close(self) -> None:
        """End the process: close its stdin, then terminate it if it does not exit."""
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            self.process.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s load %(message)s")
    serve_jobs()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
