"""fal.ai's wire protocol as its clients speak it, read from their source: the Python `fal_client`
1.0.x (`fal_client/client.py`, `auth.py`, `_headers.py`) and, for the status stream that the Python
client does not use, the JavaScript `@fal-ai/client` (`queue.ts`, `streaming.ts`, `types/common.ts`).

**Hosts.** `fal_client` reads `FAL_RUN_HOST` (default `fal.run`) and `FAL_QUEUE_RUN_HOST` (default
`queue.{FAL_RUN_HOST}`) once, when it is imported, and builds `https://{host}/...`: always https,
so the gateway serves these over TLS. A host may carry a path, which is how the gateway's surface is
reached: `FAL_RUN_HOST=gateway:8443/fal`, `FAL_QUEUE_RUN_HOST=gateway:8443/fal/queue`.

**Calls** (`app_id` = `{owner}/{alias}[/{path}]`; here `{owner}/{model-name}/{task}`):

- run: `POST https://{FAL_RUN_HOST}/{app_id}` with the arguments as the JSON body; the answer's JSON
  body is the result, returned as it is (`RUN_PATH`).
- submit: `POST https://{FAL_QUEUE_RUN_HOST}/{app_id}[?fal_webhook=<url>]`; the client reads
  `request_id`, `response_url`, `status_url`, `cancel_url` (`QueueSubmitted`) and from then on only
  follows those three URLs, whatever host they name.
- `fal_client.status/result/cancel(app_id, request_id)` build the same URLs without a submit answer,
  from the app id WITHOUT its path: `https://{FAL_QUEUE_RUN_HOST}/{owner}/{alias}/requests/{id}`
  (+ `/status`, `/cancel`). So the queue answers under `{owner}/{model-name}/requests/{id}`, and
  the submit answer's URLs have the same form (`QueueURLs`).
- status: `GET {status_url}?logs=true|false` (the JS client sends `1|0`), polled every 0.1 s
  until `COMPLETED`, then `GET {response_url}` for the result. See `QueueStatus`.
- status stream (JS client only): `GET {status_url}/stream?logs=1|0`, `Accept: text/event-stream`;
  each event is `data: <a QueueStatus as JSON>`; the client keeps the last event and takes the end
  of the stream as the end, so the last event is the `COMPLETED` one and the server then closes.
  The client gives up after 15 s without a chunk: send an event (or a `:` comment) more often.
- cancel: `PUT {cancel_url}`; fal answers 202 `{"status": "CANCELLATION_REQUESTED"}` for a request
  that has not started (it never runs), 400 `{"status": "ALREADY_COMPLETED"}` for one that has, and
  404 for an unknown id (`CancelAnswer`). `fal_client.cancel` raises on anything but 2xx.
- webhook: `?fal_webhook=<url>` on submit; when the request ends fal POSTs `WebhookPayload` to it
  (retried 10 times over 2 hours) and signs it (`X-Fal-Webhook-Signature`, ED25519 keys published
  as a JWKS); the gateway signs with its own configured secret instead (serve/fal/webhooks.py).

**Auth.** `Authorization: Key <FAL_KEY>` (or `Key <FAL_KEY_ID>:<FAL_KEY_SECRET>`); with neither set
the client sends `Bearer <token>` from `fal auth login` (~/.fal), refreshing it at auth.fal.ai.
With `FAL_KEY` set it contacts nothing but the hosts above. `User-Agent: fal-client/<v> (python)`.

**Errors.** Any status >= 400 raises `FalClientHTTPError(message, status_code, response_headers,
response, error_type)`: `message` is the body's `detail` when the body is a JSON object (which may
be a list: validation errors), else the whole body text; `error_type` is the body's `error_type`,
else the `X-Fal-Error-Type` header. fal answers input errors 422 with `detail` as a list of
`{loc, msg, type}` (`ModelError`) and other failures with `detail` as a string and a machine-readable
`error_type` (`RequestError`, `ERROR_TYPES`). The JS client turns a 422 into a `ValidationError`
whose field errors come from the `detail` list.

**Retries.** `fal_client` resends a request up to 10 times with backoff on 408, 409 and 429, on
transport errors and read timeouts, and on 502/503/504 only when the answer has no
`x-fal-request-id` header and its body mentions "nginx" (a proxy's error page). So every answer of
the gateway's fal surface carries `x-fal-request-id`: its own 503/504 are final, as on fal.

**Uploads.** `run`/`submit`/`subscribe` never upload anything: arguments are sent as given. Only the
explicit `fal_client.upload*` helpers do, to fal's storage (`rest.fal.ai`, `v3.fal.media`), hosts
that `FAL_RUN_HOST` does not change. The gateway offers no storage: callers send data URLs
(`fal_client.encode_image` / `encode_file` make them locally, no network) or http(s) URLs.

Not used by the gateway: `X-Fal-Request-Timeout` (start_timeout: a time-to-start deadline, after
which fal answers 504 with `X-Fal-Request-Timeout-Type: user`), `X-Fal-Runner-Hint`,
`X-Fal-Queue-Priority` (`normal` | `low`), and the realtime/websocket and `/stream` endpoints.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# ----- paths -----

RUN_PREFIX = "/fal"
"""The synchronous surface: `FAL_RUN_HOST=<host>:<port>/fal`."""
QUEUE_PREFIX = "/fal/queue"
"""The queue (serve/routers/fal_queue.py): `FAL_QUEUE_RUN_HOST=<host>:<port>/fal/queue`."""
RUN_PATH = RUN_PREFIX + "/{owner}/{model_name}/{task_name}"

# ----- headers and query parameters -----

REQUEST_ID_HEADER = "x-fal-request-id"
"""On every answer: tells fal_client the answer is the server's own (no resend of a 503/504)."""
ERROR_TYPE_HEADER = "x-fal-error-type"
REQUEST_TIMEOUT_HEADER = "x-fal-request-timeout"
REQUEST_TIMEOUT_TYPE_HEADER = "x-fal-request-timeout-type"
QUEUE_PRIORITY_HEADER = "x-fal-queue-priority"
RUNNER_HINT_HEADER = "x-fal-runner-hint"
WEBHOOK_PARAM = "fal_webhook"
LOGS_PARAM = "logs"
"""`?logs=true|false` from fal_client (httpx writes booleans so), `?logs=1|0` from the JS client."""


