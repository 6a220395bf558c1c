"""`serve.ray_compat` is the only place that uses Ray's private APIs, and says so when Ray is not the
version it was written for. The private calls themselves run against a live cluster in
tests/test_elastic.py (standby workers, actor table) and tests/test_multinode.py (replica placement).
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from serve import ray_compat
from serve.ray_compat import check_version, inherited_env, replica_class, warn_if_unsupported

ROOT = Path(__file__).resolve().parent.parent
SCANNED_FOLDERS = ("serve", "deployments", "benchmarks", "soak", "tools", "tests")
ALLOWED = "serve/ray_compat.py"
NOT_SCANNED = {
    # It calls our autoscaling policy the way Serve does, with `AutoscalingContext`s built from
    # Serve's own `DeploymentID` / `ReplicaID` (in ray.serve._private.common): that is the API under
    # test, not a private call of ours. The policy itself (serve/autoscaling.py) is scanned.
    "tests/test_autoscaling_policy.py",
}
# This file spells the patterns it looks for, in strings: only its code is scanned.
CODE_ONLY = {"tests/test_ray_compat.py"}

# Names of the raylet's and the GCS's gRPC methods, stubs and generated modules, and of the GCS
# state accessor: any of them outside ray_compat means a private call, whatever it was imported as.
RPC_NAMES = {
    "PrestartWorkers",
    "RequestWorkerLease",
    "ReturnWorkerLease",
    "CancelWorkerLease",
    "GetNodeStats",
    "GetResourceLoad",
    "DrainRaylet",
    "ShutdownRaylet",
    "GetWorkerPIDs",
    "KillLocalActor",
    "GetActorInfo",
    "GetNamedActorInfo",
    "ListNamedActors",
    "KillActorViaGcs",
    "DrainNode",
    "CheckAlive",
    "InternalKVGet",
    "InternalKVPut",
    "get_actor_table",
    "get_actor_info",
    "GlobalStateAccessor",
    "global_state_accessor",
    "_connect_and_get_accessor",
}
RPC_PATTERN = re.compile(
    r"^(?:GetAll[A-Z]\w*|\w+ServiceStub|\w+Servicer|\w+_pb2(?:_grpc)?)$|^(?:" + "|".join(RPC_NAMES) + ")$"
)
RPC_IN_TEXT = re.compile(
    r"\b(?:GetAll[A-Z]\w*|\w+ServiceStub|\w+_pb2(?:_grpc)?|" + "|".join(RPC_NAMES) + r")\b"
    r"|\bray\.rpc\.|\bray(?:\.\w+)*\._(?!_)\w*|\bray\.core\.generated\b"
)


def is_private_ray(module: str) -> bool:
    """Whether a dotted name is in Ray's private parts: a `_name` segment, or the generated protobufs."""
    parts = module.split(".")
    if parts[0] != "ray":
        return False
    return parts[:3] == ["ray", "core", "generated"] or any(p.startswith("_") and not p.startswith("__") for p in parts)


