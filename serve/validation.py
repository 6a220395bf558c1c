"""Turn FastAPI/pydantic validation errors into one OpenAI-style 400 naming the bad `param`; and
make the OpenAPI description say what the gateway really answers.

Pydantic's error locations name union branches and discriminator tags beside real fields
(`messages.0.content.list[tagged-union[TextPart,ImagePart]].0.image_url.image_url.url`). The
param is rebuilt by walking the location through the JSON the client sent, keeping only the
steps that exist there (`messages[0].content[0].image_url.url`); of several errors the one that
reaches deepest into the client's JSON is reported, since it names the branch the client meant.

`document_error_envelope` post-processes FastAPI's OpenAPI schema so that clients generated from it
and schema-driven fuzzers see the real contract: every status an operation can answer (from the
`OPERATIONS` table and the front door's rules), each with the error envelope, and the request
constraints the gateway enforces, with the caps of the running configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
import copy
from dataclasses import asdict, dataclass
from typing import Any

from serve.auth import OPEN_PATHS
from serve.config import GatewayConfig
from serve.errors import APIError, bad_request
from serve.protocol import DATA_IMAGE_URL_PATTERN, IMAGE_URL_PATTERN

_SECTIONS = ("body", "path", "query", "header", "cookie")


def validation_error(errors: Sequence[dict[str, Any]], body: Any = None) -> APIError:
    """The 400 for a list of pydantic errors about a request whose JSON body was `body`."""
    if not errors:
        return bad_request("The request is not valid.")
    for error in errors:
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error") or "it could not be parsed"
            return bad_request(f"The request body is not valid JSON: {reason}.", code="invalid_json")
    best, best_depth = None, -1
    for error in errors:
        param, depth = _param(tuple(error.get("loc", ())), body)
        if depth > best_depth:
            best, best_depth = (param, error), depth
    param, error = best
    message = str(error.get("msg") or "invalid value")
    return bad_request(f"{param}: {message}" if param else message, param=param)


def _param(loc: tuple[Any, ...], body: Any) -> tuple[str | None, int]:
    """(param path, how many of its steps exist in the client's JSON)."""
    section = loc[0] if loc and loc[0] in _SECTIONS else None
    steps = loc[1:] if section else loc
    if section and section != "body":
        return (".".join(str(s) for s in steps) or None), len(steps)
    parts: list[str] = []
    depth = 0
    current = body
    for index, step in enumerate(steps):
        last = index == len(steps) - 1
        if isinstance(current, dict) and isinstance(step, str) and step in current:
            parts.append(f".{step}")
            current = current[step]
            depth += 1
        elif isinstance(current, list) and isinstance(step, int) and 0 <= step < len(current):
            parts.append(f"[{step}]")
            current = current[step]
            depth += 1
        elif last and isinstance(current, dict) and isinstance(step, str):
            parts.append(f".{step}")  # a missing field
        # else: a union branch or discriminator tag, not a place in the client's JSON
    return ("".join(parts).lstrip(".") or None), depth


# ----- the API description (/openapi.json) -----


@dataclass(frozen=True)
class ApiSettings:
    """The parts of a gateway's configuration its API description states: list caps, body and image
    caps, whether image URLs are fetched, and whether auth and rate limits are on."""

    max_labels: int
    max_images_per_request: int
    max_inputs_per_request: int
    max_body_bytes: int
    max_image_bytes: int
    max_image_pixels: int
    allow_http: bool
    auth: bool
    rate_limit: bool

    @classmethod
    def of(cls, config: GatewayConfig | None = None) -> ApiSettings:
        """The settings of `config`, or of the default configuration when it is None."""
        config = config if config is not None else GatewayConfig()
        return cls(
            max_labels=config.max_labels,
            max_images_per_request=config.max_images_per_request,
            max_inputs_per_request=config.max_inputs_per_request,
            max_body_bytes=config.max_body_bytes,
            max_image_bytes=config.images.max_bytes,
            max_image_pixels=config.images.max_pixels,
            allow_http=config.images.allow_http,
            auth=config.auth.enabled,
            rate_limit=config.rate_limit.enabled,
        )


@dataclass(frozen=True)
class Answer:
    """An error status as the API description states it: what it means (`{setting}` placeholders are
    filled from ApiSettings) and the headers that come with it."""

    description: str
    headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Operation:
    """What one operation answers besides success (body cap, auth and rate limit are added by
    `route_answers`), and whether its success may say it waited for a cold start or be a stream."""

    errors: dict[int, Answer]
    calls_model: bool = False
    streams: bool = False


INVALID = Answer(
    "Invalid request: a field fails validation or a server-side check (a cap, the model's endpoints, an image"
    " that cannot be loaded); `param` names the offending field"
)
UNKNOWN_MODEL = Answer("No model has this id (code model_not_found); GET /v1/models lists them")
UNKNOWN_MODEL_OR_TASK = Answer(
    "No model has this name (model_not_found), or the model has no such task (task_not_found)"
)
BODY_TOO_LARGE = Answer("The request body is larger than {max_body_bytes} bytes (code request_too_large)")
IMAGE_TOO_LARGE = Answer(
    "The request body is larger than {max_body_bytes} bytes (request_too_large), or an image is larger than"
    " {max_image_bytes} bytes or {max_image_pixels} pixels (too_large)"
)
UNAUTHORIZED = Answer(
    "Missing or invalid API key: send it as `Authorization: Bearer <key>` (invalid_api_key)", ("WWW-Authenticate",)
)
RATE_LIMITED = Answer("This caller's rate limit is reached (rate_limit_exceeded)", ("Retry-After",))
QUOTA = Answer("The API key's budget is used up (insufficient_quota)")
RATE_LIMITED_OR_QUOTA = Answer(
    "This caller's rate limit is reached (rate_limit_exceeded), or the API key's budget is used up"
    " (insufficient_quota)",
    ("Retry-After",),
)
SERVER_ERROR = Answer("The server failed to handle the request (server_error)")
MODEL_FAILED = Answer("The model failed to process the request, or the server failed to handle it (server_error)")
UNAVAILABLE = Answer(
    "The model cannot serve now: its deployment failed or its replica stopped (model_unavailable), or its"
    " queue is full (model_overloaded)",
    ("Retry-After",),
)
TIMEOUT = Answer(
    "The model did not answer within the request timeout, or did not start and answer within its cold-start"
    " timeout (model_timeout)",
    ("Retry-After",),
)
NOT_READY = Answer("Some live model has no running replica yet")
NOT_ALLOWED = Answer("The API key may not use this model (model_not_allowed)")
ADMIN_ONLY = Answer("Only an admin key may do this (admin_only)")
UNKNOWN_KEY = Answer("No API key has this id (key_not_found)")
DATABASE_DOWN = Answer("The gateway's database is unavailable (database_unavailable)", ("Retry-After",))

_MODEL_CALL = {
    400: INVALID,
    404: UNKNOWN_MODEL,
    413: IMAGE_TOO_LARGE,
    500: MODEL_FAILED,
    503: UNAVAILABLE,
    504: TIMEOUT,
}

# Every error status each operation (lower-case method, path as in the schema) can answer, from what
# its route raises (serve/ingress.py, serve/images.py, serve/errors.py). An operation missing here is
# documented from its route's properties: 400 where FastAPI validates its input, and 500.
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("get", "/health"): Operation({}),
    ("get", "/health/ready"): Operation({500: SERVER_ERROR, 503: NOT_READY}),
    ("get", "/v1/models"): Operation({500: SERVER_ERROR}),
    ("get", "/v1/models/{model_id}"): Operation({404: UNKNOWN_MODEL, 500: SERVER_ERROR}),
    ("post", "/v1/models/{model_id}/interest"): Operation({404: UNKNOWN_MODEL, 500: SERVER_ERROR}),
    ("post", "/v1/chat/completions"): Operation(_MODEL_CALL, calls_model=True, streams=True),
    ("post", "/v1/embeddings"): Operation(_MODEL_CALL, calls_model=True),
    ("post", "/v1/classifications"): Operation(_MODEL_CALL, calls_model=True),
    ("post", "/v1/scores"): Operation(_MODEL_CALL, calls_model=True),
    ("post", "/v1/vision/{model_name}/{task_name}"): Operation(
        {**_MODEL_CALL, 404: UNKNOWN_MODEL_OR_TASK}, calls_model=True
    ),
    ("get", "/v1/usage"): Operation({400: INVALID, 403: ADMIN_ONLY, 500: SERVER_ERROR, 503: DATABASE_DOWN}),
    ("get", "/v1/admin/keys"): Operation({403: ADMIN_ONLY, 500: SERVER_ERROR, 503: DATABASE_DOWN}),
    ("post", "/v1/admin/keys"): Operation({400: INVALID, 403: ADMIN_ONLY, 500: SERVER_ERROR, 503: DATABASE_DOWN}),
    ("patch", "/v1/admin/keys/{key_id}"): Operation(
        {400: INVALID, 403: ADMIN_ONLY, 404: UNKNOWN_KEY, 500: SERVER_ERROR, 503: DATABASE_DOWN}
    ),
    ("post", "/v1/admin/keys/{key_id}/revoke"): Operation(
        {400: INVALID, 403: ADMIN_ONLY, 404: UNKNOWN_KEY, 500: SERVER_ERROR, 503: DATABASE_DOWN}
    ),
}

