"""Shared fixtures: tiny checkpoints, sample images, and one real Ray Serve instance per test session."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deployments.standby_slot import GRACE_ENV
from serve.proxy_errors import CALLBACK_ENV, CALLBACK_PATH
from tests.elastic_config import STANDBY_GRACE_S, apply_elastic_overrides
from tests.hardening_apps import faults, guarded  # noqa: F401  (session fixtures: extra Serve apps)
from tests.helpers import APP_NAME, ROOT, data_url, local_args, png_bytes

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray then binds its processes to 127.0.0.1, not to the machine's network address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Ray's worker processes inherit this: an idle standby worker without its node's slot leaves after
# 3 s instead of 30 (tests/test_elastic.py watches extras being reclaimed).
os.environ.setdefault(GRACE_ENV, str(STANDBY_GRACE_S))
# Serve's HTTP proxy answers its own errors in the envelope and resends requests whose ingress died.
os.environ.setdefault(CALLBACK_ENV, CALLBACK_PATH)

@pytest.fixture(scope="session")
def checkpoints() -> Path:
    """The tiny checkpoints, built once (idempotent: `make test` has usually built them already)."""
    from deployments.tiny import build_all

    out = ROOT / "checkpoints" / "tiny"
    build_all(out)
    return out


@dataclass
class Gateway:
    url: str
    port: int
    initial_models: dict[str, dict[str, Any]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def gateway(checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> Gateway:
    """The local catalog deployed on a real Ray Serve instance, HTTP on 127.0.0.1."""
    import httpx
    import ray
    from ray import serve

    from serve.app import build_app

    port = _free_port()
    ray.init(
        address="local",  # always a fresh instance, never a cluster some other process started
        num_cpus=4,
        include_dashboard=False,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}},
        logging_level="WARNING",
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = local_args()
    args["checkpoint_dir"] = str(checkpoints)
    args["gateway"]["demand_db"] = str(tmp_path_factory.mktemp("state") / "demand.sqlite3")
    apply_elastic_overrides(args)  # short scale-to-zero delays, one unplaceable entry (tests/test_elastic.py)
    serve.run(build_app(args), name=APP_NAME, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    # The listing answers from a status read up to `status_cache_s` old (the standby keeper reads
    # too), which may predate the live replica's start: take it once readiness says so.
    deadline = time.monotonic() + 60
    while httpx.get(f"{url}/health/ready", timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "the session's gateway was not ready within 60 s"
        time.sleep(0.2)
    listing = httpx.get(f"{url}/v1/models", timeout=30).json()
    yield Gateway(url=url, port=port, initial_models={m["id"]: m for m in listing["data"]})
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def client(gateway: Gateway):
    import httpx

    with httpx.Client(base_url=gateway.url, timeout=120) as http:
        yield http


@pytest.fixture(scope="session")
def image_url() -> str:
    return data_url(png_bytes())
