"""fal.ai's queue: `/fal/queue/...`, what `fal_client.submit/subscribe/status/result/cancel` call with
`FAL_QUEUE_RUN_HOST=<host>:<port>/fal/queue` (serve/fal/protocol.py has the wire details).

- `POST /fal/queue/{owner}/{model-name}/{task}[?fal_webhook=URL]`: a job in the store, answered at once
  with its request id and its status/response/cancel URLs (from the request's scheme and host, or
  `gateway.fal.public_url`). The job runs in an ingress replica's runner (serve/fal/runner.py).
- `GET .../requests/{id}/status[?logs=1]`, `GET .../requests/{id}/status/stream` (server-sent events,
  ending after COMPLETED), `GET .../requests/{id}` (the result, or the error it ended with), and
  `PUT .../requests/{id}/cancel`.

A request id is only found with the key that submitted it (someone else's is 404, as an unknown one).
Errors are fal-shaped (serve/fal/errors.py); nothing here answers 5xx for bad input. Not in
/openapi.json: the contract is fal's.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve

from serve.accounts import store_unavailable
from serve.context import CallerContext
from serve.errors import APIError
from serve.fal.apps import app_model
from serve.fal.errors import InvalidBody, fal_error_response
from serve.fal.protocol import (
    LOGS_PARAM,
    QUEUE_PREFIX,
    REQUEST_ID_HEADER,
    SSE_KEEPALIVE,
    SSE_KEEPALIVE_S,
    SSE_MEDIA_TYPE,
    WEBHOOK_PARAM,
    CancelAnswer,
    CompletedStatus,
    ErrorLocation,
    InProgressStatus,
    Log,
    Metrics,
    ModelError,
    QueuedStatus,
    QueueSubmitted,
    QueueURLs,
    sse_event,
    wants_logs,
)
from serve.fal.webhooks import WebhookRefused, check_url
from serve.routers.common import caller, service
from serve.routers.fal import app_request, with_id
from serve.service import GatewayService
from serve.store import JobRecord, StoreError
from serve.store.records import utcnow

router = APIRouter(prefix=QUEUE_PREFIX, include_in_schema=False)

STREAM_POLL_S = 0.25
REQUEST_PATH = "/{owner}/{model_name}/requests/{request_id}"


def runner() -> Any:
    """The JobRunner of this ingress replica (None outside one)."""
    return getattr(serve.get_replica_context().servable_object, "jobs", None)


def queue_base(request: Request, gateway: GatewayService) -> str:
    public = gateway.config.fal.public_url
    return public.rstrip("/") if public else str(request.base_url).rstrip("/") + QUEUE_PREFIX


def not_found(request_id: str) -> APIError:
    return APIError(
        404,
        f"The request '{request_id}' was not found (unknown, submitted with another key, or forgotten).",
        type="not_found_error",
        code="request_not_found",
    )


def webhook_refused(reason: str, request_id: str) -> JSONResponse:
    error = APIError(400, reason, param=WEBHOOK_PARAM, code="invalid_webhook_url")
    body = ModelError(detail=[ErrorLocation(loc=["query", WEBHOOK_PARAM], msg=reason, type="invalid_webhook_url")],
                      error=error.body()["error"])  # fmt: skip
    return JSONResponse(body.model_dump(), status_code=422, headers={REQUEST_ID_HEADER: request_id})


@router.post("/{owner}/{model_name}/{task_name}")
async def submit(
    owner: str,
    model_name: str,
    task_name: str,
    request: Request,
    context: CallerContext = Depends(caller),
    gateway: GatewayService = Depends(service),
) -> Response:
    try:
        spec, body = await app_request(gateway, owner, model_name, task_name, request)
        webhook = request.query_params.get(WEBHOOK_PARAM)
        if webhook is not None:
            if gateway.config.fal.webhook_secret() is None:
                return webhook_refused(
                    f"This gateway has no webhook signing secret (${gateway.config.fal.webhook_secret_env}),"
                    " so it sends no webhooks: poll the status URL instead.",
                    context.request_id,
                )
            try:
                await check_url(webhook, gateway.config.images.host_policy())
            except WebhookRefused as refused:
                return webhook_refused(str(refused), context.request_id)
        app_id = f"{owner}/{model_name}/{task_name}"
        request_body = body.model_dump(mode="json", exclude_unset=True)
        try:
            job = await gateway.store.submit_job(
                app_id, spec.deployment_name, task_name, context.key_id, request_body, webhook
            )
            position = await gateway.store.queue_position(job)
        except StoreError:
            raise store_unavailable("the request cannot be queued") from None
    except (APIError, InvalidBody) as error:
        return fal_error_response(error, context.request_id)
    if (jobs := runner()) is not None:
        jobs.wake()
    urls = QueueURLs.of(queue_base(request, gateway), owner, model_name, job.id)
    answer = QueueSubmitted(request_id=job.id, gateway_request_id=job.id, queue_position=position, **urls.model_dump())
    return with_id(JSONResponse(answer.model_dump()), job.id)


async def find(gateway: GatewayService, owner: str, model_name: str, request_id: str, context: CallerContext) -> JobRecord:
    """The caller's job under this app; 404 (unknown app or request), 410 (result expired), 503."""
    spec = app_model(gateway.by_name, owner, model_name)
    try:
        job = await gateway.store.get_job(request_id, context.key_id)
    except StoreError:
        raise store_unavailable("the request cannot be read") from None
    if job is None or job.model != spec.deployment_name:
        raise not_found(request_id)
    # expiry is exact here; the runners' upkeep purges the bodies later (serve/store/jobs.py)
    if job.expired or (job.result_expires_at is not None and job.result_expires_at <= utcnow()):
        assert job.result_expires_at is not None
        raise APIError(
            410,
            f"The result of request '{request_id}' expired at {job.result_expires_at.isoformat()}: results are"
            f" kept for {gateway.config.fal.result_ttl_s:g} s (gateway.fal.result_ttl_s).",
            type="not_found_error",
            code="result_expired",
        )
    return job


