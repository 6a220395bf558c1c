"""Turn FastAPI/pydantic validation errors into one OpenAI-style 400 naming the bad `param`.

Pydantic's error locations name union branches and discriminator tags beside real fields
(`messages.0.content.list[tagged-union[TextPart,ImagePart]].0.image_url.image_url.url`). The
param is rebuilt by walking the location through the JSON the client sent, keeping only the
steps that exist there (`messages[0].content[0].image_url.url`); of several errors the one that
reaches deepest into the client's JSON is reported, since it names the branch the client meant.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from serve.errors import APIError, bad_request

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


def document_error_envelope(schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI schema whose invalid-request responses are what the gateway sends: 400 with the error envelope.

    FastAPI documents validation failures as 422 with its own body; the handlers here answer 400
    in the OpenAI envelope instead, so clients and schema-driven tools read the real contract.
    """
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    components["ErrorResponse"] = ERROR_RESPONSE_SCHEMA
    error = {
        "description": "Invalid request (OpenAI error envelope; `param` names the offending field)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault("400", error)
    return schema


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