HEADERS: dict[str, dict[str, Any]] = {
    "Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer", "minimum": 1}},
    "WWW-Authenticate": {"description": "the scheme to send the key with: Bearer", "schema": {"type": "string"}},
    "x-cold-start": {
        "description": "present (true) when the request waited for the model to start from zero replicas",
        "schema": {"type": "string", "enum": ["true"]},
    },
}
_ERROR_REF = "#/components/schemas/ErrorResponse"
_SECURITY_SCHEME = "apiKey"


def route_answers(method: str, path: str, operation: dict[str, Any], settings: ApiSettings) -> dict[int, Answer]:
    """The error statuses an operation can answer: the table's (or, for an operation missing from it,
    400 where FastAPI validates its input, and 500), plus the front door's (serve/limits.py): 413 for a
    body over the cap, 401 and 429 on paths that are not open when auth and rate limits are on."""
    known = OPERATIONS.get((method, path))
    if known is not None:
        answers = dict(known.errors)
    else:
        answers = {500: SERVER_ERROR}
        if "422" in operation.get("responses", {}):
            answers[400] = INVALID
    if "requestBody" in operation:
        answers.setdefault(413, BODY_TOO_LARGE)
    if path not in OPEN_PATHS:
        if settings.auth:
            answers[401] = UNAUTHORIZED
            if known is not None and known.calls_model:
                # a key's allowed models and budget (serve/accounts.py)
                answers[403] = NOT_ALLOWED
                answers[429] = QUOTA
        if settings.rate_limit:
            quota = answers.get(429) is QUOTA
            answers[429] = RATE_LIMITED_OR_QUOTA if quota else RATE_LIMITED
    return answers


