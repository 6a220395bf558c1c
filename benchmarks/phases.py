"""The phases of one `python -m benchmarks.run` and how their results become one `latest.json`.

    throughput   the gateway's own costs on a tiny model, then each real-size workload against
                 the raw loop and the peers (`benchmarks.throughput`)
    photo        a 12 MP JPEG through the gateway, the user's raw loop and the peers
                 (`benchmarks.photo`, run as a process of its own, see `photo_phase`)
    ttft         time to first token (`benchmarks.ttft.run(quick)`, when that module is there)
    overhead     the gateway's overhead under three proxies (`benchmarks.overhead.run(quick)`, when that
                 module is there); only when asked for (`--phase overhead`), see `DEFAULT_PHASES`

Phases run one after another and each is guarded (`run_phase`): an exception is logged and
recorded as `{"error": ...}` under the phase's key, and the next phase runs. After every phase,
a Ray the phase started and left running is stopped (`stop_ray`), so that two local Ray clusters
never run at once; a Ray that ran before the phase is left alone. `merge_phases` puts the results together: the throughput phase's parts (`tiny` and
one key per workload) at the top level, as before, each other phase under its own name, and
`phases` with each phase's status and wall time.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger("benchmarks.run")

PHASES = ("throughput", "photo", "ttft", "overhead")
DEFAULT_PHASES = ("throughput", "photo", "ttft")
"""What `make bench` runs. The overhead phase (Serve's proxy against HAProxy and the throughput preset,
one fresh Ray per configuration, ~14 min) is an investigation of which proxy to serve with, run on its
own (`make bench-overhead`, `python -m benchmarks.overhead`); the gateway's added latency with the
proxy we serve with is measured in every run by the throughput phase's tiny part."""
OPTIONAL_MODULES = {"ttft": "benchmarks.ttft", "overhead": "benchmarks.overhead"}
"""Phases provided by modules that may not be there: each has `run(quick: bool) -> dict`."""
PHOTO_TIMEOUT_S = 30 * 60
"""A bound on the photo phase that only a hung run reaches (the full photo run takes ~10 minutes)."""
PHASE_ESTIMATE_S = {"throughput": 42 * 60, "photo": 10 * 60, "ttft": 13 * 60, "overhead": 14 * 60}
"""What each phase is expected to take on the 2-core machine (as measured in the 2026-12-02 02:05 run;
overhead in the 2026-12-01 23:00 run); logged at the start of a run."""


def ray_running() -> bool:
    """Whether this process is connected to a Ray cluster (without importing Ray when it is not)."""
    if "ray" not in sys.modules:
        return False
    import ray

    return ray.is_initialized()


def stop_ray() -> bool:
    """Stop Serve and Ray in this process if they run; whether it had to."""
    if not ray_running():
        return False
    import ray

    logger.warning("a phase left Ray running: stopping it before the next phase starts")
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        logger.exception("serve.shutdown failed")
    ray.shutdown()
    return True


def jsonable(value: Any) -> Any:
    """`value` as plain JSON types (a value json cannot write becomes its `str`)."""
    return json.loads(json.dumps(value, default=str))


def run_phase(name: str, call: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one phase: `(its results, its status)`. An Exception becomes `{"error": ...}` (logged, the
    run goes on; KeyboardInterrupt ends the run); a phase that returns `{"error": ...}` or
    `{"skipped": ...}` itself is reported so too. A Ray the phase started is stopped afterwards in any
    case; one that ran before the phase (a caller's, a test session's Serve) is not the phase's to stop."""
    started = time.perf_counter()
    ray_was_running = ray_running()
    logger.info("===== phase %s =====", name)
    try:
        result = jsonable(call())
        if not isinstance(result, dict):
            raise TypeError(f"phase {name} returned {type(result).__name__}, not a dict")
    except Exception as error:
        logger.exception("phase %s failed; going on with the next phase", name)
        result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(limit=8)}
    finally:
        left_running = False if ray_was_running else stop_ray()
    status: dict[str, Any] = {"wall_s": round(time.perf_counter() - started, 1), "ray_left_running": left_running}
    if "error" in result:
        status.update(ok=False, error=result["error"])
    elif "skipped" in result:
        status.update(ok=None, skipped=result["skipped"])
    else:
        status["ok"] = True
    logger.info(
        "phase %s: %s in %.0f s", name, "ok" if status["ok"] else status.get("error", "skipped"), status["wall_s"]
    )
    return result, status


def module_phase(module_name: str, quick: bool) -> dict[str, Any]:
    """`module_name.run(quick)`, or `{"skipped": ...}` when the module is not there."""
    if importlib.util.find_spec(module_name) is None:
        logger.info("%s is not there: its phase is skipped", module_name)
        return {"skipped": f"{module_name} is not there"}
    module = importlib.import_module(module_name)
    return module.run(quick)


def photo_phase(quick: bool, results_dir: Path, work_dir: Path, timeout_s: float = PHOTO_TIMEOUT_S) -> dict[str, Any]:
    """`benchmarks.photo` in a process of its own; its results.

    Its own process because its raw loop and peers must run torch with the idle-thread policy the
    tiny models' replicas have (`OMP_WAIT_POLICY=PASSIVE`), which OpenMP reads once, when torch is
    first imported, while this process's raw loops run the real-size models with the default (spin),
    as their replicas do. It also writes photo.{md,json} into `results_dir`.
    """
    out = work_dir / "photo-phase.json"
    out.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "benchmarks.photo",
        "--json",
        str(out),
        "--results",
        str(results_dir),
        "--no-print",
    ]
    if quick:
        command.append("--quick")
    root = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(command, cwd=root, stdout=sys.stderr)
    try:
        code = process.wait(timeout=timeout_s)
    except BaseException:
        # a timeout or Ctrl-C: the photo process stops its Ray and peers on SIGTERM
        process.terminate()
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        raise
    if code != 0:
        raise RuntimeError(f"benchmarks.photo exited with code {code} (its log is above)")
    return json.loads(out.read_text())


def merge_phases(
    throughput: dict[str, Any], phases: dict[str, dict[str, Any]], status: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """One results dict from the phases: the throughput phase's parts at the top level, each other
    phase under its own name, `phases` with every phase's status. A phase whose name is already a key
    of the throughput results is an error (it would overwrite them)."""
    merged = dict(throughput)
    for name, result in phases.items():
        if name in merged:
            raise ValueError(f"phase {name!r} would overwrite the throughput phase's {name!r}")
        merged[name] = result
    merged["phases"] = dict(status)
    return merged


def failed_throughput(error: dict[str, Any], workloads: list[str]) -> dict[str, Any]:
    """The throughput phase's results when the whole phase failed: its error under every part."""
    return {part: dict(error) for part in ("tiny", *workloads)}
