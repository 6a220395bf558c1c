"""Every task of every family over HTTP (task endpoints and chat) and over Ray handles, with the documented shapes."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from ray import serve

from serve.catalog import FLORENCE2_TASKS, KOSMOS2_TASKS
from tests.helpers import FLORENCE_LARGE, SIGLIP, assert_error, chat, data_url, png_bytes

IMAGE_SIZE = (64, 48)
REGION = {"x1": 8, "y1": 6, "x2": 40, "y2": 30}
TEXT_TASK_INPUTS = {"text": "a red square", "region": None, "none": None, "optional_text": None}

BOX_TASKS = {"object-detection", "dense-region-caption", "region-proposal", "caption-to-phrase-grounding"}
POLYGON_TASKS = {"referring-expression-segmentation", "region-to-segmentation"}
TEXT_TASKS = {
    "caption", "detailed-caption", "more-detailed-caption", "ocr",
    "region-to-category", "region-to-description", "region-to-ocr",
}


def fal_body(task, image_url: str) -> dict:
    body = {"image_url": image_url}
    if task.input == "text":
        body["text_input"] = "a red square"
    if task.input == "region":
        body["region"] = REGION
    return body


def check_florence_result(name: str, results) -> None:
    if name in TEXT_TASKS:
        assert isinstance(results, str) and "<loc_" not in results
    elif name in BOX_TASKS:
        assert set(results) == {"bboxes"}
        for box in results["bboxes"]:
            assert set(box) == {"x", "y", "w", "h", "label"}
            assert box["w"] >= 0 and box["h"] >= 0
            assert 0 <= box["x"] <= IMAGE_SIZE[0] and 0 <= box["y"] <= IMAGE_SIZE[1]
    elif name in POLYGON_TASKS:
        assert set(results) == {"polygons"}
        for polygon in results["polygons"]:
            assert set(polygon) == {"points", "label"}
            assert all(set(p) == {"x", "y"} for p in polygon["points"])
    elif name == "ocr-with-region":
        assert set(results) == {"quad_boxes"}
        for quad in results["quad_boxes"]:
            assert {"x", "y", "w", "h", "label", "points"} == set(quad) and len(quad["points"]) == 4
    else:
        assert name == "open-vocabulary-detection"
        assert set(results) <= {"bboxes", "polygons"} and "bboxes" in results


@pytest.mark.parametrize("task", FLORENCE2_TASKS, ids=lambda t: t.name)
def test_florence_task_endpoint(client, image_url, task):
    response = client.post(f"/v1/vision/florence-2-large/{task.name}", json=fal_body(task, image_url))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"results"}
    check_florence_result(task.name, body["results"])


@pytest.mark.parametrize("task", FLORENCE2_TASKS, ids=lambda t: t.name)
def test_florence_task_through_chat(client, image_url, task):
    text = task.prompt
    if task.input == "text":
        text += "a red square"
    if task.input == "region":
        text += "{x1},{y1},{x2},{y2}".format(**REGION)
    response = client.post("/v1/chat/completions", json=chat(FLORENCE_LARGE, text, image_url))
    assert response.status_code == 200, response.text
    vision = response.json()["vision"]
    assert vision["task"] == task.name
    check_florence_result(task.name, vision["results"])
    same = client.post(f"/v1/vision/florence-2-large/{task.name}", json=fal_body(task, image_url)).json()
    assert vision["results"] == same["results"]


@pytest.mark.parametrize("task", KOSMOS2_TASKS, ids=lambda t: t.name)
def test_kosmos_tasks(client, image_url, task):
    body = {"image_url": image_url}
    if task.input == "text":
        body["text_input"] = "What is in the picture?" if task.name == "grounded-vqa" else "a red square"
    if task.input == "region":
        body["region"] = REGION
    response = client.post(f"/v1/vision/kosmos-2-patch14-224/{task.name}", json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert set(results) == {"text", "answer", "entities"}
    for entity in results["entities"]:
        start, end = entity["span"]
        assert results["text"][start:end] == entity["phrase"]
        for norm, pixels in zip(entity["boxes"], entity["bboxes"]):
            assert pixels["x"] == pytest.approx(norm["x1"] * IMAGE_SIZE[0])
            assert pixels["h"] == pytest.approx((norm["y2"] - norm["y1"]) * IMAGE_SIZE[1])
    if task.name == "grounded-vqa":
        assert results["text"].startswith("Question: What is in the picture? Answer:")
    if task.name == "phrase-grounding":
        assert results["text"].startswith("a red square")


def test_blip_task_endpoints(client, image_url):
    plain = client.post("/v1/vision/blip-image-captioning-base/caption", json={"image_url": image_url})
    assert plain.status_code == 200 and isinstance(plain.json()["results"], str)
    prefixed = client.post(
        "/v1/vision/blip-image-captioning-base/conditional-caption",
        json={"image_url": image_url, "text_input": "a photo of"},
    )
    assert prefixed.status_code == 200 and prefixed.json()["results"].startswith("a photo of")


def test_image_text_scores_are_a_sigmoid_matrix(client, image_url):
    other = data_url(png_bytes(color="blue"))
    texts = ["a red square", "a blue square", "a cat"]
    response = client.post("/v1/scores", json={"model": SIGLIP, "images": [image_url, other], "texts": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    matrix = np.array(body["data"])
    assert matrix.shape == (2, 3) and ((matrix > 0) & (matrix < 1)).all()
    assert body["usage"]["images"] == 2
    single = client.post("/v1/scores", json={"model": SIGLIP, "images": [other], "texts": ["a cat"]}).json()
    assert single["data"][0][0] == pytest.approx(matrix[1, 2], abs=1e-5)


def test_task_endpoint_errors(client, image_url):
    assert_error(client.post("/v1/vision/florence-2-large/no-such-task", json={"image_url": image_url}), 404, "task")
    assert_error(client.post("/v1/vision/nobody/caption", json={"image_url": image_url}), 404, "model")
    assert_error(client.post("/v1/vision/siglip2-base-patch16-naflex/caption", json={"image_url": image_url}), 404, "task")
    assert_error(client.post("/v1/vision/florence-2-large/region-to-category", json={"image_url": image_url}), 400, "region")
    outside = {"image_url": image_url, "region": {"x1": 10, "y1": 10, "x2": 500, "y2": 20}}
    assert_error(client.post("/v1/vision/florence-2-large/region-to-category", json=outside), 400, "region")
    flipped = {"image_url": image_url, "region": {"x1": 30, "y1": 10, "x2": 20, "y2": 20}}
    assert_error(client.post("/v1/vision/florence-2-large/region-to-category", json=flipped), 400, "region")
    assert_error(client.post("/v1/vision/florence-2-large/caption-to-phrase-grounding", json={"image_url": image_url}), 400, "text_input")
    assert_error(client.post("/v1/vision/florence-2-large/caption", json={"image_url": image_url, "text_input": "x"}), 400, "text_input")
    assert_error(client.post("/v1/vision/florence-2-large/caption", json={"image_url": image_url, "max_tokens": 100000}), 400, "max_tokens")
    assert_error(client.post("/v1/vision/florence-2-large/caption", json={"image_url": image_url, "num_beams": 99}), 400, "num_beams")


def test_annotated_image_is_returned(client, image_url):
    response = client.post(
        "/v1/vision/florence-2-large/object-detection", json={"image_url": image_url, "include_image": True}
    )
    assert response.status_code == 200, response.text
    image = response.json()["image"]
    assert image["content_type"] == "image/png" and (image["width"], image["height"]) == IMAGE_SIZE
    assert image["url"].startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(image["url"].split(",", 1)[1])))
    assert decoded.format == "PNG" and decoded.size == IMAGE_SIZE


def test_mixed_concurrent_tasks_match_their_answers_alone(client):
    images = [data_url(png_bytes(color=c)) for c in ("red", "green", "blue", "yellow")]
    requests = []
    for i, image in enumerate(images):
        requests.append(("/v1/vision/florence-2-large/object-detection", {"image_url": image}))
        requests.append(("/v1/vision/florence-2-large/caption", {"image_url": image, "max_tokens": 8 + i}))
        requests.append(("/v1/vision/florence-2-large/ocr", {"image_url": image}))
        requests.append(("/v1/vision/florence-2-large/caption-to-phrase-grounding", {"image_url": image, "text_input": "a square"}))
    alone = [client.post(path, json=body).json() for path, body in requests]
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(lambda r: client.post(r[0], json=r[1]).json(), requests))
    assert together == alone


def test_every_operation_over_ray_handles(gateway, client, image_url):
    png = png_bytes()
    florence = serve.get_deployment_handle("florence-2-large", app_name="gigarouter")
    for task in FLORENCE2_TASKS:
        text = TEXT_TASK_INPUTS[task.input]
        region = REGION if task.input == "region" else None
        result = florence.generate.remote(image=png, task=task.name, text=text, region=region).result(timeout_s=60)
        http = client.post(f"/v1/vision/florence-2-large/{task.name}", json=fal_body(task, image_url)).json()
        assert result["results"] == http["results"], task.name

    kosmos = serve.get_deployment_handle("kosmos-2-patch14-224", app_name="gigarouter")
    for task in KOSMOS2_TASKS:
        text = "a red square" if task.input == "text" else None
        region = REGION if task.input == "region" else None
        result = kosmos.generate.remote(image=png, task=task.name, text=text, region=region).result(timeout_s=120)
        assert set(result["results"]) == {"text", "answer", "entities"}, task.name

    blip = serve.get_deployment_handle("blip-image-captioning-base", app_name="gigarouter")
    assert blip.generate.remote(image=png, text="a photo of").result(timeout_s=120)["text"].startswith("a photo of")

    siglip = serve.get_deployment_handle("siglip2-base-patch16-naflex", app_name="gigarouter")
    images = siglip.embed_images.remote(images=[png]).result(timeout_s=120)["embeddings"]
    texts = siglip.embed_texts.remote(texts=["a cat"]).result(timeout_s=60)["embeddings"]
    assert np.allclose(np.linalg.norm(images, axis=1), 1, atol=1e-4) and np.allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-4)
    labels = siglip.classify.remote(image=png, labels=["cat", "dog"]).result(timeout_s=60)["labels"]
    assert {entry["label"] for entry in labels} == {"cat", "dog"}
    scores = siglip.score.remote(images=[png, png], texts=["cat"]).result(timeout_s=60)["scores"]
    assert np.array(scores).shape == (2, 1)
    http_embedding = client.post("/v1/embeddings", json={"model": SIGLIP, "input": [image_url]}).json()
    assert np.allclose(http_embedding["data"][0]["embedding"], images[0], atol=1e-5)


def test_concurrent_requests_share_model_runs(client, image_url):
    florence = serve.get_deployment_handle("florence-2-large", app_name="gigarouter")
    before = florence.stats.remote().result(timeout_s=30)
    body = {"image_url": image_url}
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda _: client.post("/v1/vision/florence-2-large/caption", json=body).status_code, range(16)))
    assert statuses == [200] * 16
    after = florence.stats.remote().result(timeout_s=30)
    items, runs = after["items"] - before["items"], after["batches"] - before["batches"]
    assert items == 16 and runs < items  # some requests ran together in one forward pass


def test_model_replicas_run_with_the_configured_threads_and_wait_policy():
    stats = serve.get_deployment_handle("florence-2-large", app_name="gigarouter").stats.remote().result(timeout_s=30)
    assert stats["omp_wait_policy"] == "PASSIVE"  # cpu_thread_wait: passive in local.yaml
    assert stats["torch_threads"] >= 1
