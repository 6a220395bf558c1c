"""The toy family's descriptor: torch-free, like the shipped ones (families/)."""

from __future__ import annotations

from families.base import Family, Task
from serve.errors import bad_request

TASKS = (
    Task("mean-colour", "<MEAN>", "none"),
    Task("region-colour", "<REGION_MEAN>", "region"),
)


def chat_task(text: str, param: str) -> tuple[Task, str]:
    """`<MEAN>` (or nothing) asks for the image's mean colour."""
    if text.strip() in ("", "<MEAN>"):
        return TOY.task("mean-colour"), ""
    raise bad_request("the toy family answers <MEAN> only in chat", param=param)


TOY = Family(
    name="toy-colour",
    tasks=TASKS,
    runtime="tests.toy_family.model:ToyColour",
    chat_task=chat_task,
    description="Mean colour of an image or of a region of it (a test family)",
)
