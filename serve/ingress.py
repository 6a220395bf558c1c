"""The ingress: FastAPI routes behind `@serve.ingress`, routing each request to its model's deployment."""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime.


import asyncio
import logging
import math
import os
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.annotate import annotate
from serve.catalog import ENDPOINT_PATHS, FAMILY_TASKS, Task, endpoints_of, find_task
from serve.chat_tasks import CHAT_TASKS
from serve.config import GatewayConfig, ModelSpec, slug
from serve.demand import DemandStore
from serve.errors import (
    APIError,
    bad_request,
    error_body,
    find_api_error,
    model_not_found,
    model_unavailable,
    short_reason,
)
from serve.health import Readiness
from serve.images import load_image
from serve.limits import Guard, GuardMiddleware
from serve.protocol import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessageOut,
    ClassificationRequest,
    ClassificationResponse,
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    InterestResponse,
    LabelScore,
    ModelCard,
    ModelList,
    ScoreRequest,
    ScoreResponse,
    Usage,
    VisionResult,
    VisionTaskRequest,
    VisionTaskResponse,
    chat_prompt,
    chat_stream,
    checked_region,
    encode_vector,
)
from serve.standby import StandbyKeeper, StandbyLedger, alive_actors, replica_class
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


# While a request waits for a model: how often its state is re-read, and the pause before a
# request the full queue rejected during a cold start is sent again.
STATE_POLL_S = 1.0
COLD_QUEUE_RETRY_S = 0.5
# The oldest read of Serve's status a request uses without waiting for a new one, and only for a
# model this ingress sent a request to within the same time: models go back to zero only after a
# stretch with no traffic, so for such a model the read still says whether the request is a cold
# start. (Reads themselves are frequent, e.g. the standby keeper's, and may predate a scale-down.)
STALE_READ_S = 5.0
# Serve's status message while it replaces a replica that died or failed its health check: the
# model is recovering (requests wait for the replacement), not broken.
REPLACING_PREFIX = "A replica's health check failed"
# How long after a request saw a replica of a model die a full queue of that model is taken for
# requests waiting for the replacement rather than for overload.
REPLACEMENT_WINDOW_S = 30.0
ALIVE_CACHE_S = 0.5


class ResponseCancelled(Exception):
    """A model call that Serve cancelled while the caller still waited (its replica went away)."""


# Errors that mean the replica a request was sent to is gone. Inference calls are idempotent, so
# such a request is sent once more (to another replica, or the replacement) before it fails.
REPLICA_LOST = (RayActorError, ActorUnavailableError, ReplicaUnavailableError, ResponseCancelled)


def _replica_guard() -> Guard | None:
    # Serve copies `app` when the class below is decorated, so the middleware cannot be handed the
    # Gateway's settings directly: it looks up the replica's Gateway on each request instead.
    return getattr(serve.get_replica_context().servable_object, "guard", None)


# Auth, rate limit and body cap run before routing and body parsing (serve/limits.py).
app.add_middleware(GuardMiddleware, guard=_replica_guard)


