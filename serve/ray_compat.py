"""Every use of Ray's private APIs and internal conventions, in one module, for one Ray version.

The gateway needs a few things Ray has no public API for: starting an idle worker process ahead of
work (standby workers, `serve.standby`), reading the GCS actor table (which node a replica runs on,
the runtime env Ray gave it; `ray.util.state` needs the dashboard, which is off), the actor class
names Serve gives its replicas and controller, the string Ray writes for an actor's inherited
runtime env, the deployments' states straight from the controller's details (`serve.status()`
costs tens of ms of CPU a read), and, for the benchmark, Serve's resolved settings and HAProxy's
files. Each is a small function here, written against Ray 2.60 (pyproject.toml pins
`ray[serve]==2.60.*`); nothing else in the project imports `ray._private`, `ray.serve._private`,
`ray.core.generated` or `ray._raylet` (tests/test_ray_compat.py checks).

On import, the installed Ray's version is checked: on another series a warning names the functions
that may break (`check_version`). It is a warning, not an error: the private modules are imported
inside the functions that use them, so a Ray that moved one makes those functions raise when
called (the standby keeper logs it and goes without standbys), not the gateway fail to start.

Ray-version-dependent assumptions kept elsewhere, because they run in the worker process before it
connects to Ray: the process titles Ray gives workers (`ray::IDLE`, `ray::<actor class>`) and the
`--node-id` / `--temp-dir` arguments of Ray's worker script, read by `deployments.standby_slot` and
`deployments.preload`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.runtime_env import RuntimeEnv

logger = logging.getLogger("gigarouter.ray_compat")

# The Ray series (major.minor) these functions were written and tested against.
SUPPORTED_RAY = "2.60"
# What may break on another Ray version, named in the warning.
VERSION_DEPENDENT = (
    "prestart_workers",
    "alive_actors",
    "replica_actors",
    "replica_class",
    "SERVE_CONTROLLER_CLASS",
    "inherited_env",
    "haproxy_files_folder",
    "deployment_overviews",
    "serve_settings",
)

# The actor class name of Serve's controller, as the GCS lists it.
SERVE_CONTROLLER_CLASS = "ServeController"
REPLICA_CLASS_PREFIX = "ServeReplica"


def check_version(version: str) -> str | None:
    """The warning for a Ray `version` outside the supported series, or None if it is supported."""
    if version.split(".")[:2] == SUPPORTED_RAY.split("."):
        return None
    return (
        f"gigarouter-serve was written for Ray {SUPPORTED_RAY}.x, but Ray {version} is installed: these"
        f" functions of serve.ray_compat use Ray's private APIs or internal names and may break:"
        f" {', '.join(VERSION_DEPENDENT)}. Standby workers and replica counts depend on them; run"
        " tests/test_elastic.py against this Ray, then update serve/ray_compat.py and SUPPORTED_RAY."
    )


_warned: set[str] = set()


def warn_if_unsupported(version: str) -> str | None:
    """Log `check_version`'s warning, once per process and version; returns it (None: supported)."""
    message = check_version(version)
    if message and version not in _warned:
        _warned.add(version)
        logger.warning(message)
    return message


warn_if_unsupported(ray.__version__)


def prestart_workers(
    address: str,
    port: int,
    serialized_env: str,
    *,
    keep_alive_s: int,
    count: int = 1,
    timeout_s: float = 10.0,
) -> None:
    """Ask the raylet at `address`:`port` to start `count` idle Python worker processes with this runtime env.

    Ray has no public call to start workers ahead of work: this sends the raylet's PrestartWorkers
    RPC, the one Ray's own core worker sends. `serialized_env` is sent verbatim, because the raylet
    hands an idle worker only to an actor or task whose serialized runtime env is exactly this
    string. The workers exit after `keep_alive_s` if nothing took them. Raises what gRPC raises
    (e.g. `grpc.RpcError`) if the raylet does not answer within `timeout_s`.
    """
    from ray._private.grpc_utils import init_grpc_channel
    from ray._private.utils import get_runtime_env_info
    from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc

    host = f"[{address}]" if ":" in address else address  # an IPv6 address
    runtime_env_info = get_runtime_env_info(RuntimeEnv.deserialize(serialized_env))
    runtime_env_info.serialized_runtime_env = serialized_env
    channel = init_grpc_channel(f"{host}:{port}", asynchronous=False)
    try:
        request = node_manager_pb2.PrestartWorkersRequest(
            language=common_pb2.PYTHON,
            runtime_env_info=runtime_env_info,
            keep_alive_duration_secs=keep_alive_s,
            num_workers=count,
        )
        node_manager_pb2_grpc.NodeManagerServiceStub(channel).PrestartWorkers(request, timeout=timeout_s)
    finally:
        channel.close()


@dataclass(frozen=True)
class Actor:
    """An alive actor as the GCS lists it."""

    actor_id: str
    class_name: str
    node_id: str
    serialized_runtime_env: str


