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
from serve.accounts import Accounts
from serve.config import GatewayConfig, ModelSpec
from serve.control import ControlPlane
from serve.dispatch import Dispatcher
from serve.errors import APIError, error_body
from serve.limits import Guard, GuardMiddleware
from serve.account_service import AccountService
from serve.routers import accounts, models, openai, pages, vision
from serve.routers import fal as fal_router
from serve.routers import fal_queue
from serve.fal.runner import JobRunner
from serve.service import GatewayService
from serve.store import Store
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
for router in (models.router, openai.router, vision.router, accounts.router, pages.router):
    app.include_router(router)
app.include_router(fal_queue.router)  # /fal/queue/...: jobs in the store, run by each replica's JobRunner
app.include_router(fal_router.router)  # /fal/...: fal.ai's protocol over the same service (serve/fal/)


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(app)
class Gateway:
    """The ingress replica: builds the service the routes call, and owns the control plane."""

    async def __init__(
        self,
        config: dict[str, Any],
        models: list[dict[str, Any]],
        handles: dict[str, DeploymentHandle],
        standbys: dict[str, dict[str, Any]] | None = None,
        families: list[str] | None = None,
    ) -> None:
        # Serve runs this (async) constructor on the replica's event loop.
        for path in families or []:  # families a config adds by import path, before the models are read
            load(path)
        self.config = GatewayConfig.model_validate(config)
        specs = [ModelSpec.model_validate(m) for m in models]
        self.store = Store(self.config.store_url)
        # every ingress replica migrates at start; the store serialises concurrent migrations
        await self.store.migrate()
        self.accounts = Accounts(self.store, self.config.keys_refresh_s, self.config.usage_flush_s)
        await self.accounts.start()
        self.guard = Guard.from_config(
            self.config.max_body_bytes, self.config.auth, self.config.rate_limit, self.accounts
        )
        self.control = ControlPlane(serve.get_replica_context().app_name, self.config.status_cache_s)
        if standbys:
            self.control.keep_standbys(
                standbys, self.store, self.config.standby_keep_alive_s, self.config.standby_check_s
            )
        dispatcher = Dispatcher(self.config, handles, self.control)
        metering = self.accounts if self.config.metering else None
        self.service = GatewayService(self.config, specs, dispatcher, self.control, self.store, metering)
        self.account_service = AccountService(self.store, self.config.auth.enabled)
        self.jobs = JobRunner(self.service, self.store, self.config.fal, self.config.images.host_policy())
        self.jobs.start()  # the fal queue's jobs run in every ingress replica (serve/fal/runner.py)

    async def __del__(self) -> None:
        # Serve calls this when it stops the replica: end the keeper, then write the usage still
        # buffered (a graceful stop loses none), then close the database
        if getattr(self, "jobs", None) is not None:
            await self.jobs.close()
        if getattr(self, "control", None) is not None:
            self.control.close()
        if getattr(self, "accounts", None) is not None:
            await self.accounts.close()
        if getattr(self, "store", None) is not None:
            await self.store.close()

    async def environment(self, names: list[str]) -> dict[str, str | None]:
        """The values of these environment variables in this ingress replica's process (for handles:
        an operator's check that the application's runtime_env reached it)."""
        return {name: os.environ.get(name) for name in names}