async def status_of(gateway: GatewayService, job: JobRecord, urls: QueueURLs, logs: bool) -> Any:
    common = {"request_id": job.id, **urls.model_dump()}
    lines = [Log(message=l["message"], level=l.get("level", "INFO"), timestamp=l["timestamp"]) for l in job.logs]
    if job.status == "QUEUED":
        return QueuedStatus(queue_position=await gateway.store.queue_position(job), **common)
    if job.status == "IN_PROGRESS":
        return InProgressStatus(logs=lines if logs else None, **common)
    error = job.error or {}
    return CompletedStatus(
        logs=lines if logs else None,
        metrics=Metrics(inference_time=job.inference_time),
        error=error.get("message"),
        error_type=error.get("error_type"),
        **common,
    )


@router.get(REQUEST_PATH + "/status")
async def status(
    owner: str,
    model_name: str,
    request_id: str,
    request: Request,
    context: CallerContext = Depends(caller),
    gateway: GatewayService = Depends(service),
) -> Response:
    try:
        job = await find(gateway, owner, model_name, request_id, context)
        urls = QueueURLs.of(queue_base(request, gateway), owner, model_name, job.id)
        body = await status_of(gateway, job, urls, wants_logs(request.query_params.get(LOGS_PARAM)))
    except StoreError:
        return fal_error_response(store_unavailable("the request cannot be read"), request_id)
    except APIError as error:
        return fal_error_response(error, request_id)
    code = 200 if job.ended else 202  # fal: 202 while it has not finished
    return with_id(Response(body.model_dump_json(), status_code=code, media_type="application/json"), job.id)


