"""Task endpoints in fal.ai's shapes: `POST /v1/vision/{model}/{task}`."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from serve.context import CallerContext
from serve.protocol import VisionTaskRequest, VisionTaskResponse
from serve.routers.common import caller, render, service
from serve.service import GatewayService

router = APIRouter()


@router.post("/v1/vision/{model_name}/{task_name}", response_model=VisionTaskResponse)
async def vision_task(
    model_name: str,
    task_name: str,
    request: VisionTaskRequest,
    context: CallerContext = Depends(caller),
    gateway: GatewayService = Depends(service),
):
    return render(await gateway.vision_task(model_name, task_name, request, context), exclude_none=True)
