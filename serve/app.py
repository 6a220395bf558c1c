"""The typed application builder: `serve run serve/configs/local.yaml` calls `build_app(args)`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from deployments.registry import FAMILIES
from serve.config import AppArgs
from serve.ingress import Gateway

logger = logging.getLogger("gigarouter.app")


def build_app(args: AppArgs | dict[str, Any]) -> Application:
    """Bind one deployment per catalog entry and the ingress that routes to them."""
    args = AppArgs.model_validate(args)
    gateway = args.gateway.model_copy(update={"demand_db": str(Path(args.gateway.demand_db).expanduser().resolve())})
    handles = {}
    standbys = {}
    for spec in args.models:
        source = args.resolve_source(spec.source)
        options = spec.serve_options(demand_db=gateway.demand_db)
        handles[spec.id] = serve.deployment(FAMILIES[spec.family]).options(**options).bind(spec.model_dump(), source)
        if spec.uses_standby:
            # the ingress starts standby workers with exactly the runtime env the replicas get
            standbys[spec.deployment_name] = options["ray_actor_options"]
        logger.info("model %s (%s) from %s as deployment %s", spec.id, spec.family, source, spec.deployment_name)
    return Gateway.options(**gateway.serve_options()).bind(
        gateway.model_dump(),
        [spec.model_dump() for spec in args.models],
        handles,
        standbys,
    )
