"""End to end over real HTTP: every endpoint of the gateway against the tiny models on Ray Serve."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from tests.elastic_config import TEST_ONLY_MODELS
from tests.helpers import (
    BLIP,
    COMING_SOON,
    FLORENCE_BASE,
    FLORENCE_LARGE,
    KOSMOS,
    SIGLIP,
    assert_error,
    chat,
    data_url,
    png_bytes,
)


def assert_box_inside(box: dict, size: tuple[int, int]) -> None:
    """A fal-shaped box that lies within an image of `size` (width, height) pixels."""
    assert set(box) == {"x", "y", "w", "h", "label"}
    assert isinstance(box["label"], str)
    width, height = size
    assert 0 <= box["x"] and box["w"] >= 0 and box["x"] + box["w"] <= width, box
    assert 0 <= box["y"] and box["h"] >= 0 and box["y"] + box["h"] <= height, box


def test_models_list_at_start(gateway):
    models = gateway.initial_models
    assert set(models) - TEST_ONLY_MODELS == {FLORENCE_LARGE, *COMING_SOON}
    assert models[FLORENCE_LARGE]["status"] == "live"
    assert models[FLORENCE_LARGE]["replicas"] == 1
    for model_id in COMING_SOON:
        assert models[model_id]["status"] == "coming_soon"
        assert models[model_id]["replicas"] == 0, model_id
        assert models[model_id]["state"] == "cold"
    assert models[FLORENCE_BASE]["price_per_1k_images"] == 0.094
    assert models[KOSMOS]["price_per_1k_images"] == 0.626
    assert models[BLIP]["price_per_1k_images"] is None
    assert "object-detection" in models[FLORENCE_LARGE]["tasks"]
    assert len(models[FLORENCE_LARGE]["tasks"]) == 15
    assert models[FLORENCE_LARGE]["license"] == "MIT"


def test_model_card_and_openapi(client):
    card = client.get(f"/v1/models/{SIGLIP}").json()
    assert card["id"] == SIGLIP and card["object"] == "model" and card["owned_by"] == "google"
    assert card["endpoints"] == ["classifications", "embeddings", "scores"]
    assert_error(client.get("/v1/models/acme/nope"), 404, "model")
    # the card answers to the same names inference does: the id or the deployment name
    assert client.get("/v1/models/siglip2-base-patch16-naflex").json()["id"] == SIGLIP
    spec = client.get("/openapi.json").json()
    assert "/v1/chat/completions" in spec["paths"] and "/v1/embeddings" in spec["paths"]
    chat_responses = spec["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "422" not in chat_responses, "validation errors are answered with 400, and documented so"
    assert chat_responses["400"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/ErrorResponse"
    assert not any("422" in op["responses"] for path in spec["paths"].values() for op in path.values())
    envelope = spec["components"]["schemas"]["ErrorResponse"]["properties"]["error"]
    assert set(envelope["required"]) == {"message", "type", "param", "code"}
    invalid = client.post("/v1/chat/completions", json={"model": FLORENCE_LARGE})
    assert invalid.status_code == 400 and set(invalid.json()["error"]) == set(envelope["required"])
    assert client.get("/docs").status_code == 200


def test_florence_caption(client, image_url):
    response = client.post("/v1/chat/completions", json=chat(FLORENCE_LARGE, "<CAPTION>", image_url))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == FLORENCE_LARGE
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(body["choices"][0]["message"]["content"], str)
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert body["vision"]["task"] == "caption"
    assert body["vision"]["results"] == body["choices"][0]["message"]["content"]
    assert body["usage"]["images"] == 1 and body["usage"]["prompt_tokens"] > 0
    assert body["usage"]["completion_tokens"] <= 32


def test_florence_object_detection_structure(client, image_url):
    response = client.post("/v1/chat/completions", json=chat(FLORENCE_LARGE, "<OD>", image_url, max_tokens=24))
    assert response.status_code == 200, response.text
    body = response.json()
    results = body["vision"]["results"]
    assert body["vision"]["task"] == "object-detection"
    assert set(results) == {"bboxes"}
    # The tiny checkpoint answers <OD> with location tokens for any image, so boxes come back.
    assert results["bboxes"], "no boxes parsed from an answer that holds location tokens"
    for box in results["bboxes"]:
        assert_box_inside(box, (64, 48))
    assert json.loads(body["choices"][0]["message"]["content"]) == results


def test_florence_text_task_and_defaults(client, image_url):
    grounded = client.post(
        "/v1/chat/completions", json=chat(FLORENCE_LARGE, "<CAPTION_TO_PHRASE_GROUNDING> a red square", image_url)
    )
    assert grounded.status_code == 200, grounded.text
    grounded_results = grounded.json()["vision"]["results"]
    assert set(grounded_results) == {"bboxes"} and grounded_results["bboxes"]
    for box in grounded_results["bboxes"]:
        assert_box_inside(box, (64, 48))
    plain = client.post("/v1/chat/completions", json=chat(FLORENCE_LARGE, "", image_url))
    assert plain.status_code == 200 and plain.json()["vision"]["task"] == "caption"


def test_florence_bad_prompts_are_400(client, image_url):
    assert_error(client.post("/v1/chat/completions", json=chat(FLORENCE_LARGE, "what is this?", image_url)), 400, "messages")
    assert_error(client.post("/v1/chat/completions", json=chat(FLORENCE_LARGE, "<OD> cars", image_url)), 400, "messages")
    assert_error(
        client.post("/v1/chat/completions", json=chat(FLORENCE_LARGE, "<OPEN_VOCABULARY_DETECTION>", image_url)),
        400,
        "messages",
    )


def test_streaming_is_valid_sse(client, image_url):
    request = chat(FLORENCE_LARGE, "<CAPTION>", image_url, stream=True, stream_options={"include_usage": True})
    with client.stream("POST", "/v1/chat/completions", json=request) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["vision"]["results"] == text
    assert chunks[-1]["usage"]["images"] == 1
    alone = client.post("/v1/chat/completions", json=chat(FLORENCE_LARGE, "<CAPTION>", image_url)).json()
    assert alone["choices"][0]["message"]["content"] == text


def test_kosmos_grounded_caption_wakes_from_zero(client, image_url):
    response = client.post("/v1/chat/completions", json=chat(KOSMOS, "<grounding>An image of", image_url))
    assert response.status_code == 200, response.text
    results = response.json()["vision"]["results"]
    assert set(results) == {"text", "answer", "entities"}
    assert results["text"] == response.json()["choices"][0]["message"]["content"]
    assert results["text"].startswith("An image of")
    # The tiny random checkpoint never closes a <phrase>...<object> pair of its own, so its caption
    # grounds nothing; the grounded prompt below brings an entity of its own.
    assert results["entities"] == []
    assert client.get(f"/v1/models/{KOSMOS}").json()["replicas"] >= 1


def test_kosmos_grounded_phrase_in_the_prompt_comes_back_as_an_entity(client, image_url):
    # Patch 264 is row 8, column 8 of Kosmos-2's 32x32 grid; patch 787 is row 24, column 19.
    prompt = "<grounding>An image of<phrase> a red square</phrase><object><patch_index_0264><patch_index_0787></object>"
    response = client.post("/v1/chat/completions", json=chat(KOSMOS, prompt, image_url))
    assert response.status_code == 200, response.text
    results = response.json()["vision"]["results"]
    assert results["text"].startswith("An image of a red square")
    assert "<phrase>" not in results["text"] and "<patch_index" not in results["text"]
    (entity,) = results["entities"]
    assert set(entity) == {"phrase", "span", "boxes", "bboxes"}
    assert entity["phrase"] == "a red square" and results["text"][slice(*entity["span"])] == "a red square"
    # Boxes run through patch centres, normalised to the image; the pixel boxes scale them by 64x48.
    assert entity["boxes"] == [{"x1": 8.5 / 32, "y1": 8.5 / 32, "x2": 19.5 / 32, "y2": 24.5 / 32}]
    (pixels,) = entity["bboxes"]
    assert (pixels["x"], pixels["y"]) == pytest.approx((8.5 / 32 * 64, 8.5 / 32 * 48))
    assert (pixels["w"], pixels["h"]) == pytest.approx((11 / 32 * 64, 16 / 32 * 48))
    assert pixels["label"] == "a red square"


def test_blip_caption_and_prefix(client, image_url):
    plain = client.post("/v1/chat/completions", json=chat(BLIP, "", image_url))
    assert plain.status_code == 200, plain.text
    assert plain.json()["vision"]["task"] == "caption"
    prefixed = client.post("/v1/chat/completions", json=chat(BLIP, "a picture of", image_url))
    assert prefixed.status_code == 200, prefixed.text
    body = prefixed.json()
    assert body["vision"]["task"] == "conditional-caption"
    assert body["choices"][0]["message"]["content"].startswith("a picture of")


def test_embeddings_text_and_image(client, image_url):
    texts = client.post("/v1/embeddings", json={"model": SIGLIP, "input": ["a red square", "a cat"]})
    assert texts.status_code == 200, texts.text
    body = texts.json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1]
    vectors = np.array([d["embedding"] for d in body["data"]])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert not np.allclose(vectors[0], vectors[1], atol=1e-3), "two different texts got one vector"
    assert body["usage"]["prompt_tokens"] > 0

    other = data_url(png_bytes(color="blue"))
    images = client.post("/v1/embeddings", json={"model": SIGLIP, "input": [image_url, other]}).json()
    image_vectors = np.array([d["embedding"] for d in images["data"]])
    assert image_vectors.shape[0] == 2 and images["usage"]["images"] == 2
    assert np.allclose(np.linalg.norm(image_vectors, axis=1), 1.0, atol=1e-4)
    assert not np.allclose(image_vectors[0], image_vectors[1], atol=1e-3), "a red and a blue image got one vector"

    encoded = client.post(
        "/v1/embeddings", json={"model": SIGLIP, "input": [image_url, other], "encoding_format": "base64"}
    ).json()
    decoded = np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in encoded["data"]])
    assert np.allclose(decoded, image_vectors, atol=1e-6)


def test_embeddings_image_modality_switch(client, image_url):
    as_image = client.post("/v1/embeddings", json={"model": SIGLIP, "input": image_url, "modality": "image"}).json()
    as_text = client.post("/v1/embeddings", json={"model": SIGLIP, "input": "a red square", "modality": "text"}).json()
    assert as_image["usage"]["images"] == 1 and as_text["usage"]["images"] == 0
    patches = client.post(
        "/v1/embeddings", json={"model": SIGLIP, "input": image_url, "max_num_patches": 16}
    )
    assert patches.status_code == 200
    assert_error(client.post("/v1/embeddings", json={"model": SIGLIP, "input": image_url, "max_num_patches": 100000}), 400, "max_num_patches")


def test_classifications_are_sigmoid(client, image_url):
    labels = ["red square", "cat", "car"]
    response = client.post("/v1/classifications", json={"model": SIGLIP, "image": image_url, "labels": labels})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert sorted(d["label"] for d in data) == sorted(labels)
    scores = [d["score"] for d in data]
    assert scores == sorted(scores, reverse=True)
    assert all(0 < s < 1 for s in scores)
    assert abs(sum(scores) - 1) > 1e-3 or len(scores) == 1  # independent sigmoids, not a softmax
    single = client.post("/v1/classifications", json={"model": SIGLIP, "image": image_url, "labels": ["car"]}).json()
    assert single["data"][0]["score"] == pytest.approx([d for d in data if d["label"] == "car"][0]["score"], abs=1e-5)


def test_errors_use_the_openai_envelope(client, image_url):
    assert_error(client.post("/v1/chat/completions", json=chat("acme/unknown", "", image_url)), 404, "model")
    assert_error(client.post("/v1/embeddings", json={"model": FLORENCE_LARGE, "input": "x"}), 400, "model")
    assert_error(client.post("/v1/chat/completions", json=chat(SIGLIP, "", image_url)), 400, "model")
    assert_error(client.post("/v1/chat/completions", json={"model": BLIP, "messages": []}), 400, "messages")
    assert_error(client.post("/v1/chat/completions", json=chat(BLIP, "", "data:image/png;base64,!!!")), 400)
    assert_error(client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert_error(client.post("/v1/classifications", json={"model": SIGLIP, "image": image_url, "labels": []}), 400, "labels")
    assert_error(client.get("/v1/nothing-here"), 404)
    no_image = {"model": BLIP, "messages": [{"role": "user", "content": "hello"}]}
    assert_error(client.post("/v1/chat/completions", json=no_image), 400, "messages[0].content")


def test_interest_is_counted_in_the_listing(client):
    before = client.get(f"/v1/models/{FLORENCE_BASE}").json()["demand"]
    response = client.post(f"/v1/models/{FLORENCE_BASE}/interest")
    assert response.status_code == 200, response.text
    assert response.json() == {"id": FLORENCE_BASE, "object": "model.interest", "demand": before + 1}
    listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert listed[FLORENCE_BASE]["demand"] == before + 1
    assert_error(client.post("/v1/models/acme/unknown/interest"), 404, "model")
