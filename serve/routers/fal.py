"""fal.ai's synchronous surface: `POST /fal/{owner}/{model-name}/{task}`, what `fal_client.run` calls
with `FAL_RUN_HOST=<host>:<port>/fal` (serve/fal/protocol.py).

The body and the result are those of `POST /v1/vision/{model-name}/{task}` (fal's Florence-2 shapes),
through the same service function; errors are in fal's shapes (serve/fal/errors.py). Auth, rate
limits and the body cap are the front door's, as everywhere (`Authorization: Key <key>` or `Bearer`).
Not in /openapi.json: the contract is fal's, documented by fal and in the README.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from serve.context import CallerContext
from serve.errors import APIError
from serve.fal.apps import app_model
from serve.fal.errors import InvalidBody, fal_error_response, parse_body
from serve.fal.protocol import REQUEST_ID_HEADER, RUN_PREFIX
from serve.config import ModelSpec
from serve.protocol import VisionTaskRequest
from serve.routers.common import caller, render, service
from serve.service import GatewayService

router = APIRouter(prefix=RUN_PREFIX, include_in_schema=False)


async def app_request(
    gateway: GatewayService, owner: str, model_name: str, task_name: str, request: Request
) -> tuple[ModelSpec, VisionTaskRequest]:
    """The model of an app id and the parsed task request. fal's order: an unknown app or task is a
    404 whatever the body holds; then a body that does not parse is a 422 (`InvalidBody`)."""
    spec = app_model(gateway.by_name, owner, model_name)
    gateway.task(spec.deployment_name, task_name)
    return spec, parse_body(await request.body(), VisionTaskRequest)


def with_id(response: Response, request_id: str) -> Response:
    response.headers[REQUEST_ID_HEADER] = request_id
    return response


@router.post("/{owner}/{model_name}/{task_name}")
async def run(
    owner: str,
    model_name: str,
    task_name: str,
    request: Request,
    context: CallerContext = Depends(caller),
    gateway: GatewayService = Depends(service),
) -> Response:
    try:
        spec, task_request = await app_request(gateway, owner, model_name, task_name, request)
        served = await gateway.vision_task(spec.deployment_name, task_name, task_request, context)
    except (APIError, InvalidBody) as error:
        return fal_error_response(error, context.request_id)
    return with_id(render(served, exclude_none=True), context.request_id)


# Last: anything else under /fal/ is fal-shaped too (the queue's router, serve/routers/fal_queue.py, is
# included before this one).
@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
async def unknown(path: str, request: Request, context: CallerContext = Depends(caller)) -> JSONResponse:
    if request.method != "POST" and len(path.strip("/").split("/")) == 3:
        error = APIError(405, "fal apps are run with POST.", code="method_not_allowed", headers={"allow": "POST"})
    else:
        error = APIError(
            404,
            f"'/fal/{path}' is not a fal endpoint of this gateway: POST /fal/{{owner}}/{{model-name}}/{{task}}.",
            type="not_found_error",
            code="not_found",
        )
    return fal_error_response(error, context.request_id)
