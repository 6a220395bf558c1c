"""A bounded soak: concurrent clients, mixed models and endpoints, models waking and sleeping, faults injected.

    python -m soak.run [--duration 600] [--clients 16] [--sample-every 10] [--json report.json]
    make soak SOAK_ARGS="--duration 120"

It starts its own Ray (a fresh local instance, no dashboard) and deploys the local config (tiny
checkpoints, `make checkpoints`) with short idle delays for the coming-soon models, HTTP on 127.0.0.1
at a free port; all traffic goes there. Coming-soon models are used in waves (soak/traffic.py), so
they wake and go back to zero several times. At 40 % of the run the live model's replica is killed,
at 60 % the ingress replica (SIGKILL through Ray, as a crash would). Every `--sample-every` seconds
it records every process of its Ray instance (count, RSS by part of the stack, idle workers) and
each model's replicas. At the end it reports, and exits 1 on:

- any request whose outcome was not the expected one, except a 5xx of a request that was in flight
  at the moment of a fault (counted and shown: target 0);
- any error body outside the gateway's error envelope (also during faults);
- a growth trend after warm-up: process count or total RSS rising from the first half of the
  samples to the second (soak/watch.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import yaml

from soak.traffic import COMING_SOON, FLORENCE_LARGE, MIX, Outcome, Results, Schedule, client_loop
from soak.watch import Sample, cycles, look, replicas, trend
from tools.launcher import LocalStack

ROOT = Path(__file__).resolve().parent.parent
APP = "soak"
# Coming-soon models go back to zero after this much idle time (the local config says 60 s).
IDLE_TO_ZERO = {"look_back_period_s": 5, "downscale_delay_s": 15, "downscale_to_zero_delay_s": 15}


def soak_args(config: Path, state_dir: str, standby_check_s: float) -> dict[str, Any]:
    args = yaml.safe_load(config.read_text())["applications"][0]["args"]
    args["checkpoint_dir"] = str((ROOT / args.get("checkpoint_dir", "checkpoints/tiny")).resolve())
    gateway = args.setdefault("gateway", {})
    gateway["demand_db"] = str(Path(state_dir) / "demand.sqlite3")
    gateway["standby_check_s"] = standby_check_s
    for model in args["models"]:
        if model.get("status") == "coming_soon":
            scaling = model.setdefault("deployment", {}).setdefault("autoscaling_config", {})
            scaling.update(IDLE_TO_ZERO)
    return args


def wait_live(stack: LocalStack, timeout_s: float = 300) -> None:
    """Until the live model answers (the coming-soon ones are left cold: waking them is the soak's)."""
    try:
        stack.wait_ready(timeout_s=timeout_s, poll_s=1.0)
    except TimeoutError as error:
        raise SystemExit(str(error)) from None


def kill(deployment: str) -> str:
    """Kill one replica actor of a deployment of the soak app, as a crash would; returns its name."""
    import ray

    prefix = f"SERVE_REPLICA::{APP}#{deployment}#"
    names = sorted(
        entry["name"]
        for entry in ray.util.list_named_actors(all_namespaces=True)
        if entry["namespace"] == "serve" and entry["name"].startswith(prefix)
    )
    if not names:
        return ""
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    return names[0]


async def inject_faults(duration: float, t0: float, faults: list[dict[str, Any]]) -> None:
    from serve.config import slug

    plan = [(0.4, slug(FLORENCE_LARGE)), (0.6, "Gateway")]
    for fraction, deployment in plan:
        await asyncio.sleep(max(0.0, t0 + fraction * duration - time.monotonic()))
        killed = await asyncio.to_thread(kill, deployment)
        faults.append({"t_s": round(time.monotonic() - t0, 1), "deployment": deployment, "killed": killed})
        print(f"  t={faults[-1]['t_s']:.0f}s: killed {killed or '(nothing running)'}", flush=True)


async def sample(base_url: str, every_s: float, t0: float, deadline: float, samples: list[Sample]) -> None:
    with httpx.Client(base_url=base_url, trust_env=False) as http:
        while True:
            now = look(time.monotonic() - t0)
            now.replicas = await asyncio.to_thread(replicas, http)
            samples.append(now)
            if time.monotonic() + every_s > deadline:
                return
            await asyncio.sleep(every_s)


def injected(outcome: Outcome, faults: list[dict[str, Any]]) -> bool:
    """A 5xx of a request that was in flight when a replica was killed (or within a second of it)."""
    failed = isinstance(outcome.status, int) and outcome.status >= 500
    return failed and any(outcome.started <= f["t_s"] + 1.0 and outcome.ended >= f["t_s"] for f in faults)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def report(results: Results, samples: list[Sample], faults: list[dict], duration: float, options: Any) -> dict[str, Any]:
    by_kind: dict[str, dict[str, Any]] = {}
    for (kind, status), n in sorted(results.counts().items(), key=lambda item: (item[0][0], str(item[0][1]))):
        by_kind.setdefault(kind, {"statuses": {}})["statuses"][str(status)] = n
    for kind, values in results.latencies().items():
        by_kind[kind].update(p50_s=round(percentile(values, 0.5), 3), p95_s=round(percentile(values, 0.95), 3))
    during_faults = [o for o in results.outcomes if o.problem and not o.bad_envelope and injected(o, faults)]
    unexpected = [o for o in results.outcomes if o.problem and not o.bad_envelope and not injected(o, faults)]
    bad_envelopes = [o for o in results.outcomes if o.bad_envelope]
    growth = trend(samples, warmup_s=options.warmup)
    model_cycles = {model: dict(zip(("wakes", "sleeps"), cycles(samples, model))) for model in COMING_SOON}
    failures = [f"{len(unexpected)} unexpected outcomes"] if unexpected else []
    failures += [f"{len(bad_envelopes)} error bodies outside the envelope"] if bad_envelopes else []
    failures += growth.problems
    return {
        "duration_s": round(duration, 1),
        "clients": options.clients,
        "requests": len(results.outcomes),
        "requests_per_s": round(len(results.outcomes) / duration, 2) if duration else 0,
        "faults": faults,
        "failed_in_flight_at_a_fault": len(during_faults),
        "unexpected": len(unexpected),
        "unexpected_examples": [o.problem for o in [*unexpected, *bad_envelopes][:20]],
        "bad_envelopes": len(bad_envelopes),
        "model_cycles": model_cycles,
        "trend": asdict(growth),
        "failures": failures,
        "by_kind": by_kind,
        "samples": [asdict(s) for s in samples],
    }


def print_report(summary: dict[str, Any]) -> None:
    print(
        f"\nsoak: {summary['requests']} requests in {summary['duration_s']} s from {summary['clients']} clients"
        f" ({summary['requests_per_s']}/s)"
    )
    print(f"faults: {summary['faults']}; failed requests in flight at a fault: {summary['failed_in_flight_at_a_fault']}")
    print(f"unexpected outcomes: {summary['unexpected']}; error bodies outside the envelope: {summary['bad_envelopes']}")
    for line in summary["unexpected_examples"]:
        print(f"  {line}")
    print(f"coming-soon models, wakes/sleeps seen: {summary['model_cycles']}")
    print("\nby kind:")
    for kind, entry in summary["by_kind"].items():
        print(f"  {kind:40s} {entry['statuses']}  p50 {entry.get('p50_s')} s  p95 {entry.get('p95_s')} s")
    print("\nevery Ray process of the soak: t, count, idle workers, total RSS MiB, replicas running, RSS by part")
    for s in summary["samples"]:
        running = sum(s["replicas"].values())
        print(f"  {s['t']:6.0f}s {s['processes']:3d} {s['idle_workers']:3d} {s['rss_mib']:8.0f}  {running:2d}  {s['by_part']}")
    t = summary["trend"]
    print(
        f"\nafter warm-up ({t['samples']} samples), first half vs second: max processes {t['processes_max']},"
        f" median RSS {t['rss_median_mib']} MiB, lowest RSS {t['rss_floor_mib']} MiB,"
        f" slope {t['rss_slope_mib_per_min']} MiB/min"
    )
    print("result:", "FAIL: " + "; ".join(summary["failures"]) if summary["failures"] else "pass")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds before the trend counts (default: 1/5 of the run)")
    parser.add_argument("--period", type=float, default=120.0, help="seconds of one coming-soon model's use-and-idle wave")
    parser.add_argument("--config", type=Path, default=ROOT / "serve" / "configs" / "local.yaml")
    parser.add_argument("--json", type=Path, help="also write the report here")
    options = parser.parse_args(argv)
    if not 1 <= options.clients <= 256 or not 30 <= options.duration <= 7200:
        parser.error("clients must be 1..256 and duration 30..7200 s")
    options.warmup = options.duration / 5 if options.warmup is None else options.warmup
    schedule = Schedule(period_s=options.period, on_s=options.period * 0.35)

    with tempfile.TemporaryDirectory(prefix="soak-") as state_dir:
        with LocalStack(num_cpus=max(4, os.cpu_count() or 1), log_to_driver=False) as stack:
            stack.deploy(APP, soak_args(options.config, state_dir, standby_check_s=5.0), "/")
            wait_live(stack)
            print(f"gateway at {stack.url}; {options.clients} clients for {options.duration:g} s ...", flush=True)
            results = Results()
            samples: list[Sample] = []
            faults: list[dict[str, Any]] = []

            async def run() -> float:
                t0 = time.monotonic()
                deadline = t0 + options.duration
                await asyncio.gather(
                    sample(stack.url, options.sample_every, t0, deadline, samples),
                    inject_faults(options.duration, t0, faults),
                    *(client_loop(stack.url, seed, t0, deadline, schedule, results) for seed in range(options.clients)),
                )
                return time.monotonic() - t0

            duration = asyncio.run(run())
    summary = report(results, samples, faults, duration, options)
    print_report(summary)
    if options.json:
        options.json.write_text(json.dumps(summary, indent=2))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
