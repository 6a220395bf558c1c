"""The service layer without HTTP: each service function, called directly on the session's models,
gives the body the route returns (the routes only parse and render)."""

from __future__ import annotations

import asyncio

import pytest
from ray import serve

from serve.config import AppArgs
from serve.context import CallerContext
from serve.control import ControlPlane
from serve.store import Store
from serve.dispatch import Dispatcher
from serve.protocol import (
    ChatCompletionRequest,
    ClassificationRequest,
    EmbeddingRequest,
    ScoreRequest,
    VisionTaskRequest,
)
from serve.service import GatewayService
from tests.elastic_config import apply_elastic_overrides
from tests.helpers import APP_NAME, FLORENCE_LARGE, SIGLIP, chat, data_url, local_args, png_bytes


@pytest.fixture(scope="module")
def service(gateway, checkpoints, tmp_path_factory) -> GatewayService:
    """A service over the session's model deployments, built in the test process."""
    args = local_args()
    args["checkpoint_dir"] = str(checkpoints)
    apply_elastic_overrides(args)
    parsed = AppArgs.model_validate(args)
    handles = {spec.id: serve.get_deployment_handle(spec.deployment_name, app_name=APP_NAME) for spec in parsed.models}
    control = ControlPlane(APP_NAME, parsed.gateway.status_cache_s)
    store = Store(f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('service') / 'gigarouter.sqlite3'}")
    asyncio.run(store.migrate())
    return GatewayService(parsed.gateway, parsed.models, Dispatcher(parsed.gateway, handles, control), control, store)


def without_ids(body: dict) -> dict:
    return {k: v for k, v in body.items() if k not in ("id", "created")}


def test_each_service_function_gives_what_its_route_returns(service, client):
    red, green = data_url(png_bytes(color="red")), data_url(png_bytes(color="green"))
    chat_body = chat(FLORENCE_LARGE, "<OD>", red, max_tokens=24)
    embed_body = {"model": SIGLIP, "input": ["a red square", "a cat"]}
    image_embed_body = {"model": SIGLIP, "input": [red, green]}
    classify_body = {"model": SIGLIP, "image": red, "labels": ["red square", "green square", "cat"]}
    score_body = {"model": SIGLIP, "images": [red, green], "texts": ["red", "green"]}
    task_body = {"image_url": red, "max_tokens": 24}

    async def direct():
        context = CallerContext(key_id="test-key")
        return (
            await service.chat(ChatCompletionRequest.model_validate(chat_body), context),
            await service.embeddings(EmbeddingRequest.model_validate(embed_body), context),
            await service.embeddings(EmbeddingRequest.model_validate(image_embed_body), context),
            await service.classify(ClassificationRequest.model_validate(classify_body), context),
            await service.scores(ScoreRequest.model_validate(score_body), context),
            await service.vision_task(
                "florence-2-large", "object-detection", VisionTaskRequest.model_validate(task_body), context
            ),
            await service.list_models(),
        )

    chat_s, embed_s, image_embed_s, classify_s, score_s, task_s, listing = asyncio.run(direct())

    over_http = {
        "chat": client.post("/v1/chat/completions", json=chat_body).json(),
        "embed": client.post("/v1/embeddings", json=embed_body).json(),
        "image_embed": client.post("/v1/embeddings", json=image_embed_body).json(),
        "classify": client.post("/v1/classifications", json=classify_body).json(),
        "score": client.post("/v1/scores", json=score_body).json(),
        "task": client.post("/v1/vision/florence-2-large/object-detection", json=task_body).json(),
    }
    assert without_ids(chat_s.body.model_dump()) == without_ids(over_http["chat"])
    assert embed_s.body.model_dump() == over_http["embed"]
    assert image_embed_s.body.model_dump() == over_http["image_embed"]
    assert classify_s.body.model_dump() == over_http["classify"]
    assert score_s.body.model_dump() == over_http["score"]
    assert task_s.body.model_dump(exclude_none=True) == over_http["task"]
    # different inputs gave different answers (the comparison above is not of empty or constant bodies)
    vectors = [row["embedding"] for row in over_http["embed"]["data"]]
    assert len(vectors) == 2 and vectors[0] != vectors[1]
    assert {m.id for m in listing.data} == {m["id"] for m in client.get("/v1/models").json()["data"]}

    # the typed usage beside each body: what the response's usage says
    assert chat_s.usage.images == 1 and chat_s.usage.completion_tokens == over_http["chat"]["usage"]["completion_tokens"]
    assert embed_s.usage.images == 0 and embed_s.usage.prompt_tokens == over_http["embed"]["usage"]["prompt_tokens"] > 0
    assert image_embed_s.usage.images == 2
    assert score_s.usage.images == 2 and classify_s.usage.images == 1
    assert task_s.usage.images == 1
