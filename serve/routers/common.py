"""What every router needs: the replica's service, the caller's context, and rendering."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from ray import serve

from serve.context import CallerContext, new_request_id
from serve.service import GatewayService, Served, Streamed

# Set by the auth middleware (serve/limits.py) in the ASGI scope's state.
KEY_ID_STATE = "key_id"


async def service() -> GatewayService:
    """The service of the Gateway replica handling this request (Serve copies the FastAPI app when
    the deployment class is decorated, so routes look the replica up instead of closing over it).

    The request dependencies are `async` although they wait on nothing: FastAPI runs a plain `def`
    dependency in a thread pool, two thread hops per request (measured: ~6 % of the ingress's CPU
    under load)."""
    return serve.get_replica_context().servable_object.service


async def caller(request: Request) -> CallerContext:
    """The caller's context: its API key id (from the auth middleware) and the request's id."""
    state = request.scope.get("state") or {}
    request_id = request.headers.get("x-request-id") or new_request_id()
    return CallerContext(request_id=request_id, key_id=state.get(KEY_ID_STATE), caller=state.get("caller"))


def headers_of(served: Served[Any] | Streamed[Any]) -> dict[str, str]:
    """`x-cold-start: true` when the call waited for a model to start (a stream knows by its first item)."""
    return {"x-cold-start": "true"} if served.cold else {}


def render(served: Served[Any], exclude_none: bool = False) -> JSONResponse:
    """A served body as JSON, with `x-cold-start: true` when the call waited for a model to start."""
    return JSONResponse(served.body.model_dump(exclude_none=exclude_none), headers=headers_of(served))
