"""The HTTP protocol: OpenAI-shaped request and response models, validated before anything reaches a model.

The request schemas (so /openapi.json) also state what the gateway checks later, in the route or the
image loader (URL forms, non-blank strings, list sizes), as schema-only extras: validation here
accepts what it did and each check keeps its own message. Caps that are operator settings are marked
`x-limit: <GatewayConfig field>`, which `serve.validation` turns into the running config's `maxItems`.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from serve.errors import bad_request

logger = logging.getLogger("gigarouter.protocol")


class Request(BaseModel):
    # OpenAI clients send fields we do not use (user, seed, ...): accept and ignore them.
    model_config = ConfigDict(extra="ignore")


# The image URLs serve/images.py loads: data:image/<type>;base64,<data> or http(s)://<host>...,
# schemes and media type in any letter case. As JSON Schema (ECMA-262) patterns: no inline flags.
_DATA_IMAGE_URL = r"[Dd][Aa][Tt][Aa]:\s*[Ii][Mm][Aa][Gg][Ee]/[A-Za-z0-9][A-Za-z0-9.+-]*\s*;\s*[Bb][Aa][Ss][Ee]64\s*,"
_HTTP_URL = r"[Hh][Tt][Tt][Pp][Ss]?://"
DATA_IMAGE_URL_PATTERN = f"^{_DATA_IMAGE_URL}"
IMAGE_URL_PATTERN = f"^(?:{_DATA_IMAGE_URL}|{_HTTP_URL})"
# A string with something besides whitespace, as the label and text checks below require.
NOT_BLANK_PATTERN = r"\S"


TOKENS = "at most the model's generation.max_new_tokens_cap"
BEAMS = "at most the model's generation.num_beams_cap"
PATCHES = "SigLIP2 naflex patch budget (extension): within the model's min_num_patches..max_num_patches_cap"

ImageURLString = Annotated[str, Field(json_schema_extra={"pattern": IMAGE_URL_PATTERN})]
NotBlank = Annotated[str, Field(json_schema_extra={"pattern": NOT_BLANK_PATTERN})]
NotEmpty = Annotated[str, Field(json_schema_extra={"minLength": 1})]


# ----- chat completions -----


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    url: ImageURLString = Field(min_length=1, description="data:image/<type>;base64,<data> or http(s) URL")
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(Request):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(
        min_length=1,
        description="the last user message must hold exactly one image_url part; its text parts select the task",
    )
    max_tokens: int | None = Field(None, ge=1, description=TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, description=TOKENS)
    num_beams: int | None = Field(None, ge=1, description=f"beam search width (extension); {BEAMS}")
    n: int = Field(1, ge=1, le=1, description="only one choice is produced")
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2, description="accepted; decoding is deterministic")

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ChatPrompt(BaseModel):
    """What a chat request asks of a vision model: one image and the text beside it."""

    text: str
    image_url: str
    image_param: str


def chat_prompt(request: ChatCompletionRequest) -> ChatPrompt:
    """Take the image and text of the last user message; vision models here answer single turns."""
    index = max((i for i, m in enumerate(request.messages) if m.role == "user"), default=None)
    if index is None:
        raise bad_request("messages must contain a user message", param="messages")
    content = request.messages[index].content
    texts: list[str] = []
    images: list[tuple[str, str]] = []
    if isinstance(content, str):
        texts.append(content)
    for j, part in enumerate(content if isinstance(content, list) else []):
        if isinstance(part, TextPart):
            texts.append(part.text)
        else:
            images.append((part.image_url.url, f"messages[{index}].content[{j}].image_url.url"))
    if len(images) != 1:
        raise bad_request(
            f"the user message must hold exactly one image_url part (found {len(images)})",
            param=f"messages[{index}].content",
        )
    return ChatPrompt(text=" ".join(t.strip() for t in texts if t.strip()), image_url=images[0][0], image_param=images[0][1])


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    images: int = 0


class VisionResult(BaseModel):
    """Extension field: the structured result of the task, so no client re-parses text."""

    task: str
    results: Any


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: Literal["stop", "length"]


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    vision: VisionResult


# ----- embeddings -----


class EmbeddingRequest(Request):
    model: str = Field(min_length=1)
    input: NotEmpty | Annotated[
        list[NotEmpty], Field(json_schema_extra={"x-limit": "max_inputs_per_request", "minItems": 1})
    ] = Field(
        description="texts, or image URLs (data: or http(s)) with modality 'image'; no empty strings. Image inputs:"
        " at most max_images_per_request"
    )
    encoding_format: Literal["float", "base64"] = "float"
    modality: Literal["text", "image"] | None = Field(
        None,
        description="'text' or 'image' (extension). When omitted: 'image' if every input is a"
        " data:image/ URL, else 'text'.",
    )
    max_num_patches: int | None = Field(None, ge=1, description=PATCHES)
    # Accepted for OpenAI compatibility, but any value is refused: embeddings have the model's own size.
    dimensions: Annotated[
        int | None, WithJsonSchema({"type": "null", "description": "not supported: omit it or send null"})
    ] = Field(None, ge=1)

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("input must not be empty")
        return value

    @property
    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)

    @property
    def resolved_modality(self) -> Literal["text", "image"]:
        if self.modality:
            return self.modality
        return "image" if all(item.startswith("data:image/") for item in self.inputs) else "text"


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0
    images: int = 0


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# ----- zero-shot classification -----


class ClassificationRequest(Request):
    model: str = Field(min_length=1)
    image: ImageURLString = Field(min_length=1, description="data: or http(s) image URL")
    labels: list[NotBlank] = Field(
        min_length=1, description="candidate labels", json_schema_extra={"x-limit": "max_labels"}
    )
    prompt_template: Annotated[str, Field(json_schema_extra={"pattern": r"\{label\}"})] | None = Field(
        None, description="how a label becomes text; must contain '{label}'. Default: 'This is a photo of {label}.'"
    )
    max_num_patches: int | None = Field(None, ge=1, description=PATCHES)

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: list[str]) -> list[str]:
        if any(not label.strip() for label in labels):
            raise ValueError("labels must be non-empty strings")
        return labels

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, template: str | None) -> str | None:
        if template is not None and "{label}" not in template:
            raise ValueError("prompt_template must contain '{label}'")
        return template


class LabelScore(BaseModel):
    label: str
    score: float


class ClassificationResponse(BaseModel):
    object: Literal["classification"] = "classification"
    model: str
    data: list[LabelScore]
    usage: Usage


# ----- image-text scores -----


class ScoreRequest(Request):
    model: str = Field(min_length=1)
    images: list[ImageURLString] = Field(
        min_length=1, description="data: or http(s) image URLs", json_schema_extra={"x-limit": "max_images_per_request"}
    )
    texts: list[NotBlank] = Field(min_length=1, json_schema_extra={"x-limit": "max_labels"})
    max_num_patches: int | None = Field(None, ge=1, description=PATCHES)

    @field_validator("texts")
    @classmethod
    def _texts(cls, texts: list[str]) -> list[str]:
        if any(not text.strip() for text in texts):
            raise ValueError("texts must be non-empty strings")
        return texts


class ScoreResponse(BaseModel):
    object: Literal["scores"] = "scores"
    model: str
    data: list[list[float]] = Field(description="sigmoid probabilities: one row per image, one column per text")
    usage: Usage


# ----- task endpoints (fal.ai's Florence-2 shapes) -----


class Region(BaseModel):
    """A rectangle in pixels of the input image, as fal.ai's Florence-2 API takes it."""

    x1: float = Field(ge=0)
    y1: float = Field(ge=0)
    x2: float = Field(ge=0)
    y2: float = Field(ge=0)



