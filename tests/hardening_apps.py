"""Two small extra Serve applications for the hardening tests, deployed into the session's Serve instance.

- `guarded` (/guarded): auth on (keys from an env var of the ingress replica and from a key file),
  a small per-key rate limit and a 64 KiB body cap. Its one model is coming_soon and is never woken:
  everything tested there is decided by the ingress.
- `faults` (/faults): no auth, image URL fetching off; a live SigLIP2 with one replica, one request
  at a time and a queue of two (for overload and replica-kill tests), the same at zero replicas
  (coming_soon: a burst from zero must not be shed by that queue), a coming_soon model whose
  `source` directory exists but holds no weights (for a model that fails to load), and one whose
  source is a hub id that is in no cache (offline: it must fail fast, not retry the hub).

Both keep `images.allow_http` false, so nothing sent to them (the fuzzer's URLs included) is ever
resolved or fetched. Kept apart from the session's main application so that a failed deployment
or a killed replica there cannot disturb the other tests.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

KEYS_ENV = "GIGAROUTER_TEST_API_KEYS"
ENV_KEYS = {
    "auth": "test-key-auth-0123456789abcdef",
    "rate": "test-key-rate-0123456789abcdef",
    "body": "test-key-body-0123456789abcdef",
    "sdk": "test-key-sdk-00123456789abcdef",
}
FILE_KEY = "test-key-file-0123456789abcdef"  # stored in the key file as itself
HASHED_KEY = "test-key-hashed-0123456789abcd"  # stored in the key file as its sha256 only
GUARDED_BODY_LIMIT = 64 * 1024
GUARDED_RATE = {"enabled": True, "requests_per_s": 0.2, "burst": 3}

QUEUED_MODEL = "test/siglip-small-queue"
COLD_QUEUED_MODEL = "test/siglip-cold-small-queue"
BROKEN_MODEL = "test/broken-weights"
NOT_CACHED_MODEL = "test/not-cached"  # a hub id that no cache holds, with HF_HUB_OFFLINE=1
QUEUE = {"max_ongoing_requests": 1, "max_queued_requests": 2}


@dataclass
class ExtraApp:
    name: str
    url: str
    config: dict = field(default_factory=dict)


def _deploy(name: str, args: dict) -> None:
    from ray import serve

    from serve.app import build_app

    serve.run(build_app(args), name=name, route_prefix=f"/{name}")


def _wait_ok(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer 200 within {timeout_s} s")


@pytest.fixture(scope="session")
def guarded(gateway, checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> ExtraApp:
    """The gateway with auth, rate limit and a small body cap, at /guarded."""
    state = tmp_path_factory.mktemp("guarded")
    keys_file = state / "api-keys.txt"
    keys_file.write_text(f"# test keys\n{FILE_KEY}\nsha256:{hashlib.sha256(HASHED_KEY.encode()).hexdigest()}\n")
    args = {
        "checkpoint_dir": str(checkpoints),
        "gateway": {
            "max_body_bytes": GUARDED_BODY_LIMIT,
            "auth": {"enabled": True, "keys_env": KEYS_ENV, "keys_file": str(keys_file)},
            "rate_limit": GUARDED_RATE,
            "images": {"allow_http": False},
            "demand_db": str(state / "demand.sqlite3"),
            "ray_actor_options": {
                "num_cpus": 0.05,
                "runtime_env": {"env_vars": {KEYS_ENV: ",".join(ENV_KEYS.values())}},
            },
        },
        "models": [
            {
                "id": "google/siglip2-base-patch16-naflex",
                "source": "siglip2",
                "family": "siglip2",
                "status": "coming_soon",
                "standby_worker": False,  # never woken: an idle standby process would only take memory
                "deployment": {"ray_actor_options": {"num_cpus": 0.1}, "autoscaling_config": {"max_replicas": 1}},
            }
        ],
    }
    _deploy("guarded", args)
    url = f"{gateway.url}/guarded"
    _wait_ok(f"{url}/health")
    yield ExtraApp("guarded", url, args)
    from ray import serve

    serve.delete("guarded")


@pytest.fixture(scope="session")
def faults(gateway, checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> ExtraApp:
    """A gateway with a tiny queue and a model that cannot load, at /faults."""
    state = tmp_path_factory.mktemp("faults")
    empty = state / "no-weights-here"
    empty.mkdir()
    args = {
        "checkpoint_dir": str(checkpoints),
        "gateway": {
            "request_timeout_s": 30,
            "cold_start_timeout_s": 90,
            "status_cache_s": 0.5,
            "images": {"allow_http": False},
            "demand_db": str(state / "demand.sqlite3"),
            "ray_actor_options": {"num_cpus": 0.05},
        },
        "models": [
            {
                "id": QUEUED_MODEL,
                "source": "siglip2",
                "family": "siglip2",
                "status": "live",
                "options": {"max_num_patches": 64, "min_num_patches": 16, "max_num_patches_cap": 256},
                "batching": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0},
                # A short health-check period: a killed replica is noticed in about a second.
                "deployment": {
                    "num_replicas": 1,
                    "ray_actor_options": {"num_cpus": 0.25},
                    "health_check_period_s": 1,
                    **QUEUE,
                },
            },
            {
                "id": COLD_QUEUED_MODEL,
                "source": "siglip2",
                "family": "siglip2",
                "status": "coming_soon",
                "standby_worker": False,  # standby workers are tested on the main app (tests/test_elastic.py)
                "options": {"max_num_patches": 64, "min_num_patches": 16, "max_num_patches_cap": 256},
                "batching": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0},
                "deployment": {
                    "ray_actor_options": {"num_cpus": 0.1},
                    "autoscaling_config": {"max_replicas": 1},
                    **QUEUE,
                },
            },
            {
                "id": NOT_CACHED_MODEL,
                "source": "acme/no-such-checkpoint-anywhere",
                "family": "blip",
                "status": "coming_soon",
                "standby_worker": False,
                # Serve's default number of constructor retries: it must still fail within seconds
                "deployment": {"ray_actor_options": {"num_cpus": 0.1}, "autoscaling_config": {"max_replicas": 1}},
            },
            {
                "id": BROKEN_MODEL,
                "source": str(empty),
                "family": "blip",
                "status": "coming_soon",
                "standby_worker": False,
                "deployment": {
                    "ray_actor_options": {"num_cpus": 0.1},
                    "autoscaling_config": {"max_replicas": 1},
                    "max_constructor_retry_count": 1,  # fail after one try, not three
                },
            },
        ],
    }
    _deploy("faults", args)
    url = f"{gateway.url}/faults"
    _wait_ok(f"{url}/health")
    yield ExtraApp("faults", url, args)
    from ray import serve

    serve.delete("faults")


def replica_actor_names(app: str, deployment: str) -> list[str]:
    """Names of the live replica actors of one deployment (named actors in Serve's namespace)."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return sorted(
        entry["name"]
        for entry in ray.util.list_named_actors(all_namespaces=True)
        if entry["namespace"] == "serve" and entry["name"].startswith(prefix)
    )


def kill_replica(app: str, deployment: str) -> str:
    """Kill one replica actor of a deployment, as a crash would; returns its name."""
    import ray

    names = replica_actor_names(app, deployment)
    assert names, f"no replica of {app}/{deployment} is running"
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    return names[0]
