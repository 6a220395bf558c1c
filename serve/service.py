"""The gateway's service layer: one transport-free function per thing a caller can ask.

Each takes a typed request (the pydantic models of `serve.protocol`) and a `CallerContext`, and
returns `Served`: the typed response body, the typed `Usage` of the call, and whether it waited
through a model's start (a streamed answer: `Streamed`, its usage recorded when it ends). HTTP
routes (`serve/routers/`) only parse and render around these; job runners, batch files and the web
pages call them directly. Errors are `APIError`s. How the operations reach the models (lookups,
client images, metered calls) is `serve.model_access.ModelAccess`, the base of `GatewayService`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Generic, TypeVar, get_args

import numpy as np

from families.base import HTTP_TASK_NAMES, Task, TaskCategory, check_task_input
from families.registry import family_of
from serve.accounts import store_unavailable
from serve.annotate import annotate
from serve.chat_stream import ChatStream
from serve.context import CallerContext
from serve.contract import (
    ClassifyCall,
    EmbedImagesCall,
    EmbedTextsCall,
    GenerateCall,
    Generation,
    GenerationDelta,
    Region,
    ScoreCall,
    Usage,
)
from serve.errors import bad_request
from serve.health import Readiness
from serve.image_codec import decode_image
from serve.model_access import ModelAccess, ResultStream
from serve.model_spec import ModelSpec
from serve.protocol import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessageOut,
    ClassificationRequest,
    ClassificationResponse,
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    InterestResponse,
    LabelScore,
    ModelCard,
    ModelList,
    ScoreRequest,
    ScoreResponse,
    VisionResult,
    VisionTaskRequest,
    VisionTaskResponse,
    chat_prompt,
    checked_region,
    encode_vector,
)
from serve.protocol import Usage as UsageBody
from serve.store import StoreError

T = TypeVar("T")


@dataclass
class Served(Generic[T]):
    """A service function's answer: the response body, what it used, and whether it waited for a start."""

    body: T
    usage: Usage
    cold: bool = False


@dataclass
class Streamed(Generic[T]):
    """A streamed answer: its body (which yields the answer as it is made), and whether it waited
    for a start. Usage is recorded once the model's answer is complete, whether or not it was read."""

    body: T
    cold: bool = False


# The catalog page's filters, in this order.
CATEGORIES: tuple[str, ...] = get_args(TaskCategory)


@dataclass(frozen=True)
class CatalogEntry:
    """A model as the web pages show it without asking Serve anything: its catalog entry and its tasks.

    Live state, replicas and demand are not here: the pages read them from `GET /v1/models` with the
    caller's key, so a page itself holds nothing that needs one.
    """

    spec: ModelSpec
    tasks: tuple[Task, ...]

    @property
    def categories(self) -> list[str]:
        """The task categories the model serves, in the catalog's order."""
        served = {task.category for task in self.tasks}
        return [category for category in CATEGORIES if category in served]


def usage_body(usage: Usage) -> UsageBody:
    return UsageBody(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        images=usage.images,
    )


