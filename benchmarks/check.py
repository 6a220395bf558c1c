"""An independent check of the benchmark's headline: SigLIP2 through the gateway, measured by another client.

    python -m benchmarks.check                  # after `make bench`: exit 1 if it disagrees by more than 5 %
    python -m benchmarks.check --latest PATH    # compare with another latest.json
    python -m benchmarks.check --json out.json  # also write what it measured

It starts the gateway app that the full run measures for the `siglip2_embed` workload: the same
catalog entry (`benchmarks.throughput_harness.workload_entry`: the real-size checkpoint, two torch
threads, two CPUs, `max_ongoing_requests` 64) with latest.json's batch size, under /b on a fresh local Ray
(`benchmarks.servers.GatewayStack`), alone: no peer, no second app. Then it sends the run's request
body (one 256x256 JPEG as a data: URL) from as many threads as latest.json's headline concurrency,
each a closed loop on one `http.client` connection of its own: nothing of `benchmarks.load` (the
asyncio + httpx load generator) or of `benchmarks.metrics`' window arithmetic is used, so a fault in
either would show up as a disagreement.

First one 40-second window of the model alone in this process, in a plain loop written here
(`benchmarks.check_raw`: decode, processor, `get_image_features`, batches of latest.json's batch
size, two torch threads), with the gateway idle. Then five rounds (`WINDOWS`); in each, after a 15-second
warm-up, one 40-second window of the gateway, measured two ways:

- `count`: responses completed in the window over its 40 s. A batching server answers in lumps (8
  responses at once every ~2.8 s), so this moves by up to one lump (~7 %) with where the edges fall;
- `slope`: the least-squares slope of the cumulative number of responses, sampled every 50 ms over
  the window; a line through a staircase is barely moved by where its steps fall (< 1 % here).

and then, with the gateway idle, another 40-second window of the plain loop. A round's plain-loop
figure is taken from the windows on both sides of its gateway window (images over their summed
seconds): this VM's speed drifts by up to ~30 % between windows a minute apart (the model's own
forward pass went from 0.57 to 0.73 s), and a plain window on each side moves with it, where one
window after the gateway's made one round of an earlier check read 0.70 against 1.02 and 1.04.

Each round also says why its two figures differ: the gateway replica's `stats()` read at forward-pass
ends at the window's edges (`benchmarks.servers.read_at_pass_end`) give its forward passes in the
window, their mean batch size, seconds per pass and busy fraction; the plain loop's seconds per run
are beside them. A gateway slower than the loop with the same seconds per pass starves its model
(busy fraction); with slower passes, its model itself ran slower (CPU taken by other processes, or
the VM).

Two verdicts, each within 5 %:

- relative (the exit status): the median over rounds of gateway / raw against latest.json's
  `siglip2_embed.ratios.gateway_vs_raw.median` (whose rounds also measure the raw loop on both
  sides of the gateway). Both sides are taken minutes apart on the same machine, so this holds
  however fast the machine runs today;
- absolute (reported): the median `slope` against latest.json's gateway figure
  (`siglip2_embed.served_items_per_s`). On a shared VM whose speed drifts by ~10 % between
  40-second windows (measured: the same raw loop at 2.13, 2.04 and 1.89 images/s in three rounds
  of one run), this can only agree when the machine runs as fast as it did during the run.

Exit status 0 when the relative verdict agrees, 1 when it does not, 2 when requests failed. A
latest.json from a `--quick` run has no figure worth checking; the comparison is made and flagged.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.host import stop_on_sigterm
from benchmarks.metrics import batch_counts, busy_fraction

logger = logging.getLogger("benchmarks.check")

WORKLOAD = "siglip2_embed"
WARMUP_S = 15.0
WINDOW_S = 40.0
WINDOWS = 5
SAMPLE_S = 0.05
TOLERANCE = 0.05
APP = "bench-check-siglip2"
PREFIX = "/b"
LATEST = Path(__file__).resolve().parent / "results" / "latest.json"


class ClosedLoopClient:
    """`concurrency` threads, each posting `body` to 127.0.0.1:`port``path` over its own connection
    and sending the next request when the answer is in, until `stop()`; completion times are kept."""

    def __init__(self, port: int, path: str, body: bytes, concurrency: int, timeout_s: float = 600.0) -> None:
        self.port = port
        self.path = path
        self.body = body
        self.timeout_s = timeout_s
        self.lock = threading.Lock()
        self.completed: list[float] = []
        """perf_counter times of the responses that answered 200 with one embedding."""
        self.failures: list[str] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(concurrency)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self, wait_s: float) -> None:
        """No new requests; wait up to `wait_s` for the ones in flight."""
        self.stopping.set()
        deadline = time.perf_counter() + wait_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.perf_counter()))

    def _loop(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout_s)
        headers = {"content-type": "application/json", "content-length": str(len(self.body))}
        while not self.stopping.is_set():
            try:
                connection.request("POST", self.path, body=self.body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                done = time.perf_counter()
                if response.status == 200 and len(json.loads(payload)["data"]) == 1:
                    with self.lock:
                        self.completed.append(done)
                else:
                    with self.lock:
                        self.failures.append(f"HTTP {response.status}: {payload[:200]!r}")
            except (OSError, http.client.HTTPException, ValueError, KeyError) as error:
                with self.lock:
                    self.failures.append(f"{type(error).__name__}: {error}")
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout_s)
        connection.close()


def count_rate(completed: list[float], start: float, end: float) -> float:
    """Responses completed in [start, end) over the window's seconds."""
    return sum(1 for t in completed if start <= t < end) / (end - start)


