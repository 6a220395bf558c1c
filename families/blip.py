"""BLIP: unconditional captions, and conditional captions that continue a text prefix."""

from __future__ import annotations

from families.base import Family, Task

TASKS = (
    Task("caption", "", "none", category="captioning"),
    Task("conditional-caption", "", "text", category="captioning"),
)


def chat_task(text: str, param: str) -> tuple[Task, str]:
    """The text, if any, is the prefix the caption continues."""
    text = text.strip()
    return BLIP.task("conditional-caption" if text else "caption"), text


BLIP = Family(
    name="blip",
    tasks=TASKS,
    runtime="deployments.blip:Blip",
    chat_task=chat_task,
    description="BLIP: image captions, optionally continuing a prefix",
)