def ray_aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> the Ray module or object it is bound to (`import ray`, `from ray import serve`, ...)."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ray":
                    aliases[alias.asname or "ray"] = alias.name if alias.asname else "ray"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "ray":
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def dotted(node: ast.AST) -> list[str] | None:
    """`a.b.c` as ["a", "b", "c"]; None if the chain does not start at a plain name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def violations(source: str, check_strings: bool = True) -> list[str]:
    """Every private Ray use in `source`, as "line N: what"."""
    tree = ast.parse(source)
    aliases = ray_aliases(tree)
    found = set()
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            found |= {(line, f"imports {a.name}") for a in node.names if is_private_ray(a.name)}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                if is_private_ray(f"{node.module}.{alias.name}"):
                    found.add((line, f"imports {alias.name} from {node.module}"))
        elif isinstance(node, ast.Attribute) and (chain := dotted(node)) and chain[0] in aliases:
            path = ".".join([aliases[chain[0]], *chain[1:]])
            if is_private_ray(path):
                found.add((line, f"uses {path}"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and check_strings:
            found |= {(line, f"mentions {m.group(0)}") for m in RPC_IN_TEXT.finditer(node.value)}
        names = []
        if isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.alias):
            names = [node.name.split(".")[-1], node.asname or ""]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names = [node.name]
        found |= {(line, f"names {name}") for name in names if name and RPC_PATTERN.match(name)}
    return [f"line {line}: {what}" for line, what in sorted(found)]


def scanned_files() -> list[str]:
    files = []
    for folder in SCANNED_FOLDERS:
        files += [str(p.relative_to(ROOT)) for p in sorted((ROOT / folder).rglob("*.py"))]
    return [f for f in files if f not in NOT_SCANNED and f != ALLOWED]


def test_no_module_but_ray_compat_uses_private_ray():
    files = scanned_files()
    assert {"serve/standby.py", "tests/cluster_scenario.py", "tests/test_ray_compat.py"} <= set(files), files
    found = {
        path: problems
        for path in files
        if (problems := violations((ROOT / path).read_text(), check_strings=path not in CODE_ONLY))
    }
    assert found == {}, f"private Ray use outside serve/ray_compat.py (move it there): {json.dumps(found, indent=1)}"


def test_the_scan_finds_ray_compats_own_private_calls():
    found = "\n".join(violations((ROOT / ALLOWED).read_text()))
    for expected in (
        "imports state from ray._private",
        "imports init_grpc_channel from ray._private.grpc_utils",
        "imports gcs_pb2 from ray.core.generated",
        "names PrestartWorkers",
        "names NodeManagerServiceStub",
        "names get_actor_table",
        "names _connect_and_get_accessor",
    ):
        assert expected in found, f"{expected!r} not in:\n{found}"


@pytest.mark.parametrize(
    "source",
    [
        "import ray._private.state",
        "import ray._raylet as raylet",
        "from ray._private import state",
        "from ray import _private",
        "from ray.serve._private.common import DeploymentID",
        "from ray.serve import _private",
        "from ray.core.generated import gcs_pb2",
        "from ray.core import generated",
        "from ray.serve.context import _get_internal_replica_context",
        "import ray\nray._private.state.actors()",
        "import ray as r\nr.serve._private.constants",
        "from ray import serve\nserve._private.common",
        "import importlib\nimportlib.import_module('ray._private.utils')",
        "stub.PrestartWorkers(request)",
        "accessor.get_actor_table(None, 'ALIVE')",
        "client.GetAllActorInfo(request)",
        "getattr(stub, 'PrestartWorkers')",
        "channel.unary_unary('/ray.rpc.NodeManagerService/PrestartWorkers')",
        "def f():\n    from ray._private.utils import get_runtime_env_info",
        '"""Uses the GetAllNodeInfo RPC."""',
    ],
)
def test_the_scan_flags(source):
    assert violations(source), source


@pytest.mark.parametrize(
    "source",
    [
        "import ray\nray.nodes()\nray.__version__",
        "from ray import serve\nserve.get_replica_context().app_name",
        "from ray.serve.config import AutoscalingContext",
        "from ray.util import state\nstate.list_actors()",
        "self._private = 1\nobj._raylet.x",
        "from serve.ray_compat import alive_actors, prestart_workers",
        "'Ray keeps a runtime env per worker'",
    ],
)
def test_the_scan_leaves_public_ray_alone(source):
    assert violations(source) == [], source


@pytest.mark.parametrize("version", ["2.60.0", "2.60.3", "2.60.0rc1"])
def test_the_supported_series_gets_no_warning(version):
    assert check_version(version) is None


@pytest.mark.parametrize("version", ["2.61.0", "2.6.0", "2.600.0", "3.0.0.dev0", "2.59.1"])
def test_another_version_gets_a_warning_naming_what_may_break(version):
    message = check_version(version)
    assert message and f"Ray {version} is installed" in message and "Ray 2.60.x" in message
    for name in ("prestart_workers", "alive_actors", "replica_actors", "replica_class", "inherited_env"):
        assert name in message


def test_the_warning_is_logged_once(caplog):
    with caplog.at_level(logging.WARNING, logger="gigarouter.ray_compat"):
        assert warn_if_unsupported("2.61.0-test") is not None
        assert warn_if_unsupported("2.61.0-test") is not None
        assert warn_if_unsupported("2.60.1") is None
    assert [r.getMessage() for r in caplog.records] == [check_version("2.61.0-test")]


@pytest.mark.parametrize("version, warnings", [("2.61.0", 1), (None, 0)])
def test_importing_under_another_ray_warns_and_does_not_fail(version, warnings):
    patch = f"ray.__version__ = {version!r}; " if version else ""
    code = f"import ray; {patch}import serve.ray_compat, serve.standby, serve.ray_compat"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("gigarouter-serve was written for Ray 2.60.x") == warnings, done.stderr


def test_the_names_serve_gives_its_actors():
    assert replica_class("gigarouter", "florence-2-base") == "ServeReplica:gigarouter:florence-2-base"
    assert ray_compat.SERVE_CONTROLLER_CLASS == "ServeController"


def test_standby_uses_the_same_objects():
    # serve.ingress and tests/test_elastic.py import these from serve.standby for now
    from serve import standby

    for name in ("alive_actors", "replica_class", "Actor", "inherited_env"):
        assert getattr(standby, name) is getattr(ray_compat, name)


def test_the_replica_env_is_the_deployments_own_when_its_creator_has_none():
    child = {"env_vars": {"A": "1"}, "py_executable": "/venv/bin/python -m deployments.preload"}
    assert inherited_env("", child) == json.dumps(child)
    assert inherited_env("{}", child) == json.dumps(child)


def test_the_replica_env_merges_the_creators_env_vars_as_ray_writes_it():
    # What Ray 2.60 gave a replica created by a controller with a job-level env (seen in its GCS
    # actor table; tests/test_elastic.py checks this function against a live replica).
    parent = json.dumps({"env_vars": {"HF_HUB_OFFLINE": "1", "A": "parent", "Z": "é"}})
    child = {"py_executable": "/venv/bin/python -m deployments.preload", "env_vars": {"A": "1"}}
    assert inherited_env(parent, child) == (
        '{"env_vars":{"A":"1","HF_HUB_OFFLINE":"1","Z":"é"},"py_executable":"/venv/bin/python -m deployments.preload"}'
    )


def test_serve_settings_are_read_as_serve_resolved_them():
    settings = ray_compat.serve_settings(("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_NO_SUCH_SETTING"))
    assert settings == {"RAY_SERVE_ENABLE_HA_PROXY": False, "RAY_SERVE_NO_SUCH_SETTING": None}


def test_the_haproxy_files_folder_is_an_absolute_path():
    assert Path(ray_compat.haproxy_files_folder()).is_absolute()
