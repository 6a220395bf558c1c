"""Texts longer than a model can read are 400s naming the field and the limit, over HTTP and Python
handles, and the model keeps serving: chat, task endpoints, embeddings, classifications, scores."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from ray import serve

from serve.errors import find_api_error
from tests.helpers import APP_NAME, BLIP, FLORENCE_LARGE, SIGLIP, assert_error, chat, png_bytes

LONG = " ".join(["word"] * 3000)


def positions(checkpoints, source: str) -> int:
    """The text model's position embeddings, as the tiny checkpoint's config has them."""
    return json.loads((checkpoints / source / "config.json").read_text())["text_config"]["max_position_embeddings"]


def too_long(response, param: str, limit: int) -> dict:
    error = assert_error(response, 400, param)
    assert error["code"] == "context_length_exceeded"
    assert str(limit) in error["message"], error["message"]
    return error


def test_chat_with_a_prompt_past_the_context_is_400(client, image_url, checkpoints):
    limit = positions(checkpoints, "florence-2-large")
    body = chat(FLORENCE_LARGE, f"<OPEN_VOCABULARY_DETECTION> {LONG}", image_url)
    error = too_long(client.post("/v1/chat/completions", json=body), "messages", limit)
    assert f"context of {limit} tokens" in error["message"]
    # Streaming requests are refused the same way, before any event is sent.
    too_long(client.post("/v1/chat/completions", json={**body, "stream": True}), "messages", limit)

    ok = client.post("/v1/chat/completions", json=chat(FLORENCE_LARGE, "<OPEN_VOCABULARY_DETECTION> a cat", image_url))
    assert ok.status_code == 200, ok.text


def test_chat_blip_prefix_and_answer_share_the_context(client, image_url, checkpoints):
    limit = positions(checkpoints, "blip")
    too_long(client.post("/v1/chat/completions", json=chat(BLIP, LONG, image_url)), "messages", limit)
    # No text at all, but more tokens asked for than the decoder has positions: the setting is named.
    body = chat(BLIP, "", image_url, max_completion_tokens=limit + 1)
    too_long(client.post("/v1/chat/completions", json=body), "max_completion_tokens", limit)

    ok = client.post("/v1/chat/completions", json=chat(BLIP, "a picture of", image_url, max_tokens=64))
    assert ok.status_code == 200, ok.text


def test_task_endpoint_text_input_past_the_context_is_400(client, image_url, checkpoints):
    limit = positions(checkpoints, "florence-2-large")
    body = {"image_url": image_url, "text_input": LONG}
    too_long(client.post("/v1/vision/florence-2-large/caption-to-phrase-grounding", json=body), "text_input", limit)

    kosmos_limit = positions(checkpoints, "kosmos-2")
    too_long(client.post("/v1/vision/kosmos-2-patch14-224/grounded-vqa", json=body), "text_input", kosmos_limit)

    ok = client.post("/v1/vision/florence-2-large/caption-to-phrase-grounding", json={**body, "text_input": "a cat"})
    assert ok.status_code == 200, ok.text
    ok = client.post("/v1/vision/kosmos-2-patch14-224/grounded-vqa", json={**body, "text_input": "what is red?"})
    assert ok.status_code == 200, ok.text


def test_embedding_texts_past_the_limit_are_400_not_truncated(client, checkpoints):
    limit = positions(checkpoints, "siglip2")
    too_long(client.post("/v1/embeddings", json={"model": SIGLIP, "input": ["a cat", LONG]}), "input[1]", limit)
    too_long(client.post("/v1/embeddings", json={"model": SIGLIP, "input": LONG}), "input", limit)

    ok = client.post("/v1/embeddings", json={"model": SIGLIP, "input": ["a cat", "a dog"]})
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["data"]) == 2


def test_classification_labels_and_template_past_the_limit_are_400(client, image_url, checkpoints):
    limit = positions(checkpoints, "siglip2")
    body = {"model": SIGLIP, "image": image_url, "labels": ["cat", "dog", LONG]}
    too_long(client.post("/v1/classifications", json=body), "labels[2]", limit)
    body = {"model": SIGLIP, "image": image_url, "labels": ["cat", "dog"], "prompt_template": LONG + " {label}"}
    too_long(client.post("/v1/classifications", json=body), "prompt_template", limit)

    ok = client.post("/v1/classifications", json={"model": SIGLIP, "image": image_url, "labels": ["cat", "dog"]})
    assert ok.status_code == 200, ok.text


def test_score_texts_past_the_limit_are_400(client, image_url, checkpoints):
    limit = positions(checkpoints, "siglip2")
    body = {"model": SIGLIP, "images": [image_url], "texts": ["a cat", LONG]}
    too_long(client.post("/v1/scores", json=body), "texts[1]", limit)

    ok = client.post("/v1/scores", json={**body, "texts": ["a cat", "a dog"]})
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["data"][0]) == 2


def test_python_handle_callers_get_the_400_with_argument_names(gateway, checkpoints):
    limit = positions(checkpoints, "blip")
    blip = serve.get_deployment_handle("blip-image-captioning-base", app_name=APP_NAME)
    png = png_bytes()
    with pytest.raises(Exception) as info:
        blip.generate.remote(image=png, text=LONG).result(timeout_s=120)
    error = find_api_error(info.value)
    assert error is not None, repr(info.value)
    assert (error.status, error.param, error.code) == (400, "text", "context_length_exceeded")
    assert f"context of {limit} tokens" in error.message

    siglip = serve.get_deployment_handle("siglip2-base-patch16-naflex", app_name=APP_NAME)
    with pytest.raises(Exception) as info:
        siglip.embed_texts.remote(texts=["a cat", LONG]).result(timeout_s=120)
    error = find_api_error(info.value)
    assert error is not None and (error.status, error.param) == (400, "texts[1]")

    assert blip.generate.remote(image=png, text="a photo of").result(timeout_s=120).text.startswith("a photo of")


def test_a_long_text_never_fails_the_requests_it_arrives_with(client, checkpoints):
    limit = positions(checkpoints, "siglip2")
    good = {"model": SIGLIP, "input": ["a red square"]}
    alone = client.post("/v1/embeddings", json=good)
    assert alone.status_code == 200, alone.text
    bodies = [good] * 6 + [{"model": SIGLIP, "input": [LONG]}] * 2
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda body: client.post("/v1/embeddings", json=body), bodies))
    for response in responses[:6]:
        assert response.status_code == 200, response.text
        # Batched with others, the same vector as alone (up to float rounding of a larger batch).
        assert np.allclose(response.json()["data"][0]["embedding"], alone.json()["data"][0]["embedding"], atol=1e-5)
    for response in responses[6:]:
        too_long(response, "input[0]", limit)