class VisionTaskRequest(Request):
    image_url: ImageURLString = Field(min_length=1, description="data: or http(s) image URL")
    text_input: str | None = Field(None, description="the task's text input: required where it takes one, else refused")
    region: Region | None = Field(
        None, description="pixels, x1 < x2 <= width, y1 < y2 <= height: required where the task takes one, else refused"
    )
    include_image: bool = Field(False, description="also return the input annotated with the results")
    max_tokens: int | None = Field(None, ge=1, description=TOKENS)
    num_beams: int | None = Field(None, ge=1, description=BEAMS)


class AnnotatedImage(BaseModel):
    url: str
    content_type: Literal["image/png"] = "image/png"
    width: int
    height: int


class VisionTaskResponse(BaseModel):
    results: Any
    image: AnnotatedImage | None = None


# ----- models -----


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    status: Literal["live", "coming_soon"]
    family: str
    replicas: int
    state: str = Field(
        description="cold (zero replicas), starting, pending (a replica waits for a node with the resources"
        " it asks for), ready, or unavailable"
    )
    state_reason: str | None = Field(None, description="why the model is not ready, from Serve's deployment status")
    tasks: list[str]
    endpoints: list[str]
    price_per_1k_images: float | None
    license: str | None
    parameters: int | None
    demand: int = 0


class InterestResponse(BaseModel):
    id: str
    object: Literal["model.interest"] = "model.interest"
    demand: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def checked_region(region: Region | dict[str, Any], size: tuple[int, int], param: str = "region") -> tuple[float, float, float, float]:
    """The region's corners, once they are known to lie inside an image of `size` with x1 < x2 and y1 < y2."""
    try:
        box = region if isinstance(region, Region) else Region.model_validate(region)
    except ValueError:
        raise bad_request("region needs numbers x1, y1, x2, y2 (pixels, not negative)", param=param) from None
    width, height = size
    if not (box.x1 < box.x2 <= width and box.y1 < box.y2 <= height):
        raise bad_request(
            f"region must satisfy x1 < x2 <= {width} and y1 < y2 <= {height} (the image size in pixels)", param=param
        )
    return box.x1, box.y1, box.x2, box.y2
