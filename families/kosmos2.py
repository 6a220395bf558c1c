"""Kosmos-2: grounded captions, phrase grounding, region descriptions and grounded VQA."""

from __future__ import annotations

from families.base import Family, Task

TASKS = (
    Task("grounded-caption", "<grounding>", "optional_text", category="captioning"),
    Task("phrase-grounding", "<grounding><phrase>", "text", category="grounding"),
    Task("referring-expression-generation", "<grounding><phrase> It</phrase>", "region", category="captioning"),
    Task("grounded-vqa", "<grounding> Question:", "text", category="grounding"),
)

DEFAULT_CAPTION_PROMPT = "<grounding>An image of"


def chat_task(text: str, param: str) -> tuple[Task, str]:
    """The text is Kosmos-2's prompt; empty means a grounded caption."""
    return KOSMOS2.task("grounded-caption"), text.strip() or DEFAULT_CAPTION_PROMPT


KOSMOS2 = Family(
    name="kosmos2",
    tasks=TASKS,
    runtime="deployments.kosmos2:Kosmos2",
    chat_task=chat_task,
    description="Kosmos-2: captions and answers whose phrases are linked to boxes in the image",
)