@dataclass(frozen=True)
class ReplicaActor:
    """A Serve replica's actor that is not dead, as the GCS lists it (`node_id` is "" until it is placed)."""

    deployment: str
    actor_id: str
    node_id: str
    state: str  # the GCS's name: "ALIVE", "PENDING_CREATION", "DEPENDENCIES_UNREADY", "RESTARTING"


def _actor_table(state: str | None) -> list[Any]:
    """The GCS actor table (`ActorTableData` protos), of actors in one `state` or all.

    Read from the GCS directly: `ray.util.state.list_actors` needs the dashboard, which is off.
    """
    from ray._private import state as ray_state
    from ray.core.generated import gcs_pb2

    accessor = ray_state.state._connect_and_get_accessor()
    return [gcs_pb2.ActorTableData.FromString(raw) for raw in accessor.get_actor_table(None, state)]


def _node_of(actor: Any) -> str:
    return (actor.node_id or actor.address.node_id).hex()


def alive_actors(class_names: set[str]) -> list[Actor]:
    """The alive actors of these classes, with the node each runs on and its runtime env, read from the GCS."""
    return [
        Actor(actor.actor_id.hex(), actor.class_name, _node_of(actor), actor.serialized_runtime_env)
        for actor in _actor_table("ALIVE")
        if actor.class_name in class_names
    ]


def replica_actors(app: str) -> list[ReplicaActor]:
    """The replica actors of an application's deployments that are not dead (alive, pending, restarting)."""
    from ray.core.generated import gcs_pb2

    prefix = replica_class(app, "")
    states = gcs_pb2.ActorTableData.ActorState
    return [
        ReplicaActor(actor.class_name[len(prefix) :], actor.actor_id.hex(), _node_of(actor), states.Name(actor.state))
        for actor in _actor_table(None)
        if actor.class_name.startswith(prefix) and actor.state != states.Value("DEAD")
    ]


def replica_class(app: str, deployment: str) -> str:
    """The actor class name Serve gives the replicas of a deployment (as the GCS lists it)."""
    return f"{REPLICA_CLASS_PREFIX}:{app}:{deployment}"


def inherited_env(parent: str, child: dict[str, Any]) -> str:
    """The serialized runtime env of an actor asking for `child`, created by a process whose env is `parent`.

    A copy of what Ray's core worker does when it creates an actor: it keeps the child's own
    serialization when the parent has no env, and otherwise merges the two (env_vars name by name,
    other fields replaced by the child's) and writes compact JSON with sorted keys. A standby
    worker matches a replica only if this string is exactly the same.
    """
    base = json.loads(parent) if parent else {}
    if not base:
        return RuntimeEnv(**child).serialize()
    merged = {**base, **child}
    if "env_vars" in base or "env_vars" in child:
        merged["env_vars"] = {**base.get("env_vars", {}), **child.get("env_vars", {})}
    return json.dumps(merged, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def haproxy_files_folder() -> str:
    """The folder under which Serve's HAProxy mode writes its config, sockets and logs (one
    sub-folder per node id): the parent of Serve's `RAY_SERVE_HAPROXY_SOCKET_PATH`."""
    from ray.serve._private.constants import RAY_SERVE_HAPROXY_SOCKET_PATH

    return str(Path(RAY_SERVE_HAPROXY_SOCKET_PATH).parent)


def serve_settings(names: tuple[str, ...]) -> dict[str, Any]:
    """What Serve's constants `names` resolved to in this process (None for one this Ray lacks):
    the settings its environment variables turned into, as Serve itself reads them."""
    from ray.serve._private import constants

    return {name: getattr(constants, name, None) for name in names}


@dataclass(frozen=True)
class DeploymentOverview:
    """What `serve.status()` says of one deployment: its status, message and replicas by state."""

    status: str
    message: str = ""
    replica_states: dict[str, int] = field(default_factory=dict)


def _text(value: Any) -> str:
    return str(getattr(value, "value", value) or "")


def deployment_overviews(app_name: str) -> dict[str, DeploymentOverview]:
    """The deployments of application `app_name` as `serve.status()` would describe them (empty when
    Serve or the application is not there), read from the controller's details without building
    Serve's pydantic status models.

    `serve.status()` validates the details of every application into `ServeInstanceDetails`, which
    cloudpickles each deployment's request router class: ~40 ms of CPU on a 2-core machine, holding
    the GIL, every time the gateway refreshes its view of the models (about once a second under
    traffic). The controller's details are the same dict `serve.status()` starts from
    (`ServeControllerClient.get_serve_details`); replicas are counted by state as its
    `_get_status` does.
    """
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return {}
    application = (client.get_serve_details().get("applications") or {}).get(app_name)
    if not application:
        return {}
    overviews = {}
    for name, deployment in (application.get("deployments") or {}).items():
        states = Counter(_text(replica.get("state")) for replica in deployment.get("replicas") or [])
        overviews[name] = DeploymentOverview(_text(deployment.get("status")), deployment.get("message") or "", dict(states))
    return overviews
