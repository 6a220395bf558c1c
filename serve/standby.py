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
it off.

Ray has no public call to start workers ahead of work; this uses the raylet's PrestartWorkers
RPC, the one Ray's own core worker sends, with Ray pinned in pyproject.toml. If the call fails,
a warning is logged and cold starts take the normal path.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray._private import state as ray_state
from ray._private.grpc_utils import init_grpc_channel
from ray._private.utils import get_runtime_env_info
from ray.core.generated import common_pb2, gcs_pb2, node_manager_pb2, node_manager_pb2_grpc
from ray.runtime_env import RuntimeEnv

from serve.demand import connect

logger = logging.getLogger("gigarouter.standby")

PRELOAD_MODULE = "deployments.preload"
# set in the environment of every worker process started through the preloader (replicas and standbys)
PRELOAD_MARKER = "GIGAROUTER_PRELOAD"
# runtime_env keys that choose another interpreter or environment: a standby started by the
# gateway could not match such a replica's worker, and `py_executable` would override them.
INTERPRETER_KEYS = ("py_executable", "pip", "uv", "conda", "container", "image_uri")
CHECK_S = 10.0
NODES_CACHE_S = 30.0
PRESTART_TIMEOUT_S = 10.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS standby (
    key TEXT PRIMARY KEY,
    started_at REAL NOT NULL
);
"""


def preloading(ray_actor_options: dict[str, Any], python: str = sys.executable) -> dict[str, Any]:
    """`ray_actor_options` whose worker processes import the model code before taking work."""
    runtime_env = dict(ray_actor_options.get("runtime_env") or {})
    runtime_env["py_executable"] = f"{shlex.quote(python)} -m {PRELOAD_MODULE}"
    runtime_env["env_vars"] = {**(runtime_env.get("env_vars") or {}), PRELOAD_MARKER: "1"}
    return {**ray_actor_options, "runtime_env": runtime_env}


def local_standbys() -> set[int]:
    """Process ids of the standby workers on this machine (Linux): idle Ray workers (`ray::IDLE`)
    started through the preloader."""
    marker = f"\0{PRELOAD_MARKER}=1\0".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes()
            environ = b"\0" + (entry / "environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        if title.startswith(b"ray::IDLE") and marker in environ:
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
    """When a standby was last started per (runtime env, node), shared by every ingress replica.

    A claim is one atomic upsert in the gateway's SQLite file, so of several ingress replicas
    that decide at the same moment that a node needs a standby, exactly one starts it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with connect(self.path) as db:
            db.executescript(SCHEMA)

    def claim(self, key: str, now: float, started_before: float) -> bool:
        """Record a start at `now` unless one was recorded at or after `started_before`; True if recorded."""
        with connect(self.path) as db:
            cursor = db.execute(
                "INSERT INTO standby (key, started_at) VALUES (?, ?) ON CONFLICT (key) DO UPDATE"
                " SET started_at = excluded.started_at WHERE standby.started_at < ?",
                (key, now, started_before),
            )
            return cursor.rowcount == 1


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
    host = f"[{node.address}]" if ":" in node.address else node.address
    runtime_env_info = get_runtime_env_info(RuntimeEnv.deserialize(serialized_env))
    # the raylet matches an idle worker to a replica by this exact string, so it is sent verbatim
    runtime_env_info.serialized_runtime_env = serialized_env
    channel = init_grpc_channel(f"{host}:{node.port}", asynchronous=False)
    try:
        request = node_manager_pb2.PrestartWorkersRequest(
            language=common_pb2.PYTHON,
            runtime_env_info=runtime_env_info,
            keep_alive_duration_secs=keep_alive_s,
            num_workers=1,
        )
        node_manager_pb2_grpc.NodeManagerServiceStub(channel).PrestartWorkers(request, timeout=PRESTART_TIMEOUT_S)
    finally:
        channel.close()


