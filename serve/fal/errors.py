"""The gateway's errors in fal's shapes (serve/fal/protocol.py), with its own envelope beside them.

- Input errors (a 400 naming a body field, or a body that is not a valid request) answer 422 with
  `detail` as a list of `{loc, msg, type}`, as fal's models and FastAPI do: fal_client's message is
  that list, the JS client's `ValidationError` reads its field errors from it.
- Everything else keeps its status and answers `{"detail": message, "error_type": ...}` with the
  same type in `X-Fal-Error-Type`: fal's request error type where one fits (504 `request_timeout`,
  503 `runner_scheduling_failure`, 500 `internal_error`, a 400 without a field `bad_request`), else
  the gateway's error code (e.g. `app_not_found`, `task_not_found`, `too_large`).

Each body also holds `error`, the OpenAI-style envelope every other route answers with, so a
client of the gateway reads the same `param` and `code` here. Each answer carries
`x-fal-request-id`, which tells fal_client that a 503/504 is the server's answer, not a proxy's
(it resends only those). `parse_body` reads a body as the routes' pydantic request, so that a
body that is not one is refused here in fal's shape rather than by FastAPI in the envelope alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, TypeVar

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from serve.errors import APIError
from serve.fal.protocol import ERROR_TYPE_HEADER, REQUEST_ID_HEADER, ErrorLocation, ModelError, RequestError
from serve.validation import validation_error

T = TypeVar("T", bound=BaseModel)

_FAL_TYPES = {500: "internal_error", 503: "runner_scheduling_failure", 504: "request_timeout"}
_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def location(param: str) -> list[str | int]:
    """`region.x1` -> ["body", "region", "x1"]; `texts[2]` -> ["body", "texts", 2]."""
    return ["body", *(int(index) if index else name for name, index in _STEP.findall(param))]


def error_type(error: APIError) -> str | None:
    if error.status in _FAL_TYPES:
        return _FAL_TYPES[error.status]
    if error.status == 400 and error.param is None:
        return "bad_request"
    return error.code


def fal_error(error: APIError, request_id: str) -> JSONResponse:
    """An APIError (raised by the service or here) as fal's clients read errors."""
    headers = {**error.headers, REQUEST_ID_HEADER: request_id}
    if error.status == 400 and error.param is not None:
        item = ErrorLocation(loc=location(error.param), msg=error.message, type=error.code or "value_error")
        body = ModelError(detail=[item], error=error.body()["error"])
        return JSONResponse(body.model_dump(), status_code=422, headers=headers)
    kind = error_type(error)
    if kind is not None:
        headers[ERROR_TYPE_HEADER] = kind
    body = RequestError(detail=error.message, error_type=kind, error=error.body()["error"])
    return JSONResponse(body.model_dump(), status_code=error.status, headers=headers)


def fal_validation_error(errors: Sequence[dict[str, Any]], body: Any, request_id: str) -> JSONResponse:
    """422 for a body that is not valid JSON or not a valid request: every pydantic error, as FastAPI
    lists them (`loc` from "body"; no `input` or `ctx`, which may echo megabytes of image data)."""
    envelope = validation_error(errors, body)
    detail = [
        ErrorLocation(
            loc=["body", *(step for step in error.get("loc", ()) if step != "body")],
            msg=str(error.get("msg") or "invalid value"),
            type=str(error.get("type") or "value_error"),
        )
        for error in errors
    ] or [ErrorLocation(loc=["body"], msg=envelope.message, type="value_error")]
    content = ModelError(detail=detail, error=envelope.body()["error"])
    return JSONResponse(content.model_dump(), status_code=422, headers={REQUEST_ID_HEADER: request_id})


class InvalidBody(Exception):
    """A body that is not JSON, or not a valid request: pydantic's errors and the JSON it held."""

    def __init__(self, errors: Sequence[dict[str, Any]], body: Any = None) -> None:
        super().__init__("invalid request body")
        self.errors = list(errors)
        self.body = body


def parse_body(raw: bytes, model: type[T]) -> T:
    """A request body as `model`; InvalidBody (-> 422) when it is not JSON or not such a request."""
    try:
        payload = json.loads(raw) if raw.strip() else None
    except ValueError as error:  # JSONDecodeError, or bytes that are not UTF-8
        reason = getattr(error, "msg", None) or "not UTF-8 text"
        raise InvalidBody([{"type": "json_invalid", "loc": (), "msg": "JSON decode error", "ctx": {"error": reason}}])
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        raise InvalidBody(error.errors(include_url=False, include_input=False, include_context=False), payload)


def fal_error_response(error: APIError | InvalidBody, request_id: str) -> JSONResponse:
    if isinstance(error, InvalidBody):
        return fal_validation_error(error.errors, error.body, request_id)
    return fal_error(error, request_id)
