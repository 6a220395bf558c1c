"""The standby slot (deployments/standby_slot.py): of several idle preloaded processes of one runtime env
on one node, one holds the slot and the others leave after the grace period; a process given work
lets the slot go. Run with real processes and a real kernel lock; the process title, which Ray sets,
is given by the test."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from deployments.standby_slot import argument, guard, slot_path, try_lock

ROOT = Path(__file__).resolve().parent.parent

# A stand-in worker: idle for `idle_s` seconds (then "given work" unless idle_s < 0), guarding the slot.
WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from deployments.standby_slot import guard
    path, grace, idle_s = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    started = time.monotonic()
    def title():
        idle = idle_s < 0 or time.monotonic() - started < idle_s
        return b"ray::IDLE" if idle else b"ray::ServeReplica:app:model"
    print(guard(path, grace, title=title, leave=lambda: None, poll_s=0.05), flush=True)
    time.sleep(30 if idle_s >= 0 else 0)
    """
)


def worker(path: Path, grace_s: float, idle_s: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(path), str(grace_s), str(idle_s)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )


def test_of_two_idle_standbys_the_second_leaves_and_the_first_keeps_the_slot(tmp_path):
    path = slot_path(str(tmp_path), "node-a", "env1")
    first = worker(path, grace_s=0.5, idle_s=-1)
    deadline = time.monotonic() + 20
    # wait until the first holds the slot: our own attempt fails
    while True:
        fd = try_lock(path)
        if fd is None:
            break
        os.close(fd)
        assert time.monotonic() < deadline, "the first standby never took the slot"
        time.sleep(0.05)
    second = worker(path, grace_s=0.5, idle_s=-1)
    try:
        assert second.communicate(timeout=20)[0].strip() == "left"
        assert first.poll() is None, "the slot holder stays"
    finally:
        first.kill()
        first.wait()
    # the kernel released the dead holder's lock: the slot is free again
    fd = try_lock(path)
    assert fd is not None


def test_a_standby_given_work_lets_the_slot_go_and_stays(tmp_path):
    path = slot_path(str(tmp_path), "node-a", "env1")
    holder = worker(path, grace_s=0.5, idle_s=1.0)  # idle 1 s, then a replica
    try:
        line = holder.stdout.readline().strip()
        assert line == "working"
        assert try_lock(path) is not None, "the slot is free once its holder works"
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()


def test_a_worker_busy_at_once_never_leaves_even_while_the_slot_is_held(tmp_path):
    path = slot_path(str(tmp_path), "node-a", "env1")
    held = try_lock(path)
    assert held is not None
    # Ray assigns the worker between the guard's idle check and its re-check just before leaving
    titles = [b"python -m deployments.preload", b"ray::IDLE", b"ray::ServeReplica:app:model"]
    calls = []

    def title() -> bytes:
        calls.append(1)
        return titles[min(len(calls), len(titles)) - 1]

    assert guard(path, grace_s=0.0, title=title, leave=lambda: None, poll_s=0.01) == "working"


def test_slots_are_per_node_and_env_and_worker_arguments_are_read_both_ways(tmp_path):
    assert slot_path("/t", "abc", "k1") != slot_path("/t", "abc", "k2") != slot_path("/t", "abd", "k1")
    assert argument(["--node-id=abc", "--temp-dir", "/tmp/ray"], "--node-id") == "abc"
    assert argument(["--node-id=abc", "--temp-dir", "/tmp/ray"], "--temp-dir") == "/tmp/ray"
    assert argument(["--x=1"], "--node-id") is None
