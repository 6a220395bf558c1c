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

from deployments.base import VisionModel
from deployments.image_inputs import Picture
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

    def prepare(self, items: list[Any]) -> _Inputs:
        """The processor's tensors for one group: its images, and its texts (each distinct text once)."""
        first = items[0]
        if isinstance(first, TextsItem):
            return self._texts(_Inputs(), [text for item in items for text in item.texts], unique=False)
        if isinstance(first, ImagesItem):
            images = [picture.image for item in items for picture in item.images]
            return _Inputs(images=self._pixels(images, first.max_num_patches))
        if isinstance(first, ScoreItem):
            inputs = _Inputs(images=self._pixels([p.image for item in items for p in item.images], first.max_num_patches))
            return self._texts(inputs, [t for item in items for t in item.texts], unique=True)
        inputs = _Inputs(images=self._pixels([item.image.image for item in items], first.max_num_patches))
        return self._texts(inputs, [p for item in items for p in item.prompts], unique=True)

    def forward(self, items: list[Any], inputs: _Inputs) -> _Inputs:
        if inputs.images is not None:
            inputs.image_vectors = _normalise(self.model.get_image_features(**inputs.images).pooler_output)
        if inputs.texts is not None:
            inputs.text_vectors = _normalise(self.model.get_text_features(**inputs.texts).pooler_output)
        return inputs

    def finish(self, items: list[Any], inputs: _Inputs) -> list[ModelResult]:
        first = items[0]
        if isinstance(first, TextsItem):
            return _split(inputs.text_vectors, [len(item.texts) for item in items], inputs.tokens, images=False)
        if isinstance(first, ImagesItem):
            sizes = [len(item.images) for item in items]
            return _split(inputs.image_vectors, sizes, [0] * sum(sizes), images=True)
        if isinstance(first, ScoreItem):
            return self._score(items, inputs)
        return self._classify(items, inputs)

    def _probabilities(self, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        """SigLIP's sigmoid match probability for every (image, text) pair."""
        logits = images @ texts.T * self.model.logit_scale.float().exp() + self.model.logit_bias.float()
        return torch.sigmoid(logits)

    def _score(self, items: list[ScoreItem], inputs: _Inputs) -> list[Scores]:
        results, start = [], 0
        for item in items:
            images = inputs.image_vectors[start : start + len(item.images)]
            start += len(item.images)
            columns = [inputs.rows[t] for t in item.texts]
            results.append(
                Scores(
                    scores=self._probabilities(images, inputs.text_vectors[columns]).tolist(),
                    usage=Usage(images=len(item.images), prompt_tokens=sum(inputs.tokens[c] for c in columns)),
                )
            )
        return results

    def _classify(self, items: list[ClassifyItem], inputs: _Inputs) -> list[Classification]:
        results = []
        for image_vector, item in zip(inputs.image_vectors, items):
            columns = [inputs.rows[p] for p in item.prompts]
            probabilities = self._probabilities(image_vector[None], inputs.text_vectors[columns])[0].tolist()
            ranked = sorted(zip(item.labels, probabilities), key=lambda pair: -pair[1])
            usage = Usage(images=1, prompt_tokens=sum(inputs.tokens[c] for c in columns))
            results.append(Classification(labels=ranked, usage=usage))
        return results

    def _pixels(self, images: list[Any], max_num_patches: int) -> Any:
        return self.to_device(self.processor(images=images, max_num_patches=max_num_patches, return_tensors="pt"))

    def _texts(self, inputs: _Inputs, texts: list[str], unique: bool) -> _Inputs:
        """Tokenized texts (padded to `text_max_length`, as trained) with each row's token count;
        `unique`: each distinct text once, `rows` mapping a text to its row."""
        if unique:
            texts = list(dict.fromkeys(texts))
            inputs.rows = {text: i for i, text in enumerate(texts)}
        tokenized = self.processor(
            text=texts,
            padding="max_length",
            max_length=self.options.text_max_length,
            truncation=True,
            return_tensors="pt",
        )
        pad = self.processor.tokenizer.pad_token_id
        inputs.tokens = (tokenized["input_ids"] != pad).sum(dim=1).tolist()
        inputs.texts = tokenized.to(self.device)
        return inputs


@dataclass
class _Inputs:
    """One group's way through the stages: the processor's tensors, then the model's vectors."""

    images: Any = None
    texts: Any = None
    rows: dict[str, int] = field(default_factory=dict)
    tokens: list[int] = field(default_factory=list)
    image_vectors: torch.Tensor | None = None
    text_vectors: torch.Tensor | None = None


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
