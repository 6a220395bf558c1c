"""The family descriptor and the task-input rules every caller (HTTP, chat, Python handles) shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

from serve.errors import bad_request

Endpoint = Literal["chat", "embeddings", "classifications", "scores"]
TaskInput = Literal["none", "text", "region", "optional_text"]
# What the catalog page filters by (`/`): one per task.
TaskCategory = Literal[
    "captioning", "detection", "ocr", "segmentation", "grounding", "embeddings", "zero-shot", "other"
]

ENDPOINT_PATHS: dict[str, str] = {
    "chat": "/v1/chat/completions",
    "embeddings": "/v1/embeddings",
    "classifications": "/v1/classifications",
    "scores": "/v1/scores",
}


@dataclass(frozen=True)
class Task:
    """One task of a family: its public name, the prompt that selects it in chat, what input it takes, and the
    catalog category it is listed under."""

    name: str
    prompt: str
    input: TaskInput
    endpoint: Endpoint = "chat"
    category: TaskCategory = "other"


@dataclass(frozen=True)
class InputNames:
    """The caller's names of a task's inputs, so that an error names the field the caller sent."""

    text: str = "text"
    region: str = "region"


HANDLE_NAMES = InputNames()
"""Python handle callers: the argument names."""
HTTP_TASK_NAMES = InputNames(text="text_input", region="region")
"""`POST /v1/vision/{model}/{task}` bodies."""


class NoOptions(BaseModel):
    """A family without settings: `options` must be empty."""

    model_config = ConfigDict(extra="forbid")


ChatParser = Callable[[str, str], tuple[Task, str]]


@dataclass(frozen=True)
class Family:
    """What the gateway knows of a family without importing torch.

    `runtime` is the `module:Class` path of its `deployments.base.VisionModel` subclass.
    `chat_task(text, param)` picks the task (and its text input) from a chat message's text, or
    is None for a family that does not chat. `region_as_text`: a region task may take its region
    as text (Florence-2's `x1,y1,x2,y2` or `<loc_N>` tokens after the task token in chat).
    `options` validates a catalog entry's `options` when the config is loaded.
    """

    name: str
    tasks: tuple[Task, ...]
    runtime: str
    options: type[BaseModel] = NoOptions
    chat_task: ChatParser | None = None
    region_as_text: bool = False
    description: str = ""

    @property
    def endpoints(self) -> set[str]:
        """The API endpoints the family answers on."""
        return {task.endpoint for task in self.tasks}

    def task(self, key: str) -> Task | None:
        """A task by its public name or its chat prompt (e.g. `object-detection` or `<OD>`)."""
        for task in self.tasks:
            if key and key in (task.name, task.prompt):
                return task
        return None

    def chat_tasks(self) -> list[Task]:
        return [task for task in self.tasks if task.endpoint == "chat"]


def check_task_input(
    family: Family,
    task: Task,
    text: str | None,
    has_region: bool,
    names: InputNames = HANDLE_NAMES,
    region_text: bool = True,
) -> None:
    """The one place that says which inputs a task takes: a 400 naming the caller's field otherwise.

    `region_text=False` (the task endpoints, which have a `region` field) refuses a region sent as
    text even where the family reads one (`Family.region_as_text`: chat and Python handles).
    """
    text = (text or "").strip()
    as_text = family.region_as_text and region_text
    region_in_text = as_text and task.input == "region" and bool(text)
    if task.input == "text" and not text:
        raise bad_request(f"the task '{task.name}' needs {names.text}", param=names.text)
    if task.input == "region" and not (has_region or region_in_text):
        raise bad_request(
            f"the task '{task.name}' needs a {names.region} {{x1, y1, x2, y2}} in pixels", param=names.region
        )
    if text and (task.input == "none" or (task.input == "region" and not as_text)):
        raise bad_request(f"the task '{task.name}' takes no {names.text}", param=names.text)
    if has_region and task.input != "region":
        raise bad_request(f"the task '{task.name}' takes no {names.region}", param=names.region)
    if has_region and region_in_text:
        raise bad_request(
            f"the task '{task.name}' takes its region once: as {names.region} or as {names.text}", param=names.text
        )
