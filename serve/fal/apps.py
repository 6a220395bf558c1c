"""fal app ids <-> the catalog: `{owner}/{model-name}/{task}`.

`model-name` is the model's deployment name (`florence-2-large`, `kosmos-2-patch14-224`, ...), `task`
one of its family's task endpoint names (`object-detection`, `caption`, ...), and `owner` either
`fal-ai` (so code written for fal.ai's hosted Florence-2 keeps its ids) or the model's `owned_by`
(`microsoft/florence-2-large/caption`), in any letter case. Only generative tasks have app ids:
the same set as `POST /v1/vision/{model-name}/{task}`; SigLIP2 has none (its endpoints are OpenAI's).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from families.registry import family_of
from serve.config import ModelSpec
from serve.errors import APIError

FAL_OWNER = "fal-ai"


def owners(spec: ModelSpec) -> tuple[str, ...]:
    """The owners an app id of this model may name: fal's, then the model's own."""
    own = spec.owned_by or spec.id.split("/")[0]
    return (FAL_OWNER,) if own.lower() == FAL_OWNER else (FAL_OWNER, own)


@dataclass(frozen=True)
class AppId:
    owner: str
    model_name: str
    task: str

    def __str__(self) -> str:
        return f"{self.owner}/{self.model_name}/{self.task}"


def app_ids(specs: Iterable[ModelSpec]) -> list[AppId]:
    """Every app id the catalog answers to, fal's owner first."""
    return [
        AppId(owner, spec.deployment_name, task.name)
        for spec in specs
        for owner in owners(spec)
        for task in family_of(spec.family).chat_tasks()
    ]


def app_model(models: Mapping[str, ModelSpec], owner: str, model_name: str) -> ModelSpec:
    """The model an app id's `{owner}/{model-name}` names (`models` by deployment name); 404 otherwise.
    The task is the service's to check (`GatewayService.vision_task`), as for `/v1/vision`."""
    spec = models.get(model_name)
    if spec is None or owner.lower() not in {o.lower() for o in owners(spec)}:
        served = ", ".join(f"{FAL_OWNER}/{name}" for name, s in models.items() if family_of(s.family).chat_tasks())
        raise APIError(
            404,
            f"The app '{owner}/{model_name}' does not exist. App ids are {{owner}}/{{model-name}}/{{task}} with"
            f" owner '{FAL_OWNER}' or the model's owner; the models are: {served}.",
            type="not_found_error",
            param="app_id",
            code="app_not_found",
        )
    return spec