def slope_rate(completed: list[float], start: float, end: float, step_s: float = SAMPLE_S) -> float:
    """The least-squares slope (responses per second) of the cumulative count of responses, sampled
    every `step_s` over [start, end)."""
    times = sorted(completed)
    samples = max(2, int((end - start) / step_s))
    xs = [start + k * (end - start) / samples for k in range(samples + 1)]
    ys = []
    index = 0
    for x in xs:
        while index < len(times) and times[index] <= x:
            index += 1
        ys.append(index)
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    variance = sum((x - mean_x) ** 2 for x in xs)
    return covariance / variance


def both_sides(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The plain loop's windows before and after a gateway window as one: images over their summed
    seconds. The machine's speed drifts between windows (up to ~30 % a minute apart here); a plain
    window on each side of the gateway's moves with it."""
    seconds = before["seconds"] + after["seconds"]
    images = before["images_per_s"] * before["seconds"] + after["images_per_s"] * after["seconds"]
    return {"images_per_s": images / seconds, "seconds": seconds, "runs": before["runs"] + after["runs"]}


def model_window(first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """The gateway model's work between two `read_at_pass_end` readings: forward passes, their mean
    batch size and seconds, the busy fraction, and whether both readings fell at a pass's end."""
    before, after = first["reading"], last["reading"]
    busy = busy_fraction(before, after, last["at"] - first["at"])
    return {
        "passes": busy["runs"],
        "mean_batch": batch_counts(before, after, "runs")["mean_batch_size"] if busy["runs"] is not None else None,
        "pass_s": busy["busy_per_run_s"],
        "busy_fraction": busy["busy_fraction"],
        "aligned": first["aligned"] and last["aligned"],
    }


def model_line(rate: dict[str, Any]) -> str:
    """One round's model figures as text: the gateway's forward passes against the plain loop's runs."""
    model = rate.get("model") or {}
    if not model.get("passes"):
        return "gateway model: no forward pass ended in the window"
    return (
        f"gateway model: {model['passes']} passes of {model['mean_batch']:.1f} images, {model['pass_s']:.2f} s each,"
        f" busy {model['busy_fraction']:.0%}; plain loop {rate['raw_run_s']:.2f} s a run"
    )


def compare(measured: float, reference: float | None, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """The check's verdict: `measured / reference`, and whether it is within `tolerance` of 1."""
    if not reference:
        return {"ratio": None, "agrees": False, "why": "latest.json has no gateway figure for the workload"}
    ratio = measured / reference
    return {"ratio": ratio, "agrees": abs(ratio - 1.0) <= tolerance, "why": None}


def compare_relative(
    rounds: list[tuple[float, float]], reference: float | None, tolerance: float = TOLERANCE
) -> dict[str, Any]:
    """The relative verdict: `rounds` are (gateway, raw) images/s measured back to back; the median
    of their ratios over `reference` (latest.json's median gateway / raw), and whether it is within
    `tolerance` of 1."""
    per_round = [gateway / raw for gateway, raw in rounds]
    if not reference:
        return {
            "ratio": None,
            "per_round": per_round,
            "agrees": False,
            "why": "latest.json has no gateway / raw ratio for the workload",
        }
    ratio = statistics.median(per_round) / reference
    return {"ratio": ratio, "per_round": per_round, "agrees": abs(ratio - 1.0) <= tolerance, "why": None}


def reference(latest: dict[str, Any]) -> dict[str, Any]:
    """What the check needs from latest.json: the gateway's figure and its ratio to the raw loop, the
    concurrency and the batch size."""
    block = latest.get(WORKLOAD)
    if not isinstance(block, dict) or "served_items_per_s" not in block:
        raise SystemExit(f"latest.json has no {WORKLOAD} results to check (run `make bench` first)")
    return {
        "items_per_s": block["served_items_per_s"],
        "gateway_vs_raw": ((block.get("ratios") or {}).get("gateway_vs_raw") or {}).get("median"),
        "concurrency": int(block["concurrency"]),
        "batch_size": int(block["batch_size"]),
        "quick": bool(latest.get("header", {}).get("plan", {}).get("quick")),
        "started_at": latest.get("header", {}).get("started_at"),
    }


def measure(
    batch_size: int, concurrency: int, warmup_s: float, window_s: float, windows: int
) -> tuple[list[dict[str, float]], list[str]]:
    """Start the gateway app, then per round drive it for a window and time the plain loop for one;
    stop it. Per round `{"count", "slope", "raw"}` images/s, and the failures."""
    from benchmarks import models
    from benchmarks.check_raw import PlainLoop
    from benchmarks.servers import GatewayStack, read_at_pass_end
    from benchmarks.throughput_harness import deployment_name, gateway_args, workload_entry
    from benchmarks.workloads import WORKLOADS

    workload = WORKLOADS[WORKLOAD]
    checkpoint = models.build_all(names=(workload.checkpoint,))[workload.checkpoint]
    image_url = workload.image_url()
    body = json.dumps(workload.request_body(image_url)).encode()
    plain = PlainLoop(checkpoint, image_url, batch_size)
    stack = GatewayStack(num_cpus=8)
    try:
        signal.signal(signal.SIGTERM, stop_on_sigterm)  # after ray.init, which installs its own
        stack.deploy(APP, gateway_args([workload_entry(workload, checkpoint, batch_size)], APP), PREFIX)
        stack.wait_ready(PREFIX, timeout_s=300)
        port = int(stack.url.rsplit(":", 1)[1])
        logger.info(
            "%d clients on %s%s%s, batch size %d: %d rounds of a %.0f s warm-up, a %.0f s gateway window"
            " and a %.0f s window of the plain loop",
            concurrency,
            stack.url,
            PREFIX,
            workload.path,
            batch_size,
            windows,
            warmup_s,
            window_s,
            window_s,
        )
        name = deployment_name(workload.model_id)

        def stats() -> dict[str, Any]:
            return stack.stats(APP, name)

        rates, failures = [], []
        before = plain.window(window_s)
        for number in range(windows):
            client = ClosedLoopClient(port, f"{PREFIX}{workload.path}", body, concurrency)
            start = time.perf_counter() + warmup_s
            client.start()
            time.sleep(max(0.0, start - time.perf_counter()))
            # a forward pass of the batch takes ~4 s on 2 cores: waiting up to 60 s for one to end is ample
            first = read_at_pass_end(stats, limit_s=60)
            while time.perf_counter() < start + window_s:
                time.sleep(0.2)
            last = read_at_pass_end(stats, limit_s=60)
            client.stop(wait_s=120)
            failures += client.failures
            after = plain.window(window_s)
            raw = both_sides(before, after)
            rate = {
                "count": count_rate(client.completed, start, start + window_s),
                "slope": slope_rate(client.completed, start, start + window_s),
                "raw": raw["images_per_s"],
                "raw_sides": [before["images_per_s"], after["images_per_s"]],
                "model": model_window(first, last),
                "raw_run_s": raw["seconds"] / raw["runs"],
            }
            logger.info(
                "round %d: gateway %.3f images/s (slope), %.3f (count); plain loop %.3f (%.3f before, %.3f after); %s",
                number + 1,
                rate["slope"],
                rate["count"],
                rate["raw"],
                *rate["raw_sides"],
                model_line(rate),
            )
            rates.append(rate)
            before = after
        return rates, failures
    finally:
        stack.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latest", type=Path, default=LATEST, help="the latest.json to compare with")
    parser.add_argument("--warmup", type=float, default=WARMUP_S, help="seconds of load before each gateway window")
    parser.add_argument("--window", type=float, default=WINDOW_S, help="seconds a window")
    parser.add_argument("--windows", type=int, default=WINDOWS, help="rounds (a gateway and a plain-loop window each)")
    parser.add_argument("--concurrency", type=int, help="clients (default: latest.json's headline concurrency)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "ray", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    ref = reference(json.loads(args.latest.read_text()))
    concurrency = args.concurrency or ref["concurrency"]
    rates, failures = measure(ref["batch_size"], concurrency, args.warmup, args.window, args.windows)
    median = statistics.median(rate["slope"] for rate in rates)
    absolute = compare(median, ref["items_per_s"])
    relative = compare_relative([(rate["slope"], rate["raw"]) for rate in rates], ref["gateway_vs_raw"])
    result = {
        "workload": WORKLOAD,
        "concurrency": concurrency,
        "batch_size": ref["batch_size"],
        "warmup_s": args.warmup,
        "window_s": args.window,
        "windows": rates,
        "median_images_per_s": median,
        "median_count_images_per_s": statistics.median(rate["count"] for rate in rates),
        "median_raw_images_per_s": statistics.median(rate["raw"] for rate in rates),
        "latest": ref,
        "failures": len(failures),
        "absolute": absolute,
        "relative": relative,
        "agrees": relative["agrees"],
        "tolerance": TOLERANCE,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    for number, rate in enumerate(rates, 1):
        print(f"round {number}: gateway / plain loop {rate['slope'] / rate['raw']:.3f}; {model_line(rate)}")
    print(verdict_lines(result, ref, len(rates), args.window))
    if failures:
        logger.error("%d requests failed, e.g. %s", len(failures), failures[0])
        return 2
    return 0 if relative["agrees"] else 1


def verdict_lines(result: dict[str, Any], ref: dict[str, Any], windows: int, window_s: float) -> str:
    """The two verdicts as two lines of text."""
    absolute, relative = result["absolute"], result["relative"]

    def shown(ratio: float | None) -> str:
        return "–" if ratio is None else f"{ratio:.3f}"

    quick = " (latest.json is a --quick run: its figures are not a measurement)" if ref["quick"] else ""
    gateway_vs_raw = statistics.median(relative["per_round"])
    within, beyond = f"within {TOLERANCE:.0%}", f"by more than {TOLERANCE:.0%}"
    return (
        f"relative: gateway / plain loop {gateway_vs_raw:.3f} (median of {windows} rounds of {window_s:.0f} s"
        f" windows); latest.json ({ref['started_at']}): {ref['gateway_vs_raw'] or 0:.3f}; ratio"
        f" {shown(relative['ratio'])} -> {f'agrees {within}' if relative['agrees'] else f'DISAGREES {beyond}'}"
        f"{quick}\n"
        f"absolute: {result['median_images_per_s']:.3f} images/s against {ref['items_per_s'] or 0:.3f}; ratio"
        f" {shown(absolute['ratio'])} -> {f'agrees {within}' if absolute['agrees'] else f'differs {beyond}'}"
        f" (the plain loop ran at {result['median_raw_images_per_s']:.3f} images/s here)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