class GatewayService(ModelAccess):
    """The models of one gateway and what can be asked of them.

    Constructed as `ModelAccess` (config, specs, dispatcher, control plane, store, accounts), which
    also gives the lookups (`find`, `model`, `task`), image fetches and metered `call`/`stream`.
    """

    # ----- inference -----

    async def chat(self, request: ChatCompletionRequest, context: CallerContext) -> Served[ChatCompletion]:
        spec, call = await self._chat_call(request)
        result, cold = await self.call(spec, call, context, "chat")
        return Served(self._completion(spec, result), result.usage, cold)

    async def chat_stream(self, request: ChatCompletionRequest, context: CallerContext) -> Streamed[ChatStream]:
        """A chat answer streamed: text answers token by token as the model makes them, structured
        ones at the end. Errors before the answer begins are raised; later ones end the stream."""
        spec, call = await self._chat_call(request)
        results = await self.stream(spec, call, context, "chat")
        return Streamed(ChatStream(model=spec.id, pieces=self._chat_pieces(spec, results)), results.cold)

    async def _chat_pieces(self, spec: ModelSpec, results: ResultStream) -> AsyncIterator[str | ChatCompletion]:
        async for item in results:
            yield item.text if isinstance(item, GenerationDelta) else self._completion(spec, item)

    @staticmethod
    def _completion(spec: ModelSpec, result: Generation) -> ChatCompletion:
        return ChatCompletion(
            model=spec.id,
            choices=[ChatChoice(message=ChatMessageOut(content=result.text), finish_reason=result.finish_reason)],
            usage=usage_body(result.usage),
            vision=VisionResult(task=result.task, results=result.results),
        )

    async def _chat_call(self, request: ChatCompletionRequest) -> tuple[ModelSpec, GenerateCall]:
        """The model and the generate call a chat request asks for (checked, its image fetched)."""
        spec = self.model(request.model, "chat")
        tokens_param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        # Caps are checked here, before an image is fetched or a model woken.
        spec.generation.check(request.token_limit, request.num_beams, tokens_param)
        prompt = chat_prompt(request)
        task, text = family_of(spec.family).chat_task(prompt.text, "messages")
        image = await self.image(prompt.image_url, prompt.image_param)
        call = GenerateCall(
            image=image,
            task=task.name,
            text=text or None,
            max_new_tokens=request.token_limit,
            num_beams=request.num_beams,
            param_names={"text": "messages", "max_new_tokens": tokens_param, "image": prompt.image_param},
        )
        return spec, call

    async def embeddings(self, request: EmbeddingRequest, context: CallerContext) -> Served[EmbeddingResponse]:
        spec = self.model(request.model, "embeddings")
        if request.dimensions is not None:
            raise bad_request("dimensions is not supported: embeddings have the model's own size", param="dimensions")
        inputs = request.inputs
        if len(inputs) > self.config.max_inputs_per_request:
            raise bad_request(f"at most {self.config.max_inputs_per_request} inputs per request", param="input")
        params = ["input" if isinstance(request.input, str) else f"input[{i}]" for i in range(len(inputs))]
        if request.resolved_modality == "image":
            if len(inputs) > self.config.max_images_per_request:
                raise bad_request(f"at most {self.config.max_images_per_request} images per request", param="input")
            call = EmbedImagesCall(images=await self.images(inputs, params), max_num_patches=request.max_num_patches)
        else:
            if any(not text for text in inputs):
                raise bad_request("input must not contain empty strings", param="input")
            call = EmbedTextsCall(texts=tuple(inputs), params=tuple(params))
        result, cold = await self.call(spec, call, context, "embeddings")
        vectors = np.asarray(result.vectors, dtype=np.float32)
        data = [
            Embedding(index=i, embedding=encode_vector(vector, request.encoding_format))
            for i, vector in enumerate(vectors)
        ]
        usage = EmbeddingUsage(
            prompt_tokens=result.usage.prompt_tokens, total_tokens=result.usage.total_tokens, images=result.usage.images
        )
        return Served(EmbeddingResponse(data=data, model=spec.id, usage=usage), result.usage, cold)

    async def classify(self, request: ClassificationRequest, context: CallerContext) -> Served[ClassificationResponse]:
        spec = self.model(request.model, "classifications")
        if len(request.labels) > self.config.max_labels:
            raise bad_request(f"at most {self.config.max_labels} labels per request", param="labels")
        call = ClassifyCall(
            image=await self.image(request.image, "image"),
            labels=tuple(request.labels),
            template=request.prompt_template,
            max_num_patches=request.max_num_patches,
        )
        result, cold = await self.call(spec, call, context, "classifications")
        body = ClassificationResponse(
            model=spec.id,
            data=[LabelScore(label=label, score=score) for label, score in result.labels],
            usage=usage_body(result.usage),
        )
        return Served(body, result.usage, cold)

    async def scores(self, request: ScoreRequest, context: CallerContext) -> Served[ScoreResponse]:
        spec = self.model(request.model, "scores")
        if len(request.images) > self.config.max_images_per_request:
            raise bad_request(f"at most {self.config.max_images_per_request} images per request", param="images")
        if len(request.texts) > self.config.max_labels:
            raise bad_request(f"at most {self.config.max_labels} texts per request", param="texts")
        images = await self.images(request.images, [f"images[{i}]" for i in range(len(request.images))])
        call = ScoreCall(images=images, texts=tuple(request.texts), max_num_patches=request.max_num_patches)
        result, cold = await self.call(spec, call, context, "scores")
        body = ScoreResponse(model=spec.id, data=result.scores, usage=usage_body(result.usage))
        return Served(body, result.usage, cold)

    async def vision_task(
        self, model_name: str, task_name: str, request: VisionTaskRequest, context: CallerContext
    ) -> Served[VisionTaskResponse]:
        spec, task = self.task(model_name, task_name)
        text = (request.text_input or "").strip()
        # The same rules as the replica's, checked before an image is fetched or a model woken.
        check_task_input(
            family_of(spec.family), task, text, request.region is not None, HTTP_TASK_NAMES, region_text=False
        )
        spec.generation.check(request.max_tokens, request.num_beams)
        image = await self.image(request.image_url, "image_url")
        region = None
        if request.region is not None:
            region = Region(*checked_region(request.region, image.size))
        call = GenerateCall(
            image=image,
            task=task.name,
            text=text or None,
            region=region,
            max_new_tokens=request.max_tokens,
            num_beams=request.num_beams,
            param_names={"text": "text_input", "max_new_tokens": "max_tokens", "image": "image_url"},
        )
        result, cold = await self.call(spec, call, context, "vision")
        drawn = None
        if request.include_image:
            # The only full decode in the gateway: drawing needs the pixels.
            picture = await asyncio.to_thread(decode_image, image.data, self.config.images, "image_url")
            drawn = await asyncio.to_thread(annotate, picture, result.results)
        return Served(VisionTaskResponse(results=result.results, image=drawn), result.usage, cold)

    # ----- the catalog -----

    async def interest_counts(self) -> dict[str, int]:
        try:
            return await self.store.interest_counts()
        except StoreError:
            raise store_unavailable("the demand counts cannot be read") from None

    async def list_models(self) -> ModelList:
        demand = await self.interest_counts()
        return ModelList(data=[await self.card(spec, demand) for spec in self.specs.values()])

    async def get_model(self, model_id: str) -> ModelCard:
        return await self.card(self.find(model_id), await self.interest_counts())

    async def register_interest(self, model_id: str) -> InterestResponse:
        spec = self.find(model_id)
        try:
            count = await self.store.record_interest(spec.id)
        except StoreError:
            raise store_unavailable("the interest cannot be recorded") from None
        return InterestResponse(id=spec.id, demand=count)

    async def card(self, spec: ModelSpec, demand: dict[str, int]) -> ModelCard:
        replicas, state, reason = await self.control.states.describe(spec.deployment_name)
        return ModelCard(
            id=spec.id,
            created=spec.created,
            owned_by=spec.owned_by or spec.id.split("/")[0],
            status=spec.status,
            family=spec.family,
            replicas=replicas,
            state=state,
            state_reason=reason,
            tasks=spec.tasks,
            endpoints=sorted(family_of(spec.family).endpoints),
            price_per_1k_images=spec.price_per_1k_images,
            license=spec.license,
            parameters=spec.parameters,
            demand=demand.get(spec.id, 0),
        )

    # ----- the web pages -----

    def catalog_entries(self) -> list[CatalogEntry]:
        return [CatalogEntry(spec, family_of(spec.family).tasks) for spec in self.specs.values()]

    def catalog_entry(self, name: str) -> CatalogEntry:
        """A model by its id or deployment name, as the pages show it; 404 otherwise."""
        spec = self.find(name)
        return CatalogEntry(spec, family_of(spec.family).tasks)

    @property
    def keys_required(self) -> bool:
        """Whether API calls need a key (the pages then ask for one)."""
        return self.config.auth.enabled

    async def readiness(self) -> Readiness:
        """Ready once every live model has a running replica; otherwise what each is waiting for."""
        waiting = {}
        for spec in self.specs.values():
            if spec.status != "live":
                continue
            replicas, state, reason = await self.control.states.describe(spec.deployment_name)
            if replicas < 1:
                waiting[spec.id] = f"{state}: {reason}" if reason else state
        return Readiness(status="ready" if not waiting else "not_ready", waiting_for=waiting)
