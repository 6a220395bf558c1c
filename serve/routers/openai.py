"""OpenAI-style inference endpoints: chat completions, embeddings, and the classification and score extensions."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from serve.chat_stream import chat_stream
from serve.context import CallerContext
from serve.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    ClassificationRequest,
    ClassificationResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ScoreRequest,
    ScoreResponse,
)
from serve.routers.common import caller, headers_of, render, service
from serve.service import GatewayService

router = APIRouter()


@router.post("/v1/chat/completions", response_model=ChatCompletion)
async def chat_completions(
    request: ChatCompletionRequest,
    context: CallerContext = Depends(caller),
    gateway: GatewayService = Depends(service),
):
    if request.stream:
        streamed = await gateway.chat_stream(request, context)
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        return StreamingResponse(
            chat_stream(streamed.body, include_usage), media_type="text/event-stream", headers=headers_of(streamed)
        )
    return render(await gateway.chat(request, context))


@router.post("/v1/embeddings", response_model=EmbeddingResponse)
async def embeddings(
    request: EmbeddingRequest,
    context: CallerContext = Depends(caller),
    gateway: GatewayService = Depends(service),
):
    return render(await gateway.embeddings(request, context))


@router.post("/v1/classifications", response_model=ClassificationResponse)
async def classifications(
    request: ClassificationRequest,
    context: CallerContext = Depends(caller),
    gateway: GatewayService = Depends(service),
):
    return render(await gateway.classify(request, context))


@router.post("/v1/scores", response_model=ScoreResponse)
async def scores(
    request: ScoreRequest,
    context: CallerContext = Depends(caller),
    gateway: GatewayService = Depends(service),
):
    return render(await gateway.scores(request, context))