def wants_logs(value: str | None) -> bool:
    """The `logs` query parameter as the clients send it."""
    return (value or "").strip().lower() in ("1", "true", "yes")


# ----- errors -----

ERROR_TYPES = {
    "request_timeout": 504,
    "startup_timeout": 504,
    "runner_scheduling_failure": 503,
    "runner_connection_timeout": 503,
    "runner_disconnected": 503,
    "runner_connection_refused": 503,
    "runner_connection_error": 503,
    "runner_incomplete_response": 502,
    "runner_server_error": 500,
    "client_disconnected": 499,
    "client_cancelled": 499,
    "bad_request": 400,
    "internal_error": 500,
}
"""fal's request error types, with the status fal typically answers them with."""


class ErrorLocation(BaseModel):
    """One input error, as FastAPI/pydantic and fal's model errors write it."""

    loc: list[str | int] = Field(description='where, e.g. ["body", "image_url"]')
    msg: str
    type: str = Field(description="a machine-readable kind, e.g. missing, value_error, or the gateway's code")


class ModelError(BaseModel):
    """422: the input was refused. fal_client's message is this list; the JS client's field errors."""

    detail: list[ErrorLocation]
    error: dict[str, Any] | None = Field(None, description="the gateway's own error envelope, for its clients")


class RequestError(BaseModel):
    """Any other failure: `detail` is fal_client's message, `error_type` its `error_type`."""

    detail: str
    error_type: str | None = None
    error: dict[str, Any] | None = Field(None, description="the gateway's own error envelope, for its clients")


# ----- the queue -----