@router.get(REQUEST_PATH + "/status/stream")
async def status_stream(
    owner: str,
    model_name: str,
    request_id: str,
    request: Request,
    context: CallerContext = Depends(caller),
    gateway: GatewayService = Depends(service),
) -> Response:
    try:
        job = await find(gateway, owner, model_name, request_id, context)
    except APIError as error:
        return fal_error_response(error, request_id)
    urls = QueueURLs.of(queue_base(request, gateway), owner, model_name, job.id)
    logs = wants_logs(request.query_params.get(LOGS_PARAM))

    async def events():
        last, sent_at, current = None, time.monotonic(), job
        while True:
            try:
                event = sse_event(await status_of(gateway, current, urls, logs))
            except StoreError:
                return
            if event != last:
                yield event
                last, sent_at = event, time.monotonic()
            elif time.monotonic() - sent_at >= SSE_KEEPALIVE_S:
                yield SSE_KEEPALIVE
                sent_at = time.monotonic()
            if current.ended:
                return
            await asyncio.sleep(STREAM_POLL_S)
            try:
                current = await gateway.store.get_job(job.id, context.key_id)
            except StoreError:
                continue
            if current is None or current.expired:
                return

    headers = {REQUEST_ID_HEADER: job.id, "cache-control": "no-cache", "x-accel-buffering": "no"}
    return StreamingResponse(events(), media_type=SSE_MEDIA_TYPE, headers=headers)


@router.get(REQUEST_PATH)
async def result(
    owner: str,
    model_name: str,
    request_id: str,
    context: CallerContext = Depends(caller),
    gateway: GatewayService = Depends(service),
) -> Response:
    try:
        job = await find(gateway, owner, model_name, request_id, context)
    except APIError as error:
        return fal_error_response(error, request_id)
    if job.status == "COMPLETED":
        return with_id(JSONResponse(job.result), job.id)
    if not job.ended:
        error = APIError(400, "Request is still in progress", code="request_in_progress")
        return fal_error_response(error, job.id)
    failure = job.error or {}
    body = failure.get("body") or {"detail": failure.get("message"), "error_type": failure.get("error_type")}
    response = JSONResponse(body, status_code=int(failure.get("status", 500)))
    if failure.get("error_type"):
        response.headers["x-fal-error-type"] = str(failure["error_type"])
    return with_id(response, job.id)


@router.put(REQUEST_PATH + "/cancel")
async def cancel(
    owner: str,
    model_name: str,
    request_id: str,
    context: CallerContext = Depends(caller),
    gateway: GatewayService = Depends(service),
) -> Response:
    try:
        await find(gateway, owner, model_name, request_id, context)
        outcome = await gateway.store.cancel_job(request_id, context.key_id, gateway.config.fal.result_ttl_s)
    except StoreError:
        return fal_error_response(store_unavailable("the request cannot be cancelled"), request_id)
    except APIError as error:
        if error.status != 404:
            return fal_error_response(error, request_id)
        outcome = "NOT_FOUND"
    detail, code = {
        "CANCELLATION_REQUESTED": ("The request was cancelled: it will not run.", 202),
        "ALREADY_COMPLETED": ("The request has already started or ended, so it cannot be cancelled.", 400),
        "NOT_FOUND": (f"The request '{request_id}' was not found.", 404),
    }[outcome]
    answer = CancelAnswer(status=outcome, detail=detail)
    return with_id(JSONResponse(answer.model_dump(), status_code=code), request_id)


# Last: anything else under /fal/queue/ is fal-shaped too.
@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
async def unknown(path: str, request: Request, context: CallerContext = Depends(caller)) -> JSONResponse:
    parts = path.strip("/").split("/")
    if len(parts) == 3 and request.method != "POST":
        error = APIError(405, "fal apps are submitted with POST.", code="method_not_allowed", headers={"allow": "POST"})
    else:
        error = APIError(
            404,
            f"'{QUEUE_PREFIX}/{path}' is not a queue endpoint of this gateway: POST {QUEUE_PREFIX}/{{owner}}/"
            f"{{model-name}}/{{task}}, then GET/PUT the URLs it answers with.",
            type="not_found_error",
            code="not_found",
        )
    return fal_error_response(error, context.request_id)