class ModelStates:
    """Replica counts and states of the model deployments, read from Serve's status without waking any."""

    def __init__(self, cache_s: float) -> None:
        self.cache_s = cache_s
        self._read_at = 0.0
        self._deployments: dict[str, Any] = {}
        self._lock = asyncio.Lock()
        self._background: asyncio.Task | None = None
        self._routed: dict[str, float] = {}
        self._alive: dict[str, tuple[float, int]] = {}

    async def get(self, deployment: str) -> tuple[int, str]:
        """(running replicas, state) of a deployment: state is cold, starting, pending, ready or unavailable."""
        running, state, _ = await self.describe(deployment)
        return running, state

    async def describe(
        self, deployment: str, fresh: bool = True, max_age_s: float | None = None
    ) -> tuple[int, str, str | None]:
        """(running replicas, state, reason): the reason is Serve's status message while the model is not ready.

        `fresh=False` (the request path) accepts a read up to `STALE_READ_S` old and refreshes it in
        the background, so a request under steady traffic never waits for Serve; the first request
        after a quiet spell, when the model may just have gone back to zero, waits for a read taken
        now (not even one `status_cache_s` old: that could predate the scale-down). `max_age_s` asks
        for a read at most that old.
        """
        now = time.monotonic()
        recent = now - self._routed.get(deployment, -math.inf) < STALE_READ_S
        if max_age_s is not None:
            await self._read(max_age_s=max_age_s)
        elif fresh:
            await self._refresh()
        else:
            self._routed[deployment] = now
            await (self._refresh(wait=False) if recent else self._read(max_age_s=0.0))
        overview = self._deployments.get(deployment)
        if overview is None:
            return 0, "starting", "the deployment is being created"
        counts = {getattr(k, "value", str(k)): n for k, n in overview.replica_states.items()}
        running = counts.get("RUNNING", 0)
        if running:
            return running, "ready", None
        status = getattr(overview.status, "value", str(overview.status))
        message = (overview.message or "").strip() or None
        if status == "UNHEALTHY" and (message or "").startswith(REPLACING_PREFIX):
            return 0, "starting", "a replica stopped; Serve is starting its replacement"
        if status in ("UNHEALTHY", "DEPLOY_FAILED"):
            # Serve's message carries the replica's traceback: clients get its gist only.
            return 0, "unavailable", short_reason(message) or f"deployment status {status}"
        if any(counts.get(s, 0) for s in ("STARTING", "PENDING_MIGRATION", "RECOVERING")):
            # Serve says so once a replica has waited past RAY_SERVE_SLOW_STARTUP_WARNING_S (30 s)
            # for a node with the resources it asks for (e.g. a GPU fraction no node has free).
            if message and "to be scheduled" in message:
                return 0, "pending", message
            return 0, "starting", message
        return 0, "cold", None

    async def alive_replicas(self, deployment: str) -> int:
        """How many replica actors of a deployment Ray has alive now (re-read at most every ALIVE_CACHE_S)."""
        read_at, count = self._alive.get(deployment, (-math.inf, 0))
        if time.monotonic() - read_at >= ALIVE_CACHE_S:
            app_name = serve.get_replica_context().app_name
            actors = await asyncio.to_thread(alive_actors, {replica_class(app_name, deployment)})
            count = len(actors)
            self._alive[deployment] = (time.monotonic(), count)
        return count

    def invalidate(self) -> None:
        """Make the next read fresh, e.g. once a cold model has answered (its replica is up now)."""
        self._read_at = 0.0

    async def _refresh(self, wait: bool = True) -> None:
        if time.monotonic() - self._read_at < self.cache_s:
            return
        if not wait and self._read_at and time.monotonic() - self._read_at < STALE_READ_S:
            # On the request path a read that is a little old will do: refresh in the background
            # instead of making this request wait for Serve's status (tens of ms).
            if self._background is None or self._background.done():
                self._background = asyncio.get_running_loop().create_task(self._read())
            return
        await self._read()

    async def _read(self, max_age_s: float | None = None) -> None:
        async with self._lock:
            if time.monotonic() - self._read_at < (self.cache_s if max_age_s is None else max_age_s):
                return
            app_name = serve.get_replica_context().app_name
            status = await asyncio.to_thread(serve.status)
            application = status.applications.get(app_name)
            self._deployments = dict(application.deployments) if application else {}
            self._read_at = time.monotonic()


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(app)
class Gateway:
    """Routes OpenAI-style requests to the model deployments bound at build time."""

    def __init__(
        self,
        config: dict[str, Any],
        models: list[dict[str, Any]],
        handles: dict[str, DeploymentHandle],
        standbys: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.config = GatewayConfig.model_validate(config)
        self.specs = {spec.id: spec for spec in (ModelSpec.model_validate(m) for m in models)}
        self.by_slug = {spec.deployment_name: spec for spec in self.specs.values()}
        self.handles = handles
        self.states = ModelStates(self.config.status_cache_s)
        self.guard = Guard.from_config(self.config.max_body_bytes, self.config.auth, self.config.rate_limit)
        self.demand = DemandStore(self.config.demand_db)
        self.replica_lost_at: dict[str, float] = {}  # model id -> when a request last saw its replica die
        self._standby_task = None
        if standbys:
            app_name = serve.get_replica_context().app_name
            ledger = StandbyLedger(self.config.demand_db)
            keeper = StandbyKeeper(
                app_name, standbys, ledger, self.config.standby_keep_alive_s, self.config.standby_check_s
            )
            # Serve runs the constructor on the replica's event loop; the keeper lives as long as it
            self._standby_task = asyncio.get_running_loop().create_task(keeper.run(self.states.get))

    def __del__(self) -> None:
        # Serve calls this when it stops the replica: end the keeper before the event loop's
        # executor goes away under it
        if getattr(self, "_standby_task", None) is not None:
            self._standby_task.cancel()

    async def environment(self, names: list[str]) -> dict[str, str | None]:
        """The values of these environment variables in this ingress replica's process (for handles:
        an operator's check that the application's runtime_env reached it)."""
        return {name: os.environ.get(name) for name in names}

    # ----- routing -----

    def model(self, model_id: str, endpoint: str) -> ModelSpec:
        spec = self.specs.get(model_id) or self.by_slug.get(slug(model_id))
        if spec is None:
            raise model_not_found(model_id)
        if endpoint not in endpoints_of(spec.family):
            served = ", ".join(ENDPOINT_PATHS[e] for e in sorted(endpoints_of(spec.family)))
            raise bad_request(
                f"The model '{spec.id}' does not support {ENDPOINT_PATHS[endpoint]}; it serves {served}",
                param="model",
                code="unsupported_endpoint",
            )
        return spec

    def task(self, model_name: str, task_name: str) -> tuple[ModelSpec, Task]:
        """The model and task a task endpoint `/v1/vision/{model_name}/{task_name}` names."""
        spec = self.by_slug.get(model_name) or self.specs.get(model_name)
        if spec is None:
            raise model_not_found(model_name)
        task = find_task(spec.family, task_name)
        if task is None or task.endpoint != "chat":
            tasks = ", ".join(t.name for t in FAMILY_TASKS[spec.family] if t.endpoint == "chat")
            message = f"The model '{spec.id}' has no task '{task_name}'"
            if not tasks:
                raise APIError(404, f"{message}; use {', '.join(ENDPOINT_PATHS[e] for e in sorted(endpoints_of(spec.family)))}", param="task", code="task_not_found")
            raise APIError(404, f"{message}; its tasks are: {tasks}", param="task", code="task_not_found")
        return spec, task

    async def call(self, spec: ModelSpec, method: str, **kwargs: Any) -> tuple[Any, bool]:
        """Call a model deployment, waiting through a cold start if it has no replica; (result, was_cold).

        A model whose deployment failed (or is unhealthy with no running replica) answers 503 at
        once, and so does a request already waiting when that happens. A model whose replica died
        and is being replaced is waited for like a cold start. A request whose replica died under
        it is sent once more (inference is idempotent), with the cold-start timeout, so that it
        reaches the replacement. A full queue (`max_queued_requests`) is 503 with Retry-After,
        except for a request that arrived while the model had no replica: during a cold start every
        request waits in that queue for the first replica, so a rejected one is sent again every
        COLD_QUEUE_RETRY_S until it gets a place or its cold-start timeout passes (504), rather
        than shed. Such waiters are bounded by the ingress's own `max_ongoing_requests`.
        """
        running, state, reason = await self.states.describe(spec.deployment_name, fresh=False)
        if state == "unavailable":
            raise model_unavailable(spec.id, reason)
        cold = running == 0
        cold_timeout = spec.cold_start_timeout_s or self.config.cold_start_timeout_s
        timeout = cold_timeout if cold else self.config.request_timeout_s
        deadline = time.monotonic() + timeout
        resent = False
        while True:
            response = None
            try:
                response = getattr(self.handles[spec.id], method).remote(**kwargs)
                result = await self.wait(spec, response, deadline)
                if cold:  # the state polled while waiting says "starting": don't let listings show that
                    self.states.invalidate()
                return result, cold
            except TimeoutError:
                if response is not None:
                    response.cancel()
                what = f"answer within {timeout:g} s"
                if cold:  # say where the start-up stands now, e.g. pending: no node has the GPU it asks for
                    _, now = await self.states.get(spec.deployment_name)
                    what = f"start and answer within {timeout:g} s (it is {now}; GET /v1/models/{spec.id} says why)"
                raise APIError(
                    504,
                    f"The model '{spec.id}' did not {what}. Try again later.",
                    type="timeout_error",
                    code="model_timeout",
                    headers={"Retry-After": "10"},
                )
            except BackPressureError as error:
                if not cold and await self.replacing(spec):
                    # the queue is full because a replica died and its replacement is starting:
                    # waited out like a cold start (a full queue in front of running replicas is
                    # real overload, and is shed)
                    cold, timeout = True, cold_timeout
                    deadline = time.monotonic() + timeout
                if cold and time.monotonic() + COLD_QUEUE_RETRY_S < deadline:
                    await asyncio.sleep(COLD_QUEUE_RETRY_S)
                    continue
                raise APIError(
                    503,
                    f"The model '{spec.id}' is overloaded: its queue is full. Try again later.",
                    type="overloaded_error",
                    code="model_overloaded",
                    headers={"Retry-After": str(max(1, math.ceil(error.retry_after_s or 1)))},
                )
            except DeploymentUnavailableError:
                raise model_unavailable(spec.id, "its deployment failed")
            except REPLICA_LOST as error:
                # The replica died or became unreachable mid-request; Serve replaces it.
                logger.warning("model %s: replica lost during a request: %s", spec.id, type(error).__name__)
                self.replica_lost_at[spec.id] = time.monotonic()
                if not resent:
                    resent, cold, timeout = True, True, cold_timeout
                    deadline = time.monotonic() + timeout
                    self.states.invalidate()
                    continue
                raise model_unavailable(spec.id, "its replica stopped while handling the request", retry_after_s=5)
            except APIError:
                raise
            except Exception as error:
                api_error = find_api_error(error)
                if api_error is not None:
                    raise api_error
                logger.error("model %s failed: %s", spec.id, error)
                raise APIError(500, f"The model '{spec.id}' failed to process the request.", type="server_error")

    async def replacing(self, spec: ModelSpec) -> bool:
        """Whether the model is short of a replica that died: Serve says it has none running, or a
        request saw one die within REPLACEMENT_WINDOW_S (Serve's status lags the handle's router,
        which drops a dead replica at once and queues its requests for the replacement)."""
        if time.monotonic() - self.replica_lost_at.get(spec.id, -math.inf) < REPLACEMENT_WINDOW_S:
            return True
        # a read older than the health check that noticed the death would still count the dead replica
        running, state, _ = await self.states.describe(spec.deployment_name, max_age_s=ALIVE_CACHE_S)
        if running == 0:
            return state in ("starting", "pending")
        # Serve notices a dead replica at its next health check; Ray's actor table knows at once
        return await self.states.alive_replicas(spec.deployment_name) < running

    async def wait(self, spec: ModelSpec, response: Any, deadline: float) -> Any:
        """The response's result by `deadline`, re-reading the model's state meanwhile: 503 if it fails."""
        task = asyncio.ensure_future(response)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                done, _ = await asyncio.wait({task}, timeout=min(remaining, STATE_POLL_S))
                if task in done:
                    if task.cancelled():  # not by this request (that would have cancelled the wait itself)
                        raise ResponseCancelled(spec.id)
                    return task.result()
                _, state, reason = await self.states.describe(spec.deployment_name)
                if state == "unavailable":
                    raise model_unavailable(spec.id, reason)
        finally:
            if not task.done():
                task.cancel()

    async def image(self, url: str, param: str):
        return await load_image(url, self.config.images, param)

    # ----- routes -----

    @app.get("/health")
    async def health(self) -> dict[str, str]:
        """Liveness: the ingress answers. Says nothing about the models (see /health/ready)."""
        return {"status": "ok"}

    @app.get("/health/ready", response_model=Readiness, responses={503: {"model": Readiness}})
    async def ready(self):
        """Readiness: 200 once every live model has a running replica, 503 (with what is missing) until then."""
        waiting = {}
        for spec in self.specs.values():
            if spec.status != "live":
                continue
            replicas, state, reason = await self.states.describe(spec.deployment_name)
            if replicas < 1:
                waiting[spec.id] = f"{state}: {reason}" if reason else state
        body = Readiness(status="ready" if not waiting else "not_ready", waiting_for=waiting)
        return JSONResponse(body.model_dump(), status_code=200 if not waiting else 503)

    @app.get("/v1/models", response_model=ModelList)
    async def list_models(self) -> ModelList:
        demand = await self.demand.acounts()
        return ModelList(data=[await self.card(spec, demand) for spec in self.specs.values()])

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard)
    async def get_model(self, model_id: str) -> ModelCard:
        spec = self.specs.get(model_id)
        if spec is None:
            raise model_not_found(model_id)
        return await self.card(spec, await self.demand.acounts())

    @app.post("/v1/models/{model_id:path}/interest", response_model=InterestResponse)
    async def register_interest(self, model_id: str) -> InterestResponse:
        spec = self.specs.get(model_id)
        if spec is None:
            raise model_not_found(model_id)
        return InterestResponse(id=spec.id, demand=await self.demand.arecord(spec.id))

    async def card(self, spec: ModelSpec, demand: dict[str, int]) -> ModelCard:
        replicas, state, reason = await self.states.describe(spec.deployment_name)
        return ModelCard(
            id=spec.id,
            created=spec.created,
            owned_by=spec.owned_by or spec.id.split("/")[0],
            status=spec.status,
            family=spec.family,
            replicas=replicas,
            state=state,
            state_reason=reason,
            tasks=spec.tasks,
            endpoints=sorted(endpoints_of(spec.family)),
            price_per_1k_images=spec.price_per_1k_images,
            license=spec.license,
            parameters=spec.parameters,
            demand=demand.get(spec.id, 0),
        )

    @app.post("/v1/chat/completions", response_model=ChatCompletion)
    async def chat_completions(self, request: ChatCompletionRequest):
        spec = self.model(request.model, "chat")
        tokens_param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        # Caps are checked here, before an image is decoded or a model woken.
        spec.generation.check(request.token_limit, request.num_beams, tokens_param)
        prompt = chat_prompt(request)
        task, text = CHAT_TASKS[spec.family](prompt.text, "messages")
        image = await self.image(prompt.image_url, prompt.image_param)
        result, cold = await self.call(
            spec,
            "generate",
            image=image,
            task=task.name,
            text=text or None,
            max_new_tokens=request.token_limit,
            num_beams=request.num_beams,
            param_names={"text": "messages", "max_new_tokens": tokens_param},
        )
        usage = Usage(
            prompt_tokens=result["usage"]["prompt_tokens"],
            completion_tokens=result["usage"]["completion_tokens"],
            total_tokens=result["usage"]["prompt_tokens"] + result["usage"]["completion_tokens"],
            images=1,
        )
        completion = ChatCompletion(
            model=spec.id,
            choices=[ChatChoice(message=ChatMessageOut(content=result["text"]), finish_reason=result["finish_reason"])],
            usage=usage,
            vision=VisionResult(task=result["task"], results=result["results"]),
        )
        headers = {"x-cold-start": "true"} if cold else {}
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return StreamingResponse(
                chat_stream(completion, include_usage), media_type="text/event-stream", headers=headers
            )
        return JSONResponse(completion.model_dump(), headers=headers)

    @app.post("/v1/embeddings", response_model=EmbeddingResponse)
    async def embeddings(self, request: EmbeddingRequest):
        spec = self.model(request.model, "embeddings")
        if request.dimensions is not None:
            raise bad_request("dimensions is not supported: embeddings have the model's own size", param="dimensions")
        inputs = request.inputs
        if len(inputs) > self.config.max_inputs_per_request:
            raise bad_request(f"at most {self.config.max_inputs_per_request} inputs per request", param="input")
        params = ["input" if isinstance(request.input, str) else f"input[{i}]" for i in range(len(inputs))]
        if request.resolved_modality == "image":
            if len(inputs) > self.config.max_images_per_request:
                raise bad_request(f"at most {self.config.max_images_per_request} images per request", param="input")
            images = await asyncio.gather(*(self.image(url, p) for url, p in zip(inputs, params)))
            result, cold = await self.call(spec, "embed_images", images=list(images), max_num_patches=request.max_num_patches)
        else:
            if any(not text for text in inputs):
                raise bad_request("input must not contain empty strings", param="input")
            result, cold = await self.call(spec, "embed_texts", texts=inputs, params=params)
        vectors = np.asarray(result["embeddings"], dtype=np.float32)
        data = [
            Embedding(index=i, embedding=encode_vector(vector, request.encoding_format))
            for i, vector in enumerate(vectors)
        ]
        usage = EmbeddingUsage(prompt_tokens=result["tokens"], total_tokens=result["tokens"], images=result["images"])
        body = EmbeddingResponse(data=data, model=spec.id, usage=usage)
        return JSONResponse(body.model_dump(), headers={"x-cold-start": "true"} if cold else {})

    @app.post("/v1/classifications", response_model=ClassificationResponse)
    async def classifications(self, request: ClassificationRequest):
        spec = self.model(request.model, "classifications")
        if len(request.labels) > self.config.max_labels:
            raise bad_request(f"at most {self.config.max_labels} labels per request", param="labels")
        image = await self.image(request.image, "image")
        result, cold = await self.call(
            spec,
            "classify",
            image=image,
            labels=request.labels,
            template=request.prompt_template,
            max_num_patches=request.max_num_patches,
        )
        body = ClassificationResponse(
            model=spec.id,
            data=[LabelScore(**entry) for entry in result["labels"]],
            usage=Usage(prompt_tokens=result["tokens"], total_tokens=result["tokens"], images=1),
        )
        return JSONResponse(body.model_dump(), headers={"x-cold-start": "true"} if cold else {})

    @app.post("/v1/scores", response_model=ScoreResponse)
    async def scores(self, request: ScoreRequest):
        spec = self.model(request.model, "scores")
        if len(request.images) > self.config.max_images_per_request:
            raise bad_request(f"at most {self.config.max_images_per_request} images per request", param="images")
        if len(request.texts) > self.config.max_labels:
            raise bad_request(f"at most {self.config.max_labels} texts per request", param="texts")
        images = await asyncio.gather(*(self.image(url, f"images[{i}]") for i, url in enumerate(request.images)))
        result, cold = await self.call(
            spec, "score", images=list(images), texts=request.texts, max_num_patches=request.max_num_patches
        )
        usage = Usage(prompt_tokens=result["tokens"], total_tokens=result["tokens"], images=result["images"])
        body = ScoreResponse(model=spec.id, data=result["scores"], usage=usage)
        return JSONResponse(body.model_dump(), headers={"x-cold-start": "true"} if cold else {})

    @app.post("/v1/vision/{model_name}/{task_name}", response_model=VisionTaskResponse)
    async def vision_task(self, model_name: str, task_name: str, request: VisionTaskRequest):
        spec, task = self.task(model_name, task_name)
        text = (request.text_input or "").strip()
        if task.input == "text" and not text:
            raise bad_request(f"the task '{task.name}' needs text_input", param="text_input")
        if task.input == "region" and request.region is None:
            raise bad_request(f"the task '{task.name}' needs a region {{x1, y1, x2, y2}} in pixels", param="region")
        if task.input in ("none", "region") and text:
            raise bad_request(f"the task '{task.name}' takes no text_input", param="text_input")
        if task.input != "region" and request.region is not None:
            raise bad_request(f"the task '{task.name}' takes no region", param="region")
        spec.generation.check(request.max_tokens, request.num_beams)
        image = await self.image(request.image_url, "image_url")
        arguments: dict[str, Any] = {}
        if request.region is not None:
            x1, y1, x2, y2 = checked_region(request.region, image.size)
            arguments["region"] = {"x1": x1, "y1": y1, "x2": x2, "y2": y2}
        result, cold = await self.call(
            spec,
            "generate",
            image=image,
            task=task.name,
            text=text or None,
            max_new_tokens=request.max_tokens,
            num_beams=request.num_beams,
            param_names={"text": "text_input", "max_new_tokens": "max_tokens"},
            **arguments,
        )
        drawn = await asyncio.to_thread(annotate, image, result["results"]) if request.include_image else None
        body = VisionTaskResponse(results=result["results"], image=drawn)
        return JSONResponse(body.model_dump(exclude_none=True), headers={"x-cold-start": "true"} if cold else {})
