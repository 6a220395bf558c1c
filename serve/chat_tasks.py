"""How the text of a chat message selects a family's task, checked at the ingress before any model runs."""

from __future__ import annotations

import re
from collections.abc import Callable

from serve.catalog import FAMILY_TASKS, Task, find_task
from serve.errors import bad_request

TASK_TOKEN = re.compile(r"^\s*(<[A-Z_]+>)\s*(.*)$", re.DOTALL)
KOSMOS_DEFAULT_PROMPT = "<grounding>An image of"

ChatTask = tuple[Task, str]


def florence2_task(text: str, param: str) -> ChatTask:
    """`<TASK_TOKEN>` optionally followed by the task's text input; no text means `<CAPTION>`."""
    if not text.strip():
        return find_task("florence2", "<CAPTION>"), ""
    match = TASK_TOKEN.match(text)
    task = find_task("florence2", match.group(1)) if match else None
    if task is None:
        tokens = ", ".join(t.prompt for t in FAMILY_TASKS["florence2"])
        raise bad_request(f"Florence-2 selects its task with a task token at the start of the text, one of: {tokens}", param=param)
    rest = match.group(2).strip()
    if task.input == "none" and rest:
        raise bad_request(f"{task.prompt} takes no text input; send the task token alone", param=param)
    if task.input in ("text", "region") and not rest:
        raise bad_request(f"{task.prompt} needs a {task.input} input after the task token", param=param)
    return task, rest


def kosmos2_task(text: str, param: str) -> ChatTask:
    """The text is Kosmos-2's prompt; empty means a grounded caption."""
    return find_task("kosmos2", "grounded-caption"), text.strip() or KOSMOS_DEFAULT_PROMPT


def blip_task(text: str, param: str) -> ChatTask:
    """The text, if any, is the prefix the caption continues."""
    text = text.strip()
    return find_task("blip", "conditional-caption" if text else "caption"), text


CHAT_TASKS: dict[str, Callable[[str, str], ChatTask]] = {
    "florence2": florence2_task,
    "kosmos2": kosmos2_task,
    "blip": blip_task,
}
