"""Florence-2 (base and large): 15 prompt tasks, fal.ai's result shapes, in pixels."""

from __future__ import annotations

import re

from families.base import Family, Task
from serve.errors import bad_request

TASKS = (
    Task("caption", "<CAPTION>", "none", category="captioning"),
    Task("detailed-caption", "<DETAILED_CAPTION>", "none", category="captioning"),
    Task("more-detailed-caption", "<MORE_DETAILED_CAPTION>", "none", category="captioning"),
    Task("object-detection", "<OD>", "none", category="detection"),
    Task("dense-region-caption", "<DENSE_REGION_CAPTION>", "none", category="detection"),
    Task("region-proposal", "<REGION_PROPOSAL>", "none", category="detection"),
    Task("caption-to-phrase-grounding", "<CAPTION_TO_PHRASE_GROUNDING>", "text", category="grounding"),
    Task("referring-expression-segmentation", "<REFERRING_EXPRESSION_SEGMENTATION>", "text", category="segmentation"),
    Task("region-to-segmentation", "<REGION_TO_SEGMENTATION>", "region", category="segmentation"),
    Task("open-vocabulary-detection", "<OPEN_VOCABULARY_DETECTION>", "text", category="detection"),
    Task("region-to-category", "<REGION_TO_CATEGORY>", "region", category="detection"),
    Task("region-to-description", "<REGION_TO_DESCRIPTION>", "region", category="captioning"),
    Task("region-to-ocr", "<REGION_TO_OCR>", "region", category="ocr"),
    Task("ocr", "<OCR>", "none", category="ocr"),
    Task("ocr-with-region", "<OCR_WITH_REGION>", "none", category="ocr"),
)

TASK_TOKEN = re.compile(r"^\s*(<[A-Z_]+>)\s*(.*)$", re.DOTALL)


def chat_task(text: str, param: str) -> tuple[Task, str]:
    """`<TASK_TOKEN>` optionally followed by the task's text input; no text means `<CAPTION>`."""
    if not text.strip():
        return FLORENCE2.task("<CAPTION>"), ""
    match = TASK_TOKEN.match(text)
    task = FLORENCE2.task(match.group(1)) if match else None
    if task is None:
        tokens = ", ".join(t.prompt for t in TASKS)
        raise bad_request(
            f"Florence-2 selects its task with a task token at the start of the text, one of: {tokens}", param=param
        )
    rest = match.group(2).strip()
    if task.input == "none" and rest:
        raise bad_request(f"{task.prompt} takes no text input; send the task token alone", param=param)
    if task.input in ("text", "region") and not rest:
        raise bad_request(f"{task.prompt} needs a {task.input} input after the task token", param=param)
    return task, rest


FLORENCE2 = Family(
    name="florence2",
    tasks=TASKS,
    runtime="deployments.florence2:Florence2",
    chat_task=chat_task,
    region_as_text=True,
    description="Florence-2: captions, detection, grounding, segmentation and OCR selected by a task prompt",
)
