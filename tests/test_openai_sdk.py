"""The official `openai` SDK against the running gateway: models, chat, streaming, embeddings, errors."""

from __future__ import annotations

import numpy as np
import openai
import pytest

from tests.elastic_config import TEST_ONLY_MODELS
from tests.helpers import BLIP, FLORENCE_BASE, FLORENCE_LARGE, KOSMOS, SIGLIP


@pytest.fixture(scope="module")
def sdk(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused-locally", max_retries=0, timeout=120)


def user_message(text: str, image_url: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": image_url}}],
        }
    ]


def test_models_list(sdk):
    ids = [model.id for model in sdk.models.list() if model.id not in TEST_ONLY_MODELS]
    assert ids == [FLORENCE_LARGE, FLORENCE_BASE, KOSMOS, SIGLIP, BLIP]
    assert sdk.models.retrieve(SIGLIP).model_extra["status"] == "coming_soon"


@pytest.mark.parametrize(
    "model,prompt", [(FLORENCE_LARGE, "<OD>"), (FLORENCE_BASE, "<CAPTION>"), (KOSMOS, "<grounding>An image of"), (BLIP, "a photo of")]
)
def test_chat_completion_for_each_generative_model(sdk, image_url, model, prompt):
    completion = sdk.chat.completions.create(model=model, messages=user_message(prompt, image_url), max_tokens=16)
    assert completion.model == model
    assert isinstance(completion.choices[0].message.content, str)
    assert completion.usage.completion_tokens <= 16
    assert "results" in completion.model_extra["vision"]


def test_streaming(sdk, image_url):
    stream = sdk.chat.completions.create(
        model=FLORENCE_LARGE, messages=user_message("<CAPTION>", image_url), stream=True
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].model_extra["vision"]["results"] == text


def test_embeddings_normalised(sdk, image_url):
    texts = sdk.embeddings.create(model=SIGLIP, input=["a red square", "a dog"])
    vectors = np.array([item.embedding for item in texts.data])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    images = sdk.embeddings.create(model=SIGLIP, input=[image_url], extra_body={"modality": "image"})
    assert np.isclose(np.linalg.norm(images.data[0].embedding), 1.0, atol=1e-4)
    assert len(images.data[0].embedding) == vectors.shape[1]


def test_sdk_error_classes(sdk, image_url):
    with pytest.raises(openai.NotFoundError) as not_found:
        sdk.chat.completions.create(model="acme/unknown", messages=user_message("", image_url))
    assert not_found.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.embeddings.create(model=FLORENCE_LARGE, input="text")
    assert bad.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model=FLORENCE_LARGE, messages=user_message("<NOT_A_TASK>", image_url))
