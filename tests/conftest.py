"""Shared fixtures: tiny checkpoints, sample images, and one real Ray Serve instance per test session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.elastic_config import STANDBY_GRACE_S, apply_elastic_overrides
from tests.hardening_apps import faults, guarded  # noqa: F401  (session fixtures: extra Serve apps)
from tests.postgres_fixtures import fresh_postgres_url, postgres_server, postgres_url  # noqa: F401
from tests.helpers import APP_NAME, ROOT, data_url, local_args, png_bytes
from tools.launcher import LocalStack, prepare_env

# The local stack's environment (tools/launcher.py), set on import: the multi-node tests start their
# own Ray processes, which inherit it too. Idle standby workers without their node's slot leave
# after 3 s instead of 30 (tests/test_elastic.py watches extras being reclaimed).
prepare_env(standby_grace_s=STANDBY_GRACE_S)


@pytest.fixture(scope="session")
def checkpoints() -> Path:
    """The tiny checkpoints, built once (idempotent: `make test` has usually built them already)."""
    from tools.tiny_checkpoints import build_all

    out = ROOT / "checkpoints" / "tiny"
    build_all(out)
    return out


@dataclass
class Gateway:
    url: str
    port: int
    initial_models: dict[str, dict[str, Any]]


@pytest.fixture(scope="session")
def gateway(checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> Gateway:
    """The local catalog deployed on a real Ray Serve instance in this process, HTTP on 127.0.0.1."""
    import httpx

    args = local_args()
    args["checkpoint_dir"] = str(checkpoints)
    args["gateway"]["demand_db"] = str(tmp_path_factory.mktemp("state") / "demand.sqlite3")
    apply_elastic_overrides(args)  # short scale-to-zero delays, one unplaceable entry (tests/test_elastic.py)
    with LocalStack(num_cpus=4, standby_grace_s=STANDBY_GRACE_S) as stack:
        stack.deploy(APP_NAME, args, route_prefix="/")
        # The listing answers from a status read up to `status_cache_s` old (the standby keeper reads
        # too), which may predate the live replica's start: take it once readiness says so.
        stack.wait_ready(timeout_s=60)
        listing = httpx.get(f"{stack.url}/v1/models", timeout=30).json()
        yield Gateway(url=stack.url, port=stack.port, initial_models={m["id"]: m for m in listing["data"]})


@pytest.fixture(scope="session")
def client(gateway: Gateway):
    import httpx

    with httpx.Client(base_url=gateway.url, timeout=120) as http:
        yield http


@pytest.fixture(scope="session")
def image_url() -> str:
    return data_url(png_bytes())