class QueueURLs(BaseModel):
    """The three URLs a submit answer (and every status body) carries; clients follow them as given."""

    response_url: str
    status_url: str
    cancel_url: str

    @classmethod
    def of(cls, queue_base: str, owner: str, model_name: str, request_id: str) -> QueueURLs:
        """`queue_base` is `https://<host>:<port>/fal/queue`; the app id's task is not part of them
        (fal_client builds the same URLs from `{owner}/{alias}` alone)."""
        response = f"{queue_base.rstrip('/')}/{owner}/{model_name}/requests/{request_id}"
        return cls(response_url=response, status_url=f"{response}/status", cancel_url=f"{response}/cancel")


class QueueSubmitted(QueueURLs):
    """The answer to a submit (200). fal_client reads `request_id` and the URLs; the JS client types
    it as an `IN_QUEUE` status. fal adds `gateway_request_id` (the last attempt's id)."""

    status: Literal["IN_QUEUE"] = "IN_QUEUE"
    request_id: str
    gateway_request_id: str | None = None
    queue_position: int = Field(ge=0)


class Log(BaseModel):
    """One log line of a request, in status bodies when `logs` is asked for."""

    message: str
    level: Literal["STDERR", "STDOUT", "ERROR", "INFO", "WARN", "DEBUG"] = "INFO"
    source: Literal["USER"] = "USER"
    timestamp: str = Field(description="ISO 8601")


class Metrics(BaseModel):
    inference_time: float | None = Field(None, description="seconds the model took")


class QueuedStatus(QueueURLs):
    """`IN_QUEUE`: `queue_position` is required (fal_client reads it without a default): the number
    of requests ahead of this one, 0-based."""

    status: Literal["IN_QUEUE"] = "IN_QUEUE"
    request_id: str
    queue_position: int = Field(ge=0)


class InProgressStatus(QueueURLs):
    """`IN_PROGRESS`: the `logs` key must be present (fal_client reads `data["logs"]`), null when
    logs were not asked for: serialise without dropping None."""

    status: Literal["IN_PROGRESS"] = "IN_PROGRESS"
    request_id: str
    logs: list[Log] | None


class CompletedStatus(QueueURLs):
    """`COMPLETED`, successful or not: `logs` must be present as above; `metrics` is optional to
    fal_client (default {}); `error` / `error_type` say how a failed or cancelled request ended."""

    status: Literal["COMPLETED"] = "COMPLETED"
    request_id: str
    logs: list[Log] | None
    metrics: Metrics = Field(default_factory=Metrics)
    error: str | None = None
    error_type: str | None = None


QueueStatus = QueuedStatus | InProgressStatus | CompletedStatus
"""A status body (GET status_url) and a status stream event. Any other `status` value makes
fal_client raise ValueError."""

SSE_MEDIA_TYPE = "text/event-stream"


def sse_event(status: BaseModel) -> str:
    """One status stream event: `data: <json>` and a blank line (None kept: `logs` must be present)."""
    return f"data: {status.model_dump_json()}\n\n"


SSE_KEEPALIVE = ": keep-alive\n\n"
"""A comment line: the JS client drops a stream after 15 s without a chunk."""
SSE_KEEPALIVE_S = 5.0


class CancelAnswer(BaseModel):
    """PUT cancel_url: 202 CANCELLATION_REQUESTED (the request will not run), 400 ALREADY_COMPLETED
    (it has started or ended: a running request is not stopped), 404 NOT_FOUND. On a refusal
    fal_client's message is the whole body (there is no `detail`), so the gateway adds one."""

    model_config = ConfigDict(extra="allow")

    status: Literal["CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND"]
    detail: str | None = None


class WebhookPayload(BaseModel):
    """POSTed to `fal_webhook` when a queued request ends. On `ERROR`, `error` is a message such as
    "Invalid status code: 422" and `payload` the error body (e.g. a `ModelError`); a payload that
    cannot be serialised is null with `payload_error` saying why."""

    request_id: str
    gateway_request_id: str
    status: Literal["OK", "ERROR"]
    payload: Any = None
    error: str | None = None
    payload_error: str | None = None
