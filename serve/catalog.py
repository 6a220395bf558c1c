"""What each model family can do: its tasks, how a request selects one, and which endpoint serves it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Endpoint = Literal["chat", "embeddings", "classifications", "scores"]
TaskInput = Literal["none", "text", "region", "optional_text"]


@dataclass(frozen=True)
class Task:
    """One task of a family: its public name, the prompt that selects it in chat, and what input it takes."""

    name: str
    prompt: str
    input: TaskInput
    endpoint: Endpoint = "chat"


FLORENCE2_TASKS = (
    Task("caption", "<CAPTION>", "none"),
    Task("detailed-caption", "<DETAILED_CAPTION>", "none"),
    Task("more-detailed-caption", "<MORE_DETAILED_CAPTION>", "none"),
    Task("object-detection", "<OD>", "none"),
    Task("dense-region-caption", "<DENSE_REGION_CAPTION>", "none"),
    Task("region-proposal", "<REGION_PROPOSAL>", "none"),
    Task("caption-to-phrase-grounding", "<CAPTION_TO_PHRASE_GROUNDING>", "text"),
    Task("referring-expression-segmentation", "<REFERRING_EXPRESSION_SEGMENTATION>", "text"),
    Task("region-to-segmentation", "<REGION_TO_SEGMENTATION>", "region"),
    Task("open-vocabulary-detection", "<OPEN_VOCABULARY_DETECTION>", "text"),
    Task("region-to-category", "<REGION_TO_CATEGORY>", "region"),
    Task("region-to-description", "<REGION_TO_DESCRIPTION>", "region"),
    Task("region-to-ocr", "<REGION_TO_OCR>", "region"),
    Task("ocr", "<OCR>", "none"),
    Task("ocr-with-region", "<OCR_WITH_REGION>", "none"),
)

KOSMOS2_TASKS = (
    Task("grounded-caption", "<grounding>", "optional_text"),
    Task("phrase-grounding", "<grounding><phrase>", "text"),
    Task("referring-expression-generation", "<grounding><phrase> It</phrase>", "region"),
    Task("grounded-vqa", "<grounding> Question:", "text"),
)

SIGLIP2_TASKS = (
    Task("image-embedding", "", "none", endpoint="embeddings"),
    Task("text-embedding", "", "text", endpoint="embeddings"),
    Task("zero-shot-classification", "", "text", endpoint="classifications"),
    Task("image-text-scoring", "", "text", endpoint="scores"),
)

BLIP_TASKS = (
    Task("caption", "", "none"),
    Task("conditional-caption", "", "text"),
)

FAMILY_TASKS: dict[str, tuple[Task, ...]] = {
    "florence2": FLORENCE2_TASKS,
    "kosmos2": KOSMOS2_TASKS,
    "siglip2": SIGLIP2_TASKS,
    "blip": BLIP_TASKS,
}


ENDPOINT_PATHS: dict[str, str] = {
    "chat": "/v1/chat/completions",
    "embeddings": "/v1/embeddings",
    "classifications": "/v1/classifications",
    "scores": "/v1/scores",
}


def endpoints_of(family: str) -> set[str]:
    """The API endpoints a family answers on."""
    return {task.endpoint for task in FAMILY_TASKS[family]}


def find_task(family: str, key: str) -> Task | None:
    """A family's task by its public name or by its chat prompt (e.g. `object-detection` or `<OD>`)."""
    for task in FAMILY_TASKS[family]:
        if key in (task.name, task.prompt) and key:
            return task
    return None