def document_error_envelope(schema: dict[str, Any], config: GatewayConfig | None = None) -> dict[str, Any]:
    """The OpenAPI schema FastAPI generated, made to say what the gateway configured by `config` (the
    default configuration when None) answers; changed in place and returned.

    - Each operation documents every error status it can answer (`route_answers`), each with the
      OpenAI error envelope (`ErrorResponse`) and its headers (`Retry-After` on 429, 503 and 504),
      instead of FastAPI's 422 with its own body: invalid requests are answered 400 here. A status
      the route documents itself (`responses=` on the route, e.g. /health/ready's 503) is kept.
    - Lists capped by a gateway setting (marked `x-limit` in serve/protocol.py) get that `maxItems`;
      image URL patterns allow data: URLs only when the gateway does not fetch http(s) URLs.
    - With auth on, the bearer scheme is declared, and required by every path that is not open.
    """
    settings = ApiSettings.of(config)
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas["ErrorResponse"] = ERROR_RESPONSE_SCHEMA
    _apply_settings(schemas, settings)
    if settings.auth:
        components.setdefault("securitySchemes", {})[_SECURITY_SCHEME] = {"type": "http", "scheme": "bearer"}
    values = asdict(settings)
    for path, methods in schema.get("paths", {}).items():
        for method, operation in methods.items():
            answers = route_answers(method, path, operation, settings)
            # FastAPI's 422 goes; a response the route declares itself (e.g. a 503 with its own body) stays.
            responses = {code: r for code, r in operation.get("responses", {}).items() if code != "422"}
            for status, answer in answers.items():
                responses.setdefault(str(status), _response(answer, values))
            operation["responses"] = dict(sorted(responses.items()))
            known = OPERATIONS.get((method, path))
            success = responses.get("200")
            if known is not None and success is not None:
                _document_success(success, known)
            if settings.auth:
                operation["security"] = [] if path in OPEN_PATHS else [{_SECURITY_SCHEME: []}]
    return schema


def _response(answer: Answer, values: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": answer.description.format_map(values),
        "content": {"application/json": {"schema": {"$ref": _ERROR_REF}}},
    }
    if answer.headers:
        response["headers"] = {name: copy.deepcopy(HEADERS[name]) for name in answer.headers}
    return response


def _document_success(response: dict[str, Any], operation: Operation) -> None:
    if operation.calls_model:
        response.setdefault("headers", {})["x-cold-start"] = copy.deepcopy(HEADERS["x-cold-start"])
    if operation.streams:
        response["description"] = "JSON; with `stream: true`, server-sent chat.completion.chunk events ending in [DONE]"
        response.setdefault("content", {})["text/event-stream"] = {"schema": {"type": "string"}}


def _apply_settings(node: Any, settings: ApiSettings) -> None:
    """Fill the `x-limit` marks and narrow the image URL pattern, throughout a schema."""
    if isinstance(node, list):
        for item in node:
            _apply_settings(item, settings)
        return
    if not isinstance(node, dict):
        return
    setting = node.pop("x-limit", None)
    if setting is not None:
        node["maxItems"] = getattr(settings, setting)
        note = f"at most {node['maxItems']} (gateway setting {setting})"
        node["description"] = f"{node['description']}; {note}" if node.get("description") else note
    if node.get("pattern") == IMAGE_URL_PATTERN and not settings.allow_http:
        node["pattern"] = DATA_IMAGE_URL_PATTERN
        note = "this gateway fetches no http(s) URLs: send a data:image/<type>;base64 URL"
        node["description"] = f"{node['description']}; {note}" if node.get("description") else note
    for value in node.values():
        _apply_settings(value, settings)


ERROR_RESPONSE_SCHEMA: dict[str, Any] = {
    "title": "ErrorResponse",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "code": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
        }
    },
}
