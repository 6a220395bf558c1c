"""The application's runtime_env reaches every replica, below the deployment's own settings.

`serve run config.yaml` and `serve deploy` build an application inside a Ray task that runs with the
application's `runtime_env`; Serve then gives that env only to deployments that set none of their
own, and every deployment of the gateway sets one. Here the builder runs the same way, in a task with
an env var that exists nowhere else (not in this process, not in the job's runtime_env), and the
variable is read back inside the ingress and the model replica through their handles.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from serve.config import REPLICA_ENV
from tests.helpers import chat

APP = "appenv"
ONLY_IN_APP = "GIGAROUTER_TEST_APP_ONLY"
OVERRIDDEN = "GIGAROUTER_TEST_OVERRIDDEN"


@pytest.fixture(scope="module")
def app_env_app(gateway, checkpoints: Path, tmp_path_factory: pytest.TempPathFactory):
    import ray
    from ray import serve

    assert ONLY_IN_APP not in os.environ
    args = {
        "checkpoint_dir": str(checkpoints),
        "gateway": {
            "demand_db": str(tmp_path_factory.mktemp("appenv") / "demand.sqlite3"),
            "ray_actor_options": {"num_cpus": 0.05},
        },
        "models": [
            {
                "id": "test/blip-env",
                "source": "blip",
                "family": "blip",
                "status": "live",
                "deployment": {
                    "num_replicas": 1,
                    "ray_actor_options": {"num_cpus": 0.1, "runtime_env": {"env_vars": {OVERRIDDEN: "deployment"}}},
                },
            }
        ],
    }
    app_env = {"env_vars": {ONLY_IN_APP: "from-the-application", OVERRIDDEN: "application"}}

    @ray.remote(num_cpus=0, runtime_env=app_env)
    def build(args: dict):
        from serve.app import build_app

        return build_app(args)

    serve.run(ray.get(build.remote(args)), name=APP, route_prefix=f"/{APP}")
    yield f"{gateway.url}/{APP}"
    serve.delete(APP)


@pytest.mark.parametrize("deployment", ["Gateway", "blip-env"])
def test_the_applications_runtime_env_reaches_the_replica(app_env_app, deployment, image_url):
    from ray import serve

    names = [ONLY_IN_APP, OVERRIDDEN, *REPLICA_ENV]
    env = serve.get_deployment_handle(deployment, APP).environment.remote(names).result(timeout_s=60)
    assert env[ONLY_IN_APP] == "from-the-application"
    assert env[OVERRIDDEN] == ("deployment" if deployment == "blip-env" else "application")
    assert all(env[name] == value for name, value in REPLICA_ENV.items()), "our own settings are still there"
    served = httpx.post(f"{app_env_app}/v1/chat/completions", json=chat("test/blip-env", "", image_url), timeout=60)
    assert served.status_code == 200, served.text
