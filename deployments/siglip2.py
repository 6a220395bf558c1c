"""SigLIP2 naflex: L2-normalised image and text embeddings, and zero-shot labels with sigmoid probabilities."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from transformers import AutoModel
from transformers.models.siglip2.image_processing_pil_siglip2 import get_image_size_for_max_num_patches

from deployments.base import Picture, VisionModel
from deployments.text_limits import context_exceeded
from families.siglip2 import SIGLIP2, Siglip2Options
from serve.contract import (
    ClassifyCall,
    Classification,
    EmbedImagesCall,
    Embeddings,
    EmbedTextsCall,
    ModelCall,
    ModelResult,
    ScoreCall,
    Scores,
    Usage,
)
from serve.errors import bad_request

# Items of work (see serve.config.BatchConfig): one per image and one per text.


@dataclass
class ImagesItem:
    images: list[Picture]
    max_num_patches: int

    @property
    def work(self) -> int:
        return len(self.images)


@dataclass
class TextsItem:
    texts: list[str]

    @property
    def work(self) -> int:
        return len(self.texts)


@dataclass
class ClassifyItem:
    image: Picture
    labels: list[str]
    prompts: list[str]
    max_num_patches: int
    tokens: int = field(default=0)

    @property
    def work(self) -> int:
        return 1 + len(self.prompts)


@dataclass
class ScoreItem:
    images: list[Picture]
    texts: list[str]
    max_num_patches: int

    @property
    def work(self) -> int:
        return len(self.images) + len(self.texts)


class Siglip2(VisionModel):
    """SigLIP2 naflex through the native `Siglip2Model`."""

    descriptor = SIGLIP2

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

    def min_image_size(self, size: tuple[int, int], max_num_patches: Any = None) -> tuple[int, int] | None:
        """Naflex resizes each image to fit `max_num_patches` patches at its own aspect ratio."""
        patch = int(self.processor.image_processor.patch_size)
        height, width = get_image_size_for_max_num_patches(size[1], size[0], patch, max_num_patches)
        return width, height

    async def pictures(self, images: tuple[Any, ...], params: list[str], patches: int) -> list[Picture]:
        return list(await asyncio.gather(*(self.picture(i, p, patches) for i, p in zip(images, params))))

    async def accept(self, call: ModelCall) -> Any:
        if isinstance(call, EmbedImagesCall):
            if not call.images:
                raise bad_request("no images to embed", param="input")
            patches = self._patches(call.max_num_patches)
            params = [f"input[{i}]" for i in range(len(call.images))]
            return ImagesItem(await self.pictures(call.images, params, patches), patches)
        if isinstance(call, EmbedTextsCall):
            # A text over `text_max_length` tokens is a 400 naming it as `params` does (the
            # request's paths, e.g. `input[3]`; `texts[i]` by default), never silently truncated.
            texts = list(call.texts)
            if not texts or any(not isinstance(t, str) or not t for t in texts):
                raise bad_request("texts must be a non-empty list of non-empty strings", param="input")
            names = list(call.params or [f"texts[{i}]" for i in range(len(texts))])
            await asyncio.to_thread(self._check_texts, texts, names)
            return TextsItem(texts)
        if isinstance(call, ClassifyCall):
            return await self._accept_classify(call)
        if isinstance(call, ScoreCall):
            # A text over `text_max_length` tokens is a 400 naming `texts[i]`; never truncated.
            texts = list(call.texts)
            if not call.images or not texts or any(not isinstance(t, str) or not t for t in texts):
                raise bad_request("scoring needs at least one image and one non-empty text", param="texts")
            patches = self._patches(call.max_num_patches)
            await asyncio.to_thread(self._check_texts, texts, [f"texts[{i}]" for i in range(len(texts))])
            params = [f"images[{i}]" for i in range(len(call.images))]
            return ScoreItem(await self.pictures(call.images, params, patches), texts, patches)
        raise self.unsupported(call)

    async def _accept_classify(self, call: ClassifyCall) -> ClassifyItem:
        """Each label in the template must fit `text_max_length` tokens, else a 400 naming `labels[i]`
        (or `prompt_template`, when the template alone leaves no room); never truncated."""
        if not call.labels:
            raise bad_request("labels must not be empty", param="labels")
        custom_template = bool(call.template)
        template = call.template or self.options.prompt_template
        if "{label}" not in template:
            raise bad_request("prompt_template must contain '{label}'", param="prompt_template")
        prompts = [template.replace("{label}", label) for label in call.labels]
        patches = self._patches(call.max_num_patches)
        await asyncio.to_thread(self._check_prompts, prompts, template, custom_template)
        picture = await self.picture(call.image, "image", patches)
        return ClassifyItem(picture, list(call.labels), prompts, patches)

    # ----- items worth more work than one run takes -----

    def split(self, item: Any, max_work: int) -> list[Any]:
        if isinstance(item, ImagesItem):
            return [replace(item, images=item.images[i : i + max_work]) for i in range(0, len(item.images), max_work)]
        if isinstance(item, TextsItem):
            return [replace(item, texts=item.texts[i : i + max_work]) for i in range(0, len(item.texts), max_work)]
        if isinstance(item, ScoreItem):
            # every part scores some images against all texts; the texts alone may exceed the cap
            step = max(1, max_work - len(item.texts))
            return [replace(item, images=item.images[i : i + step]) for i in range(0, len(item.images), step)]
        return [item]  # a classification runs whole: its labels share one softmax-free ranking

    def join(self, item: Any, results: list[ModelResult]) -> ModelResult:
        usage = Usage(requests=1, images=sum(r.usage.images for r in results))
        if isinstance(item, ScoreItem):
            # every part counted the texts' tokens: the request read them once
            usage.prompt_tokens = results[0].usage.prompt_tokens
            return Scores(scores=[row for r in results for row in r.scores], usage=usage)
        usage.prompt_tokens = sum(r.usage.prompt_tokens for r in results)
        return Embeddings(vectors=np.concatenate([r.vectors for r in results]), usage=usage)

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

    def predict(self, items: list[Any]) -> list[ModelResult]:
        if isinstance(items[0], TextsItem):
            texts = [text for item in items for text in item.texts]
            vectors, tokens = self._text_features(texts)
            return _split(vectors, [len(item.texts) for item in items], tokens, images=False)
        if isinstance(items[0], ImagesItem):
            images = [picture.image for item in items for picture in item.images]
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
        pictures = [picture.image for item in items for picture in item.images]
        image_vectors = self._image_features(pictures, items[0].max_num_patches)
        text_vectors, row, tokens = self._text_rows([t for item in items for t in item.texts])
        results, start = [], 0
        for item in items:
            images = image_vectors[start : start + len(item.images)]
            start += len(item.images)
            columns = [row[t] for t in item.texts]
            results.append(
                Scores(
                    scores=self._probabilities(images, text_vectors[columns]).tolist(),
                    usage=Usage(images=len(item.images), prompt_tokens=sum(tokens[c] for c in columns)),
                )
            )
        return results

    def _classify(self, items: list[ClassifyItem]) -> list[dict[str, Any]]:
        image_vectors = self._image_features([item.image.image for item in items], items[0].max_num_patches)
        text_vectors, row, tokens = self._text_rows([p for item in items for p in item.prompts])
        results = []
        for image_vector, item in zip(image_vectors, items):
            columns = [row[p] for p in item.prompts]
            probabilities = self._probabilities(image_vector[None], text_vectors[columns])[0].tolist()
            ranked = sorted(zip(item.labels, probabilities), key=lambda pair: -pair[1])
            results.append(
                Classification(labels=ranked, usage=Usage(images=1, prompt_tokens=sum(tokens[c] for c in columns)))
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


def _split(vectors: torch.Tensor, sizes: list[int], tokens: list[int], images: bool) -> list[Embeddings]:
    rows = vectors.cpu().numpy().astype(np.float32, copy=False)
    results, start = [], 0
    for size in sizes:
        usage = Usage(images=size if images else 0, prompt_tokens=int(sum(tokens[start : start + size])))
        results.append(Embeddings(vectors=rows[start : start + size], usage=usage))
        start += size
    return results
