"""SigLIP2 naflex: L2-normalised image and text embeddings, and zero-shot labels with sigmoid probabilities."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import AutoModel

from deployments.base import VisionModel, context_exceeded
from serve.errors import bad_request


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
        return self


@dataclass
class ImagesItem:
    images: list[Image.Image]
    max_num_patches: int


@dataclass
class TextsItem:
    texts: list[str]


@dataclass
class ClassifyItem:
    image: Image.Image
    labels: list[str]
    prompts: list[str]
    max_num_patches: int
    tokens: int = field(default=0)


@dataclass
class ScoreItem:
    images: list[Image.Image]
    texts: list[str]
    max_num_patches: int


class Siglip2(VisionModel):
    """SigLIP2 naflex through the native `Siglip2Model`."""

    family = "siglip2"

    def setup(self) -> None:
        self.options = Siglip2Options.model_validate(self.spec.options)
        self.load(AutoModel)
        # Texts are padded to a fixed length on the right, as SigLIP2 was trained.
        self.processor.tokenizer.padding_side = "right"
        positions = self.text_positions
        if self.options.text_max_length > positions:
            raise ValueError(
                f"siglip2 options: text_max_length {self.options.text_max_length} exceeds the text model's"
                f" {positions} position embeddings"
            )

    async def embed_images(
        self, images: list[Image.Image | bytes], max_num_patches: int | None = None
    ) -> dict[str, Any]:
        """L2-normalised embeddings of images, one row per image."""
        if not images:
            raise bad_request("no images to embed", param="input")
        pictures = [self.image(image, f"input[{i}]") for i, image in enumerate(images)]
        return await self.submit(ImagesItem(pictures, self._patches(max_num_patches)))

    async def embed_texts(self, texts: list[str], params: list[str] | None = None) -> dict[str, Any]:
        """L2-normalised embeddings of texts, one row per text.

        A text over `text_max_length` tokens is a 400 naming it as `params` does (the request's
        paths, e.g. `input[3]`; `texts[i]` by default), never silently truncated.
        """
        if not texts or any(not isinstance(t, str) or not t for t in texts):
            raise bad_request("texts must be a non-empty list of non-empty strings", param="input")
        names = params or [f"texts[{i}]" for i in range(len(texts))]
        await asyncio.to_thread(self._check_texts, list(texts), names)
        return await self.submit(TextsItem(list(texts)))

    async def classify(
        self,
        image: Image.Image | bytes,
        labels: list[str],
        template: str | None = None,
        max_num_patches: int | None = None,
    ) -> dict[str, Any]:
        """Sigmoid probability of each label for the image, highest first.

        Each label in the template must fit `text_max_length` tokens, else a 400 naming `labels[i]`
        (or `prompt_template`, when the template alone leaves no room); never truncated.
        """
        if not labels:
            raise bad_request("labels must not be empty", param="labels")
        custom_template = bool(template)
        template = template or self.options.prompt_template
        if "{label}" not in template:
            raise bad_request("prompt_template must contain '{label}'", param="prompt_template")
        prompts = [template.replace("{label}", label) for label in labels]
        picture = self.image(image)
        await asyncio.to_thread(self._check_prompts, prompts, template, custom_template)
        item = ClassifyItem(picture, list(labels), prompts, self._patches(max_num_patches))
        return await self.submit(item)

    async def score(
        self, images: list[Image.Image | bytes], texts: list[str], max_num_patches: int | None = None
    ) -> dict[str, Any]:
        """Sigmoid image-text match probabilities: one row per image, one column per text.

        A text over `text_max_length` tokens is a 400 naming `texts[i]`; never truncated.
        """
        if not images or not texts or any(not isinstance(t, str) or not t for t in texts):
            raise bad_request("scoring needs at least one image and one non-empty text", param="texts")
        pictures = [self.image(image, f"images[{i}]") for i, image in enumerate(images)]
        await asyncio.to_thread(self._check_texts, list(texts), [f"texts[{i}]" for i in range(len(texts))])
        return await self.submit(ScoreItem(pictures, list(texts), self._patches(max_num_patches)))

    # ----- text limits -----
    # SigLIP2 reads every text padded to `text_max_length` tokens (64, as trained). Its reference
    # pipeline truncates longer texts; here they are refused, so that an embedding, score or label
    # probability always describes the whole text that was sent.

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens of each text as the model would read it, special tokens included, before padding."""
        with self.counting() as processor:
            return [len(ids) for ids in processor.tokenizer(texts, padding=False, truncation=False)["input_ids"]]

    def _check_texts(self, texts: list[str], params: list[str]) -> None:
        limit = self.options.text_max_length
        for param, count in zip(params, self.token_counts(texts)):
            if count > limit:
                raise context_exceeded(
                    f"{param} is {count} tokens, but {self.spec.id} reads at most {limit} tokens of text", param
                )

    def _check_prompts(self, prompts: list[str], template: str, custom_template: bool) -> None:
        limit = self.options.text_max_length
        bare = self.token_counts([template.replace("{label}", "")])[0]
        if custom_template and bare >= limit:
            raise context_exceeded(
                f"prompt_template is {bare} tokens without a label, but {self.spec.id} reads at most {limit}"
                " tokens of text: no room is left for the label",
                "prompt_template",
            )
        for i, count in enumerate(self.token_counts(prompts)):
            if count > limit:
                raise context_exceeded(
                    f"labels[{i}] is too long: in the prompt template it makes {count} tokens, but {self.spec.id}"
                    f" reads at most {limit} tokens of text",
                    f"labels[{i}]",
                )

    def _patches(self, requested: int | None) -> int:
        if requested is None:
            return self.options.max_num_patches
        low, high = self.options.min_num_patches, self.options.max_num_patches_cap
        if not low <= requested <= high:
            raise bad_request(f"max_num_patches must be between {low} and {high}", param="max_num_patches")
        return requested

    def group_key(self, item: Any) -> Hashable:
        return (type(item).__name__, getattr(item, "max_num_patches", None))

    def predict(self, items: list[Any]) -> list[dict[str, Any]]:
        if isinstance(items[0], TextsItem):
            texts = [text for item in items for text in item.texts]
            vectors, tokens = self._text_features(texts)
            return _split(vectors, [len(item.texts) for item in items], tokens, images=False)
        if isinstance(items[0], ImagesItem):
            images = [image for item in items for image in item.images]
            vectors = self._image_features(images, items[0].max_num_patches)
            return _split(vectors, [len(item.images) for item in items], [0] * len(images), images=True)
        if isinstance(items[0], ScoreItem):
            return self._score(items)
        return self._classify(items)

    def _probabilities(self, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        """SigLIP's sigmoid match probability for every (image, text) pair."""
        logits = images @ texts.T * self.model.logit_scale.float().exp() + self.model.logit_bias.float()
        return torch.sigmoid(logits)

    def _text_rows(self, texts: list[str]) -> tuple[torch.Tensor, dict[str, int], list[int]]:
        unique = list(dict.fromkeys(texts))
        vectors, tokens = self._text_features(unique)
        return vectors, {text: i for i, text in enumerate(unique)}, tokens

    def _score(self, items: list[ScoreItem]) -> list[dict[str, Any]]:
        image_vectors = self._image_features([i for item in items for i in item.images], items[0].max_num_patches)
        text_vectors, row, tokens = self._text_rows([t for item in items for t in item.texts])
        results, start = [], 0
        for item in items:
            images = image_vectors[start : start + len(item.images)]
            start += len(item.images)
            columns = [row[t] for t in item.texts]
            results.append(
                {
                    "scores": self._probabilities(images, text_vectors[columns]).tolist(),
                    "tokens": sum(tokens[c] for c in columns),
                    "images": len(item.images),
                }
            )
        return results

    def _classify(self, items: list[ClassifyItem]) -> list[dict[str, Any]]:
        image_vectors = self._image_features([item.image for item in items], items[0].max_num_patches)
        text_vectors, row, tokens = self._text_rows([p for item in items for p in item.prompts])
        results = []
        for image_vector, item in zip(image_vectors, items):
            columns = [row[p] for p in item.prompts]
            probabilities = self._probabilities(image_vector[None], text_vectors[columns])[0].tolist()
            ranked = sorted(zip(item.labels, probabilities), key=lambda pair: -pair[1])
            results.append(
                {
                    "labels": [{"label": label, "score": score} for label, score in ranked],
                    "tokens": sum(tokens[c] for c in columns),
                }
            )
        return results

    def _image_features(self, images: list[Image.Image], max_num_patches: int) -> torch.Tensor:
        inputs = self.processor(images=images, max_num_patches=max_num_patches, return_tensors="pt")
        inputs = self.to_device(inputs)
        output = self.model.get_image_features(**inputs)
        return _normalise(output.pooler_output)

    def _text_features(self, texts: list[str]) -> tuple[torch.Tensor, list[int]]:
        inputs = self.processor(
            text=texts,
            padding="max_length",
            max_length=self.options.text_max_length,
            truncation=True,
            return_tensors="pt",
        ).to(self.device)
        output = self.model.get_text_features(**inputs)
        pad = self.processor.tokenizer.pad_token_id
        tokens = (inputs["input_ids"] != pad).sum(dim=1).tolist()
        return _normalise(output.pooler_output), tokens


def _normalise(vectors: torch.Tensor) -> torch.Tensor:
    vectors = vectors.float()
    return vectors / vectors.norm(p=2, dim=-1, keepdim=True)


def _split(vectors: torch.Tensor, sizes: list[int], tokens: list[int], images: bool) -> list[dict[str, Any]]:
    rows = vectors.cpu().numpy()
    results, start = [], 0
    for size in sizes:
        results.append(
            {
                "embeddings": rows[start : start + size],
                "tokens": int(sum(tokens[start : start + size])),
                "images": size if images else 0,
            }
        )
        start += size
    return results
