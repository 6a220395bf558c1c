"""One standby worker per node and runtime env, enforced by the standby processes themselves.

Every worker process of a model that can scale to zero starts through `deployments.preload`. Once
it has connected to Ray and sits idle (process title `ray::IDLE`), it takes the node's slot for its
runtime env: an exclusive lock on a file named by the node and the env's key. A second idle process
of the same env on the same node cannot take the slot; if it is still idle and still without the
slot after a grace period, it exits. So however many standbys are asked for (a keeper bug, several
ingress replicas, a restart), at most one stays. The process that holds the slot lets it go the
moment Ray hands it work (its title changes, e.g. to `ray::ServeReplica:...`), so the next standby
can take it.

The grace period is what keeps a worker that Ray started on demand for a replica safe: such a
worker is idle for milliseconds before Ray assigns it. The lock is a kernel lock, released by the
kernel when the holder dies, so a killed standby never leaves a stale slot behind.

This is a per-node mutex, not state: nothing is read from the file, it lives in Ray's temp folder.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger("gigarouter.standby_slot")

# How long an idle worker without the slot waits before it exits (seconds); an env var so that a
# test cluster can shorten it for its worker processes.
GRACE_ENV = "GIGAROUTER_STANDBY_GRACE_S"
DEFAULT_GRACE_S = 30.0
POLL_S = 1.0


def argument(args: list[str], name: str) -> str | None:
    """The value of `--name=value` or `--name value` in a worker's command line."""
    for index, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name and index + 1 < len(args):
            return args[index + 1]
    return None


def slot_path(temp_dir: str, node_id: str, env_key: str) -> Path:
    """The lock file of one node's standby slot for one runtime env."""
    safe = re.sub(r"[^A-Za-z0-9]", "", node_id)[:32] or "node"
    return Path(temp_dir) / "gigarouter-standby" / f"{safe}-{re.sub(r'[^A-Za-z0-9]', '', env_key)}.lock"


def own_title() -> bytes:
    """This process's title as `ps` shows it (Ray rewrites it: `ray::IDLE`, `ray::ServeReplica:...`)."""
    try:
        return Path("/proc/self/cmdline").read_bytes()
    except OSError:
        return b""


def is_idle_worker(title: bytes) -> bool:
    return title.startswith(b"ray::IDLE")


def is_connected_worker(title: bytes) -> bool:
    return title.startswith(b"ray::")


def try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive lock on `path`, or None if another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def guard(
    path: Path,
    grace_s: float,
    title: Callable[[], bytes] = own_title,
    leave: Callable[[], None] = lambda: os._exit(0),
    poll_s: float = POLL_S,
) -> str:
    """Hold the slot while idle, release it once given work, leave if idle without it past `grace_s`.

    Runs for the life of the process (a daemon thread of the preloader) and returns why it stopped:
    "working" (Ray gave this process work) or "left" (after calling `leave`, for tests that pass one
    that does not exit).
    """
    fd: int | None = None
    idle_without_slot_since: float | None = None
    try:
        while True:
            current = title()
            if is_connected_worker(current) and not is_idle_worker(current):
                return "working"
            if is_idle_worker(current):
                if fd is None:
                    fd = try_lock(path)
                if fd is not None:
                    idle_without_slot_since = None
                else:
                    now = time.monotonic()
                    idle_without_slot_since = idle_without_slot_since or now
                    # checked again right before leaving: Ray may have handed this process work meanwhile
                    if now - idle_without_slot_since >= grace_s and is_idle_worker(title()):
                        logger.warning("another standby worker holds %s: this idle one exits", path.name)
                        leave()
                        return "left"
            time.sleep(poll_s)
    finally:
        if fd is not None:
            os.close(fd)  # lets the next standby take the slot


def grace_from_env() -> float:
    try:
        return max(0.0, float(os.environ.get(GRACE_ENV, DEFAULT_GRACE_S)))
    except ValueError:
        return DEFAULT_GRACE_S
