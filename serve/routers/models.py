"""The model catalog and the health checks."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from serve.health import Readiness
from serve.protocol import InterestResponse, ModelCard, ModelList
from serve.routers.common import service
from serve.service import GatewayService

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the ingress answers. Says nothing about the models (see /health/ready)."""
    return {"status": "ok"}


@router.get("/health/ready", response_model=Readiness, responses={503: {"model": Readiness}})
async def ready(gateway: GatewayService = Depends(service)):
    """Readiness: 200 once every live model has a running replica, 503 (with what is missing) until then."""
    body = await gateway.readiness()
    return JSONResponse(body.model_dump(), status_code=200 if body.status == "ready" else 503)


@router.get("/v1/models", response_model=ModelList)
async def list_models(gateway: GatewayService = Depends(service)) -> ModelList:
    return await gateway.list_models()


@router.get("/v1/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, gateway: GatewayService = Depends(service)) -> ModelCard:
    return await gateway.get_model(model_id)


@router.post("/v1/models/{model_id:path}/interest", response_model=InterestResponse)
async def register_interest(model_id: str, gateway: GatewayService = Depends(service)) -> InterestResponse:
    return await gateway.register_interest(model_id)
