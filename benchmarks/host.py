"""The machine a benchmark runs on: the CPU other processes take while it measures, its load, CPU model,
package versions and commit; the SIGTERM handler that turns a stop into a clean shutdown, and the
command line's logging, run and result files.

Shared by `benchmarks.overhead`, `benchmarks.ttft`, `benchmarks.photo` and `benchmarks.metering`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent


FOREIGN_LIMIT = 0.2
"""Cores used on average by processes that are not this run's during its measurements, above which
its figures are flagged (on 2 cores every other process takes CPU the gateway needs)."""


class CpuWitness:
    """The CPU this machine spent outside this process and its descendants (Ray's processes, the load
    generator) over a span: what other processes on a shared machine took while we measured.

    `stop()` returns `foreign_cores` (busy CPU seconds of everything else per wall second) and
    `steal_cores` (time the hypervisor gave to other machines), both averaged over the span.

    Our processes are sampled every `sample_s` on a thread of its own, not only at the span's ends:
    a Ray started and stopped inside the span (the ttft phase's gateway) has no process left at
    `stop()`, and its CPU was once all counted as foreign (1.76 cores "of other processes" in a
    ttft phase on a quiet machine). What a process of ours uses after its last sample is missed.
    """

    def __init__(self, sample_s: float = 0.5) -> None:
        self.started = time.monotonic()
        self.busy = self._busy()
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._lock = threading.Lock()
        self._sample(initial=True)
        self._stopping = threading.Event()
        self._sampler = threading.Thread(target=self._sample_until_stopped, args=(sample_s,), daemon=True)
        self._sampler.start()

    @staticmethod
    def _busy() -> tuple[float, float]:
        times = psutil.cpu_times()
        busy = sum(getattr(times, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq"))
        return busy, getattr(times, "steal", 0.0)

    def _sample(self, initial: bool = False) -> None:
        """CPU seconds of this process and each descendant now; a process first seen after the span
        began counts from zero."""
        for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                with self._lock:
                    self._first.setdefault(process.pid, times.user + times.system if initial else 0.0)
                    self._last[process.pid] = times.user + times.system

    def _sample_until_stopped(self, sample_s: float) -> None:
        while not self._stopping.wait(sample_s):
            self._sample()

    def stop(self) -> dict[str, float]:
        self._stopping.set()
        self._sampler.join()
        self._sample()
        wall = max(1e-9, time.monotonic() - self.started)
        busy, steal = self._busy()
        with self._lock:
            ours = sum(max(0.0, last - self._first.get(pid, 0.0)) for pid, last in self._last.items())
        return {
            "foreign_cores": round(max(0.0, busy - self.busy[0] - ours) / wall, 3),
            "steal_cores": round(max(0.0, steal - self.busy[1]) / wall, 3),
            "own_cpu_s": round(ours, 2),
            "wall_s": round(wall, 1),
        }


def foreign_reason(label: str, witness: dict[str, float] | None) -> list[str]:
    """A reason to distrust figures measured while other processes took CPU (empty when they did not)."""
    if not witness:
        return []
    used = witness.get("foreign_cores", 0.0) + witness.get("steal_cores", 0.0)
    if used <= FOREIGN_LIMIT:
        return []
    return [
        f"{label}: other processes used {witness.get('foreign_cores', 0.0):.2f} cores (steal"
        f" {witness.get('steal_cores', 0.0):.2f}) on average while it was measured (> {FOREIGN_LIMIT:g})"
    ]



def load_average() -> list[float]:
    return [round(x, 2) for x in psutil.getloadavg()]


def package_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True).strip()
        changed = ["git", "diff", "--quiet", "HEAD", "--", ".", ":(exclude)benchmarks/results"]
        dirty = subprocess.run(changed, cwd=ROOT, check=False).returncode != 0
        return commit + ("-dirty" if dirty else "")
    return None


def stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def machine(load_start: list[float]) -> dict[str, Any]:
    """The header's `machine`: CPU model, logical CPUs, load average at the start and now, platform."""
    return {
        "cpu": cpu_model(),
        "logical_cpus": psutil.cpu_count(),
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "platform": platform.platform(),
    }


def log_to_stderr() -> None:
    """INFO lines with their time and logger on stderr; httpx, Ray and transformers only from WARNING."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "ray", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def write_results(results: dict[str, Any], results_dir: Path, name: str, title: str) -> tuple[Path, Path]:
    """A phase's results as `<name>.json` and `<name>.md` (its markdown under `title`) in `results_dir`."""
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = results_dir / f"{name}.json", results_dir / f"{name}.md"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    md_path.write_text(f"# {title}\n\n{results['markdown']}")
    return json_path, md_path


def run_and_write(
    run: Callable[[], dict[str, Any]],
    write: Callable[[dict[str, Any]], tuple[Path, Path]],
    logger: logging.Logger,
    down: str,
) -> int:
    """A benchmark's command: SIGTERM stops it cleanly (exit 130, `down` says what was stopped, nothing
    written); else its results are written, its markdown printed, and it exits 0."""
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        results = run()
    except KeyboardInterrupt as stop:
        logger.error("stopped (%s): %s, nothing written", stop, down)
        return 130
    json_path, md_path = write(results)
    print(results["markdown"])
    logger.info("results in %s and %s", json_path, md_path)
    return 0
