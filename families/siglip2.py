"""SigLIP2 naflex: image and text embeddings, zero-shot labels and image-text scores (sigmoid)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from families.base import Family, Task

TASKS = (
    Task("image-embedding", "", "none", endpoint="embeddings", category="embeddings"),
    Task("text-embedding", "", "text", endpoint="embeddings", category="embeddings"),
    Task("zero-shot-classification", "", "text", endpoint="classifications", category="zero-shot"),
    Task("image-text-scoring", "", "text", endpoint="scores", category="zero-shot"),
)


class Siglip2Options(BaseModel):
    """SigLIP2 settings under a catalog entry's `options`."""

    model_config = ConfigDict(extra="forbid")

    max_num_patches: int = Field(256, ge=1, description="default naflex patch budget")
    min_num_patches: int = Field(16, ge=1)
    max_num_patches_cap: int = Field(1024, ge=1)
    text_max_length: int = Field(
        64, ge=1, description="texts are padded to this many tokens, as in training; longer texts are refused"
    )
    prompt_template: str = "This is a photo of {label}."

    @model_validator(mode="after")
    def _bounds(self) -> Siglip2Options:
        if not self.min_num_patches <= self.max_num_patches <= self.max_num_patches_cap:
            raise ValueError("siglip2 options need min_num_patches <= max_num_patches <= max_num_patches_cap")
        if "{label}" not in self.prompt_template:
            raise ValueError("siglip2 options: prompt_template must contain '{label}'")
        return self


SIGLIP2 = Family(
    name="siglip2",
    tasks=TASKS,
    runtime="deployments.siglip2:Siglip2",
    options=Siglip2Options,
    description="SigLIP2 naflex: embeddings, zero-shot classification and image-text scores",
)