def actor_runtime_envs(class_names: set[str]) -> set[str]:
    """The serialized runtime envs Ray gave the alive actors of these classes, read from the GCS."""
    found = set()
    for raw in ray_state.state._connect_and_get_accessor().get_actor_table(None, "ALIVE"):
        actor = gcs_pb2.ActorTableData.FromString(raw)
        if actor.class_name in class_names and actor.serialized_runtime_env:
            found.add(actor.serialized_runtime_env)
    return found


def inherited_env(parent: str, child: dict[str, Any]) -> str:
    """The serialized runtime env of an actor asking for `child`, created by a process whose env is `parent`.

    Ray keeps the child's own serialization when the parent has no env, and otherwise merges the
    two (env_vars name by name, other fields replaced by the child's) and writes compact JSON with
    sorted keys. A standby matches a replica only if this string is exactly the same.
    """
    base = json.loads(parent) if parent else {}
    if not base:
        return RuntimeEnv(**child).serialize()
    merged = {**base, **child}
    if "env_vars" in base or "env_vars" in child:
        merged["env_vars"] = {**base.get("env_vars", {}), **child.get("env_vars", {})}
    return json.dumps(merged, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass
class _Group:
    """Models whose replicas share one runtime env, so one standby per node serves any of them."""

    ray_actor_options: dict[str, Any]
    serialized_env: str
    deployments: list[str] = field(default_factory=list)
    woke_at: float = 0.0
    confirmed: bool = False


class StandbyKeeper:
    """Keeps a standby worker on every node that could host a model while that model has no replica.

    A standby is started when a model is seen cold and none was started for its runtime env on
    that node since the model last woke (a waking replica takes the standby), and again before
    the previous one's keep-alive ends (Ray may then reclaim an idle worker).

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
    ) -> None:
        self.app = app
        self.standbys = standbys
        self.ledger = ledger
        self.keep_alive_s = keep_alive_s
        self.groups: list[_Group] = []
        self._node_cache: tuple[float, list[Node]] = (0.0, [])

    def plan(self) -> None:
        """Group the models by the runtime env their replicas will get."""
        controller = sorted(actor_runtime_envs({"ServeController"}))
        groups: dict[str, _Group] = {}
        for deployment, options in self.standbys.items():
            serialized = inherited_env(controller[0] if controller else "", options.get("runtime_env") or {})
            groups.setdefault(serialized, _Group(options, serialized)).deployments.append(deployment)
        self.groups = list(groups.values())

    async def step(self, states: Callable[[str], Awaitable[tuple[int, str]]]) -> int:
        """Start the standbys that are missing now; returns how many were started."""
        started = 0
        for group in self.groups:
            now = time.time()
            seen = [(await states(d))[1] for d in group.deployments]
            if any(state in ("starting", "ready") for state in seen):
                group.woke_at = now
                if not group.confirmed:
                    await self.confirm(group)
            if "cold" not in seen:
                continue
            key = env_key(group.serialized_env)
            # the previous standby is renewed a little before its keep-alive ends
            due = max(now - 0.9 * self.keep_alive_s, group.woke_at)
            for node in await self.nodes():
                if not fits(node.resources, group.ray_actor_options):
                    continue
                if not await asyncio.to_thread(self.ledger.claim, f"{key}@{node.node_id}", now, due):
                    continue
                try:
                    await asyncio.to_thread(prestart, node, group.serialized_env, self.keep_alive_s)
                except Exception as error:  # a missing standby only makes the next cold start slower
                    logger.warning("could not start a standby worker on node %s: %r", node.node_id[:8], error)
                    continue
                started += 1
                logger.info("standby worker started on node %s for %s", node.node_id[:8], ", ".join(group.deployments))
        return started

    async def confirm(self, group: _Group) -> None:
        """Adopt the runtime env the group's replicas really got, if it differs from the computed one."""
        classes = {f"ServeReplica:{self.app}:{deployment}" for deployment in group.deployments}
        found = await asyncio.to_thread(actor_runtime_envs, classes)
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
        """Check every few seconds, for the life of the ingress replica (`states`: `ModelStates.get`)."""
        while True:
            try:
                if not self.groups:
                    await asyncio.to_thread(self.plan)
                await self.step(states)
            except Exception:
                logger.exception("standby check failed")
            await asyncio.sleep(CHECK_S)
