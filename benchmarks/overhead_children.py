"""The overhead benchmark's parent side: each configuration's child process (`python -m benchmarks.overhead
--child NAME`), bounded in time and stopped with its whole process group."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.overhead_configs import CONFIGS, ROOT, WORK_DIR, config_env

logger = logging.getLogger("benchmarks.overhead")


class Children:
    """The child processes of a run; `stop_all` ends any still running (their whole process group)."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen] = []

    def run(self, name: str, quick: bool, limit_s: float) -> dict[str, Any]:
        handle, path = tempfile.mkstemp(prefix=f"overhead-{name}-", suffix=".json", dir=WORK_DIR)
        os.close(handle)
        out = Path(path)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **config_env(name)}
        command = [sys.executable, "-m", "benchmarks.overhead", "--child", name, "--out", str(out)]
        if quick:
            command.append("--quick")
        logger.info("=== %s on a fresh Ray (%s)", name, CONFIGS[name].env or "no extra variables")
        try:
            process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
            self.running.append(process)
            try:
                process.wait(timeout=limit_s)
            except subprocess.TimeoutExpired:
                logger.error("%s ran past %g s: stopping it", name, limit_s)
                self.stop(process)
            finally:
                self.running.remove(process)
            try:
                measured = json.loads(out.read_text()) if out.stat().st_size else {}
            except (OSError, ValueError):
                measured = {}
        finally:
            out.unlink(missing_ok=True)
        if not measured:
            measured = {"config": name, "failed": f"the child exited with {process.returncode} and wrote nothing"}
        return measured

    @staticmethod
    def stop(process: subprocess.Popen) -> None:
        """SIGTERM to the child's process group (it stops its Ray), SIGKILL after 60 s."""
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def stop_all(self) -> None:
        for process in list(self.running):
            self.stop(process)
