"""Standby workers: one idle, pre-imported Ray worker process per node for models at zero replicas.

Most of a cold start is not the model's load: it is the new Ray worker process that Serve's
replica starts in, importing Ray Serve, torch and transformers (~5 s of ~5.5 s for a tiny model on
a 2-core machine; benchmarks/README.md). A model that may scale to zero therefore runs its
replicas' worker processes through `deployments.preload` (the runtime env's `py_executable`),
which imports the model code before the process takes work. While such a model has no replica,
the gateway asks the raylet of every node that could host it to start one worker process with
exactly that runtime env: it imports the model code and waits idle. Ray hands an idle worker
whose runtime env matches to the next replica it starts on that node, so the replica skips the
imports. The price: one idle process per node and runtime env (~420 MB resident for the tiny
models; no CPU while idle, no GPU, no Ray resources); `standby_worker: false` on a model turns
it off. One is the bound, kept by the standbys themselves: an idle preloaded process that finds
another holding its node's slot for its env exits (`deployments.standby_slot`).

Ray has no public call to start workers ahead of work, nor to read which node an actor runs on
with the dashboard off: those calls are in `serve.ray_compat`, written for the Ray version pinned
in pyproject.toml. If starting a standby fails, a warning is logged and cold starts take the
normal path.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from deployments.preload import PRELOAD_MARKER  # torch-free: the marker every preloaded process carries
from deployments.standby_slot import is_connected_worker, is_idle_worker
from serve.store import Store
from serve.ray_compat import (
    SERVE_CONTROLLER_CLASS,
    Actor,
    alive_actors,
    inherited_env,
    prestart_workers,
    replica_class,
)

logger = logging.getLogger("gigarouter.standby")

PRELOAD_MODULE = "deployments.preload"
# runtime_env keys that choose another interpreter or environment: a standby started by the
# gateway could not match such a replica's worker, and `py_executable` would override them.
# Set by Ray in the environment of every worker process: the pid of the raylet that started it.
RAYLET_PID_ENV = "RAY_RAYLET_PID"
INTERPRETER_KEYS = ("py_executable", "pip", "uv", "conda", "container", "image_uri")
CHECK_S = 10.0
# a standby asked for on the keeper's own node that has not shown up is asked for again after this
LOCAL_RETRY_S = 60.0
NODES_CACHE_S = 30.0
PRESTART_TIMEOUT_S = 10.0


def preloading(ray_actor_options: dict[str, Any], python: str = sys.executable) -> dict[str, Any]:
    """`ray_actor_options` whose worker processes import the model code before taking work.

    The marker variable carries a key of the runtime env (computed before the marker is added), so
    the processes of one env can be told apart from those of another on a node: the keeper counts
    its standbys by it, and the standbys themselves keep one slot per node and key
    (`deployments.standby_slot`).
    """
    runtime_env = dict(ray_actor_options.get("runtime_env") or {})
    runtime_env["py_executable"] = f"{shlex.quote(python)} -m {PRELOAD_MODULE}"
    env_vars = {k: v for k, v in (runtime_env.get("env_vars") or {}).items() if k != PRELOAD_MARKER}
    key = env_key(json.dumps({**runtime_env, "env_vars": env_vars}, sort_keys=True, default=str))
    runtime_env["env_vars"] = {**env_vars, PRELOAD_MARKER: key}
    return {**ray_actor_options, "runtime_env": runtime_env}


def marker_of(ray_actor_options: dict[str, Any]) -> str | None:
    """The key that the preloaded processes of these options carry (None: not preloaded)."""
    return ((ray_actor_options.get("runtime_env") or {}).get("env_vars") or {}).get(PRELOAD_MARKER)


def local_standbys(
    key: str | None = None, include_starting: bool = False, raylet_pid: str | None = None
) -> set[int]:
    """Process ids of the standby workers on this machine (Linux): idle Ray workers (`ray::IDLE`)
    started through the preloader, of one runtime env's `key` or of any.

    `include_starting` also counts preloaded processes that have not yet connected to Ray (they are
    importing the model code: a standby that was just started). `raylet_pid` counts only the workers
    of that raylet (Ray puts `RAY_RAYLET_PID` in every worker's environment): another Ray cluster on
    the same machine with the same config has standbys with the same key.
    """
    prefix = f"\0{PRELOAD_MARKER}=".encode()
    wanted = f"{prefix.decode()}{key}\0".encode() if key else prefix
    raylet = f"\0{RAYLET_PID_ENV}={raylet_pid}\0".encode() if raylet_pid else None
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes()
            environ = b"\0" + (entry / "environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        if wanted not in environ or (raylet is not None and raylet not in environ):
            continue
        if is_idle_worker(title) or (include_starting and not is_connected_worker(title)):
            found.add(int(entry.name))
    return found


def fits(total: dict[str, float], ray_actor_options: dict[str, Any]) -> bool:
    """Whether a node with these total resources could ever host a replica asking for these options."""
    wanted = {
        "CPU": ray_actor_options.get("num_cpus"),
        "GPU": ray_actor_options.get("num_gpus"),
        "memory": ray_actor_options.get("memory"),
        **(ray_actor_options.get("resources") or {}),
    }
    return all(total.get(name, 0.0) >= float(amount) for name, amount in wanted.items() if amount)


def env_key(serialized_env: str) -> str:
    """A short stable name of a serialized runtime env (models with equal envs share their standby)."""
    return hashlib.sha256(serialized_env.encode()).hexdigest()[:16]


class StandbyLedger:
    """When a standby was last started per (runtime env, node), shared by every ingress replica
    through the gateway's store: a claim is one atomic upsert, so of several ingress replicas that
    decide at the same moment that a node needs a standby, exactly one starts it."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def claim(self, key: str, now: float, started_before: float) -> bool:
        """Record a start at `now` unless one was recorded at or after `started_before`; True if recorded."""
        return await self.store.claim_standby(key, now, started_before)

    async def last_start(self, key: str) -> float | None:
        """When a standby was last started for `key`, if ever."""
        return await self.store.last_standby_start(key)


@dataclass
class Node:
    """A node's raylet address and its total resources."""

    node_id: str
    address: str
    port: int
    resources: dict[str, float]


def alive_nodes() -> list[Node]:
    """The cluster's alive nodes with their raylet addresses and total resources."""
    return [
        Node(n["NodeID"], n["NodeManagerAddress"], int(n["NodeManagerPort"]), dict(n.get("Resources") or {}))
        for n in ray.nodes()
        if n.get("Alive")
    ]


def prestart(node: Node, serialized_env: str, keep_alive_s: int) -> None:
    """Ask a node's raylet to start one idle worker process with this (serialized) runtime env."""
    prestart_workers(
        node.address, node.port, serialized_env, keep_alive_s=keep_alive_s, count=1, timeout_s=PRESTART_TIMEOUT_S
    )


def actor_runtime_envs(class_names: set[str]) -> set[str]:
    """The serialized runtime envs Ray gave the alive actors of these classes."""
    return {actor.serialized_runtime_env for actor in alive_actors(class_names) if actor.serialized_runtime_env}


def local_node_id() -> str:
    return ray.get_runtime_context().get_node_id()


@dataclass
class _Group:
    """Models whose replicas share one runtime env, so one standby per node serves any of them."""

    ray_actor_options: dict[str, Any]
    serialized_env: str
    marker: str
    deployments: list[str] = field(default_factory=list)
    # per node: when a replica of these models last appeared there (it may have taken the standby)
    replica_started_at: dict[str, float] = field(default_factory=dict)
    confirmed: bool = False


class StandbyKeeper:
    """Keeps one standby worker on every node that could host a model while that model has no replica.

    What "a standby exists" means, per node:

    - on the keeper's own node, the standby processes of the env are counted (`local_standbys`):
      none there (and none just started) means one is started; a start that does not show up is
      retried only after `LOCAL_RETRY_S`, with a warning;
    - on another node, a standby is assumed to be there from its start until a new replica of one
      of the group's models appears on that node (read from the GCS: Ray hands an idle worker of
      the same env to the new replica) or until its keep-alive has passed.

    A model that is awake does not mean its group's standby was used: only a replica that appears
    does. The standbys bound themselves to one per node and env (`deployments.standby_slot`), so a
    start too many is reclaimed rather than kept.

    The runtime env a replica gets is computed from its deployment's and that of Serve's controller,
    which creates replicas (`inherited_env`). Serve may add fields of the application's runtime_env
    (e.g. a working_dir), so once a model has woken, the env its replicas really got is read back
    from Ray and adopted if it differs.
    """

    def __init__(
        self,
        app: str,
        standbys: dict[str, dict[str, Any]],
        ledger: StandbyLedger,
        keep_alive_s: int,
        check_s: float = CHECK_S,
    ) -> None:
        self.app = app
        self.standbys = standbys
        self.ledger = ledger
        self.keep_alive_s = keep_alive_s
        self.check_s = check_s
        self.groups: list[_Group] = []
        self.local_node: str | None = None
        self._node_cache: tuple[float, list[Node]] = (0.0, [])
        self._replicas_seen: set[str] | None = None  # None until the first read: a baseline, not news

    def plan(self) -> None:
        """Group the models by the runtime env their replicas will get."""
        controller = sorted(actor_runtime_envs({SERVE_CONTROLLER_CLASS}))
        groups: dict[str, _Group] = {}
        for deployment, options in self.standbys.items():
            serialized = inherited_env(controller[0] if controller else "", options.get("runtime_env") or {})
            group = groups.setdefault(
                serialized, _Group(options, serialized, marker_of(options) or env_key(serialized))
            )
            group.deployments.append(deployment)
        self.groups = list(groups.values())
        self.local_node = local_node_id()

    async def note_new_replicas(self, now: float) -> list[Actor]:
        """Record, per group and node, when a replica that was not there at the last check appeared;
        returns the groups' alive replicas."""
        by_class = {replica_class(self.app, d): group for group in self.groups for d in group.deployments}
        actors = await asyncio.to_thread(alive_actors, set(by_class))
        current = {actor.actor_id for actor in actors}
        if self._replicas_seen is not None:
            for actor in actors:
                if actor.actor_id not in self._replicas_seen:
                    by_class[actor.class_name].replica_started_at[actor.node_id] = now
        self._replicas_seen = current
        return actors

    async def step(self, states: Callable[[str], Awaitable[tuple[int, str]]]) -> int:
        """Start the standbys that are missing now; returns how many were started."""
        now = time.time()
        replicas = await self.note_new_replicas(now)
        started = 0
        for group in self.groups:
            seen = [(await states(d))[1] for d in group.deployments]
            if not group.confirmed and any(state in ("starting", "ready") for state in seen):
                self.confirm(group, replicas)
            if "cold" not in seen:
                continue
            for node in await self.nodes():
                if fits(node.resources, group.ray_actor_options) and await self.start_if_missing(group, node, now):
                    started += 1
        return started

    async def start_if_missing(self, group: _Group, node: Node, now: float) -> bool:
        """Start a standby for `group` on `node` unless one is (or is assumed to be) there already."""
        claim_key = f"{env_key(group.serialized_env)}@{node.node_id}"
        if node.node_id == self.local_node:
            if await asyncio.to_thread(local_standbys, group.marker, True, os.environ.get(RAYLET_PID_ENV)):
                return False
            # none here: retry a start that did not show up only after a while, unless a replica took it
            due = max(group.replica_started_at.get(node.node_id, 0.0), now - LOCAL_RETRY_S)
        else:
            due = max(group.replica_started_at.get(node.node_id, 0.0), now - self.keep_alive_s)
        last = await self.ledger.last_start(claim_key)
        if not await self.ledger.claim(claim_key, now, due):
            return False
        if node.node_id == self.local_node and last is not None and last > now - self.keep_alive_s:
            logger.warning(
                "the standby worker started on node %s %.0f s ago is gone or never appeared; starting another",
                node.node_id[:8],
                now - last,
            )
        try:
            await asyncio.to_thread(prestart, node, group.serialized_env, self.keep_alive_s)
        except Exception as error:  # a missing standby only makes the next cold start slower
            logger.warning("could not start a standby worker on node %s: %r", node.node_id[:8], error)
            return False
        logger.info("standby worker started on node %s for %s", node.node_id[:8], ", ".join(group.deployments))
        return True

    def confirm(self, group: _Group, replicas: list[Actor]) -> None:
        """Adopt the runtime env the group's replicas really got, if it differs from the computed one."""
        classes = {replica_class(self.app, deployment) for deployment in group.deployments}
        found = {a.serialized_runtime_env for a in replicas if a.class_name in classes and a.serialized_runtime_env}
        if not found:
            return
        group.confirmed = True
        if group.serialized_env not in found:
            group.serialized_env = sorted(found)[0]
            logger.warning(
                "replicas of %s run with runtime env %s, not the computed one; standby workers use it from now on",
                ", ".join(group.deployments),
                group.serialized_env,
            )

    async def nodes(self) -> list[Node]:
        read_at, nodes = self._node_cache
        if time.monotonic() - read_at > NODES_CACHE_S:
            nodes = await asyncio.to_thread(alive_nodes)
            self._node_cache = (time.monotonic(), nodes)
        return nodes

    async def run(self, states: Callable[[str], Awaitable[tuple[int, str]]]) -> None:
        """Check every `check_s` seconds, for the life of the ingress replica (`states`: `ModelStates.get`)."""
        while True:
            try:
                if not self.groups:
                    await asyncio.to_thread(self.plan)
                await self.step(states)
            except Exception:
                logger.exception("standby check failed")
            await asyncio.sleep(self.check_s)
