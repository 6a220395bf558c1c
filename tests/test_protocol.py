"""Request models and the chat task selection, checked before anything reaches a model."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve.errors import APIError
from serve.chat_stream import sse
from serve.protocol import ChatCompletionRequest, ClassificationRequest, EmbeddingRequest, chat_prompt


def chat_request(content, role="user") -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": role, "content": content}]})


def test_chat_prompt_takes_text_and_the_one_image():
    request = chat_request(
        [{"type": "text", "text": "<OD>"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]
    )
    prompt = chat_prompt(request)
    assert prompt.text == "<OD>" and prompt.image_url.startswith("data:") and prompt.image_param.endswith("image_url.url")


@pytest.mark.parametrize(
    "content",
    [
        "just text",
        [{"type": "text", "text": "x"}],
        [{"type": "image_url", "image_url": {"url": "a"}}, {"type": "image_url", "image_url": {"url": "b"}}],
    ],
)
def test_chat_prompt_needs_exactly_one_image(content):
    with pytest.raises(APIError) as error:
        chat_prompt(chat_request(content))
    assert error.value.status == 400 and error.value.param == "messages[0].content"


def test_chat_request_validation():
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": "m", "messages": []})
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2})
    with pytest.raises(ValidationError):
        chat_request([{"type": "audio", "audio": {}}])
    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 7, "user": "ignored"}
    )
    assert request.token_limit == 7


def test_embedding_modality_rule():
    image = "data:image/png;base64,AA=="
    assert EmbeddingRequest(model="m", input=[image, image]).resolved_modality == "image"
    assert EmbeddingRequest(model="m", input=[image, "a cat"]).resolved_modality == "text"
    assert EmbeddingRequest(model="m", input="https://example.test/x.png").resolved_modality == "text"
    assert EmbeddingRequest(model="m", input="https://example.test/x.png", modality="image").resolved_modality == "image"
    with pytest.raises(ValidationError):
        EmbeddingRequest(model="m", input=[])


def test_classification_validation():
    with pytest.raises(ValidationError):
        ClassificationRequest(model="m", image="x", labels=[])
    with pytest.raises(ValidationError):
        ClassificationRequest(model="m", image="x", labels=["a", " "])
    with pytest.raises(ValidationError):
        ClassificationRequest(model="m", image="x", labels=["a"], prompt_template="no placeholder")


def test_sse_framing():
    assert sse("[DONE]") == "data: [DONE]\n\n"
    assert sse({"a": 1}) == 'data: {"a":1}\n\n'


def test_api_error_survives_pickling():
    import pickle

    error = APIError(413, "too big", param="image", code="too_large", headers={"Retry-After": "1"})
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.status, copy.message, copy.param, copy.code, copy.headers) == (413, "too big", "image", "too_large", {"Retry-After": "1"})
    assert copy.body() == {"error": {"message": "too big", "type": "invalid_request_error", "param": "image", "code": "too_large"}}
