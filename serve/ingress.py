"""The ingress: FastAPI routes behind `@serve.ingress`, routing each request to its model's deployment."""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime.


import logging
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from families.registry import load
from serve.config import GatewayConfig, ModelSpec
from serve.control import ControlPlane
from serve.demand import DemandStore
from serve.dispatch import Dispatcher
from serve.errors import APIError, error_body
from serve.limits import Guard, GuardMiddleware
from serve.routers import models, openai, vision
from serve.service import GatewayService
from serve.validation import document_error_envelope, validation_error

logger = logging.getLogger("gigarouter.ingress")

app = FastAPI(
    title="gigarouter-serve",
    description="OpenAI-compatible gateway for open vision models on Ray Serve.",
    version="0.1.0",
)


def _openapi() -> dict[str, Any]:
    if app.openapi_schema is None:
        try:  # in a Serve replica: this gateway's caps and auth; elsewhere (tests) the default config's
            config = serve.get_replica_context().servable_object.config
        except (serve.exceptions.RayServeException, AttributeError):
            config = None
        app.openapi_schema = document_error_envelope(
            get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes), config
        )
    return app.openapi_schema


app.openapi = _openapi


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


@app.exception_handler(APIError)
async def _api_error(request: Request, error: APIError) -> JSONResponse:
    return error_response(error)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    return error_response(validation_error(error.errors(), getattr(error, "body", None)))


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
    return error_response(APIError(error.status_code, str(error.detail), type=kind))


@app.exception_handler(Exception)
async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(
        error_body("The server failed to handle the request.", "server_error"), status_code=500
    )


def _replica_guard() -> Guard | None:
    # Serve copies `app` when the class below is decorated, so the middleware cannot be handed the
    # Gateway's settings directly: it looks up the replica's Gateway on each request instead.
    return getattr(serve.get_replica_context().servable_object, "guard", None)


# Auth, rate limit and body cap run before routing and body parsing (serve/limits.py).
app.add_middleware(GuardMiddleware, guard=_replica_guard)
for router in (models.router, openai.router, vision.router):
    app.include_router(router)


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(app)
class Gateway:
    """The ingress replica: builds the service the routes call, and owns the control plane."""

    def __init__(
        self,
        config: dict[str, Any],
        models: list[dict[str, Any]],
        handles: dict[str, DeploymentHandle],
        standbys: dict[str, dict[str, Any]] | None = None,
        families: list[str] | None = None,
    ) -> None:
        for path in families or []:  # families a config adds by import path, before the models are read
            load(path)
        self.config = GatewayConfig.model_validate(config)
        specs = [ModelSpec.model_validate(m) for m in models]
        self.guard = Guard.from_config(self.config.max_body_bytes, self.config.auth, self.config.rate_limit)
        self.control = ControlPlane(serve.get_replica_context().app_name, self.config.status_cache_s)
        if standbys:
            # Serve runs the constructor on the replica's event loop; the keeper lives as long as it
            self.control.keep_standbys(
                standbys, self.config.demand_db, self.config.standby_keep_alive_s, self.config.standby_check_s
            )
        dispatcher = Dispatcher(self.config, handles, self.control)
        self.service = GatewayService(self.config, specs, dispatcher, self.control, DemandStore(self.config.demand_db))

    def __del__(self) -> None:
        # Serve calls this when it stops the replica: end the keeper before the event loop's
        # executor goes away under it
        if getattr(self, "control", None) is not None:
            self.control.close()

    async def environment(self, names: list[str]) -> dict[str, str | None]:
        """The values of these environment variables in this ingress replica's process (for handles:
        an operator's check that the application's runtime_env reached it)."""
        return {name: os.environ.get(name) for name in names}
