"""What the soak watches while it runs: every process of its Ray instance (count and memory) and the
models' replica counts, and the judgement of a growth trend after warm-up."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import httpx
import psutil

MIB = 2**20


@dataclass
class Sample:
    """One look at the machine, `t` seconds into the soak."""

    t: float
    processes: int
    rss_mib: float
    by_part: dict[str, float]  # MiB by part of the stack
    idle_workers: int  # Ray worker processes waiting for work (standbys among them)
    replicas: dict[str, int] = field(default_factory=dict)  # model id -> running replicas


def part(process: psutil.Process) -> str:
    """Which part of the Ray stack a process is, from its title."""
    try:
        title = " ".join(process.cmdline())
    except psutil.Error:
        return "gone"
    if "ServeReplica:" in title:
        deployment = title.split("ServeReplica:", 1)[1].split()[0].split(":")[1:2]
        return "ingress" if deployment and deployment[0].startswith("Gateway") else "model replicas"
    for marker, name in (
        ("ray::IDLE", "idle workers"),
        ("deployments.preload", "idle workers"),
        ("ProxyActor", "proxy"),
        ("ServeController", "controller"),
    ):
        if marker in title:
            return name
    return "ray core"


def look(t: float) -> Sample:
    """Every process below this one (the soak started its own Ray, so that is all of it)."""
    count, total = 0, 0.0
    by_part: dict[str, float] = {}
    idle = 0
    for process in psutil.Process().children(recursive=True):
        try:
            rss = process.memory_info().rss / MIB
        except psutil.Error:
            continue
        name = part(process)
        if name == "gone":
            continue
        count += 1
        total += rss
        by_part[name] = by_part.get(name, 0.0) + rss
        idle += name == "idle workers"
    return Sample(t, count, round(total, 1), {k: round(v, 1) for k, v in sorted(by_part.items())}, idle)


def replicas(http: httpx.Client) -> dict[str, int]:
    """Running replicas per model, from the gateway's listing (which never wakes a model)."""
    try:
        listing = http.get("/v1/models", timeout=30).json()["data"]
    except (httpx.HTTPError, ValueError, KeyError):
        return {}
    return {model["id"]: model["replicas"] for model in listing}


def cycles(samples: list[Sample], model: str) -> tuple[int, int]:
    """(wakes, sleeps) of one model seen in the samples: 0 -> running and running -> 0."""
    wakes = sleeps = 0
    seen = [s.replicas[model] for s in samples if model in s.replicas]
    for before, after in zip(seen, seen[1:]):
        wakes += before == 0 and after > 0
        sleeps += before > 0 and after == 0
    return wakes, sleeps


@dataclass
class Trend:
    """Process count and memory in the first and second half of the samples after warm-up."""

    samples: int
    processes_max: tuple[int, int]
    rss_median_mib: tuple[float, float]
    rss_floor_mib: tuple[float, float]
    rss_slope_mib_per_min: float
    problems: list[str]


def trend(samples: list[Sample], warmup_s: float, rss_tolerance: float = 0.15, rss_floor_mib: float = 300.0) -> Trend:
    """Whether the stack grows after warm-up.

    Models wake and sleep during a soak, so memory and process counts go up and down; a leak shows
    as a level that keeps rising. The samples after warm-up are split in halves: the second half's
    largest process count may not exceed the first's by two or more (one is a model awake at a
    different moment), and its median and lowest total RSS may not exceed the first's by more than
    `rss_tolerance` (and `rss_floor_mib`, for small stacks).
    """
    after = [s for s in samples if s.t >= warmup_s]
    if len(after) < 4:
        return Trend(len(after), (0, 0), (0.0, 0.0), (0.0, 0.0), 0.0, [f"only {len(after)} samples after warm-up"])
    half = len(after) // 2
    first, second = after[:half], after[half:]
    processes = (max(s.processes for s in first), max(s.processes for s in second))
    medians = (statistics.median(s.rss_mib for s in first), statistics.median(s.rss_mib for s in second))
    floors = (min(s.rss_mib for s in first), min(s.rss_mib for s in second))
    slope = statistics.linear_regression([s.t for s in after], [s.rss_mib for s in after]).slope * 60
    allowed = lambda base: max(base * rss_tolerance, rss_floor_mib)  # noqa: E731
    problems = []
    if processes[1] - processes[0] >= 2:
        problems.append(f"process count grew from at most {processes[0]} to at most {processes[1]}")
    if medians[1] - medians[0] > allowed(medians[0]):
        problems.append(f"median RSS grew from {medians[0]:.0f} to {medians[1]:.0f} MiB")
    if floors[1] - floors[0] > allowed(floors[0]):
        problems.append(f"lowest RSS grew from {floors[0]:.0f} to {floors[1]:.0f} MiB")
    return Trend(
        len(after),
        processes,
        (round(medians[0], 1), round(medians[1], 1)),
        (round(floors[0], 1), round(floors[1], 1)),
        round(slope, 1),
        problems,
    )
