"""The typed application builder: `serve run serve/configs/local.yaml` calls `build_app(args)`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve import Application

from families.registry import family_of, runtime_class
from serve.config import AppArgs
from serve.ingress import Gateway

logger = logging.getLogger("gigarouter.app")


def application_runtime_env() -> dict[str, Any]:
    """The runtime_env this builder runs in: under `serve run`/`serve deploy` of a config file, the
    application's `runtime_env` (over the job's); under `serve.run` from Python, the driver's job env.

    Serve hands it only to deployments that set no runtime_env of their own, and every deployment
    here sets one, so `build_app` merges it into each (the operator's values win over ours).
    """
    if not ray.is_initialized():
        return {}
    env = ray.get_runtime_context().runtime_env
    return {key: value for key, value in dict(env or {}).items() if value not in (None, {}, [], "")}


def absolute_sqlite(url: str) -> str:
    """A SQLite URL with its file as an absolute path (replicas and the controller run elsewhere)."""
    prefix, sep, path = url.partition(":///")
    if not prefix.startswith("sqlite") or not sep or path.startswith("/") or path in ("", ":memory:"):
        return url
    return f"{prefix}:///{Path(path).expanduser().resolve()}"


def build_app(args: AppArgs | dict[str, Any]) -> Application:
    """Bind one deployment per catalog entry and the ingress that routes to them."""
    args = AppArgs.model_validate(args)
    gateway = args.gateway.model_copy(update={"database_url": absolute_sqlite(args.gateway.store_url)})
    app_env = application_runtime_env()
    handles = {}
    standbys = {}
    for spec in args.models:
        source = args.resolve_source(spec.source)
        options = spec.serve_options(demand_db=gateway.database_url, app_env=app_env)
        model_class = runtime_class(family_of(spec.family))
        handles[spec.id] = serve.deployment(model_class).options(**options).bind(
            spec.model_dump(), source, gateway.images.model_dump()
        )
        if spec.standby_with(app_env):
            # the ingress starts standby workers with exactly the runtime env the replicas get
            standbys[spec.deployment_name] = options["ray_actor_options"]
        elif spec.uses_standby:
            logger.warning("model %s: no standby worker: the application's runtime_env picks its own interpreter", spec.id)
        logger.info("model %s (%s) from %s as deployment %s", spec.id, spec.family, source, spec.deployment_name)
    return Gateway.options(**gateway.serve_options(app_env)).bind(
        gateway.model_dump(),
        [spec.model_dump() for spec in args.models],
        handles,
        standbys,
        args.families,
    )
