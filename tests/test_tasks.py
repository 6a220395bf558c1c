"""Every task of every family over HTTP (task endpoints and chat) and over Ray handles, with the documented shapes."""

from __future__ import annotations

import base64
import io
import json
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from ray import serve

from families.florence2 import TASKS as FLORENCE2_TASKS
from families.kosmos2 import TASKS as KOSMOS2_TASKS
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
# Sizes differ as well as colours: the tiny Florence-2 answers every image with the same tokens, so
# only pixel coordinates (scaled to each image) tell its answers to different images apart.
SHAPES = (("red", (64, 48)), ("green", (96, 64)), ("blue", (48, 80)), ("yellow", (120, 90)))


def fal_body(task, image_url: str) -> dict:
    body = {"image_url": image_url}
    if task.input == "text":
        body["text_input"] = "a red square"
    if task.input == "region":
        body["region"] = REGION
    return body


def check_florence_result(name: str, results, size: tuple[int, int] = IMAGE_SIZE) -> None:
    """The task's documented shape; for a region task, at least one region, inside the image.

    The tiny checkpoint answers every prompt, whatever the image, with a run of words and location
    tokens, so every region task has regions to return (an empty list means parsing lost them) and
    every text task has location tokens to strip.
    """
    width, height = size
    if name in TEXT_TASKS:
        assert isinstance(results, str) and results and "<loc_" not in results
    elif name in BOX_TASKS:
        assert set(results) == {"bboxes"} and results["bboxes"], results
        for box in results["bboxes"]:
            check_box(box, size)
    elif name in POLYGON_TASKS:
        assert set(results) == {"polygons"} and results["polygons"], results
        for polygon in results["polygons"]:
            assert set(polygon) == {"points", "label"} and polygon["points"]
            for point in polygon["points"]:
                assert set(point) == {"x", "y"}
                assert 0 <= point["x"] <= width and 0 <= point["y"] <= height, point
    elif name == "ocr-with-region":
        assert set(results) == {"quad_boxes"} and results["quad_boxes"], results
        for quad in results["quad_boxes"]:
            assert {"x", "y", "w", "h", "label", "points"} == set(quad) and len(quad["points"]) == 4
            xs, ys = [p["x"] for p in quad["points"]], [p["y"] for p in quad["points"]]
            # The box is the corners' bounding rectangle, inside the image.
            assert (quad["x"], quad["y"]) == (min(xs), min(ys))
            assert (quad["w"], quad["h"]) == (max(xs) - min(xs), max(ys) - min(ys))
            check_box({k: quad[k] for k in ("x", "y", "w", "h", "label")}, size)
    else:
        assert name == "open-vocabulary-detection"
        assert set(results) <= {"bboxes", "polygons"} and results.get("bboxes"), results
        for box in results["bboxes"]:
            check_box(box, size)


def check_box(box: dict, size: tuple[int, int]) -> None:
    """A fal-shaped box that lies within an image of `size` (width, height) pixels."""
    assert set(box) == {"x", "y", "w", "h", "label"} and isinstance(box["label"], str)
    width, height = size
    assert 0 <= box["x"] and box["w"] >= 0 and box["x"] + box["w"] <= width, box
    assert 0 <= box["y"] and box["h"] >= 0 and box["y"] + box["h"] <= height, box


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
    if task.name != "referring-expression-generation":
        # The tiny random checkpoint never closes a <phrase>...<object> pair of its own: it grounds
        # nothing. (tests/test_api_http.py sends a grounded phrase in the prompt.)
        assert results["entities"] == []
    else:
        # The prompt grounds "It" in the region, so the answer holds that entity, in the region's
        # place: Kosmos-2 boxes run through the centres of a 32x32 patch grid, within a patch of it.
        (entity,) = results["entities"]
        assert entity["phrase"] == "It" and results["text"][slice(*entity["span"])] == "It"
        assert len(entity["boxes"]) == len(entity["bboxes"]) == 1
        norm, pixels = entity["boxes"][0], entity["bboxes"][0]
        patch_w, patch_h = IMAGE_SIZE[0] / 32, IMAGE_SIZE[1] / 32
        assert pixels["x"] == pytest.approx(REGION["x1"], abs=patch_w)
        assert pixels["y"] == pytest.approx(REGION["y1"], abs=patch_h)
        assert pixels["x"] + pixels["w"] == pytest.approx(REGION["x2"], abs=patch_w)
        assert pixels["y"] + pixels["h"] == pytest.approx(REGION["y2"], abs=patch_h)
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
    images = [data_url(png_bytes(size=size, color=color)) for color, size in SHAPES]
    requests, sizes = [], []
    for i, (image, (_, size)) in enumerate(zip(images, SHAPES)):
        requests.append(("/v1/vision/florence-2-large/object-detection", {"image_url": image}))
        requests.append(("/v1/vision/florence-2-large/caption", {"image_url": image, "max_tokens": 8 + i}))
        requests.append(("/v1/vision/florence-2-large/ocr-with-region", {"image_url": image}))
        requests.append(("/v1/vision/florence-2-large/caption-to-phrase-grounding", {"image_url": image, "text_input": "a square"}))
        sizes += [size] * 4
    alone, together = ask_alone_then_together(client, requests, {"florence-2-large": len(requests)})
    assert together == alone
    # Each task's four answers differ (regions in each image's own pixels, captions of their own
    # length), so an answer handed to the wrong request of a batch could not pass the check above.
    answers = defaultdict(list)
    for (path, _), body, size in zip(requests, alone, sizes, strict=True):
        task = path.rsplit("/", 1)[1]
        check_florence_result(task, body["results"], size)
        answers[task].append(json.dumps(body["results"], sort_keys=True))
    for task, task_answers in answers.items():
        assert len(set(task_answers)) == len(images), f"{task}: different images, equal answers"


def test_concurrent_embeddings_and_captions_match_their_answers_alone(client):
    images = [data_url(png_bytes(size=size, color=color)) for color, size in SHAPES]
    texts = ["a red square", "a photo of a cat", "two dogs playing in the snow", "x"]
    embeddings = [("/v1/embeddings", {"model": SIGLIP, "input": value}) for value in texts + images]
    captions = [
        ("/v1/vision/blip-image-captioning-base/conditional-caption", {"image_url": image, "text_input": "a photo of"})
        for image in images
    ]
    expected_items = {"siglip2-base-patch16-naflex": len(embeddings), "blip-image-captioning-base": len(captions)}
    alone, together = ask_alone_then_together(client, embeddings + captions, expected_items)

    vectors_alone = np.array([body["data"][0]["embedding"] for body in alone[: len(embeddings)]])
    vectors_together = np.array([body["data"][0]["embedding"] for body in together[: len(embeddings)]])
    # Batched with others, the same vector as alone, up to float rounding of a larger batch.
    assert np.allclose(vectors_together, vectors_alone, atol=1e-5)
    assert [b["usage"] for b in together[: len(embeddings)]] == [b["usage"] for b in alone[: len(embeddings)]]
    # ...and every input's vector is far from every other's, so a mix-up would fail the check above.
    for first in range(len(embeddings)):
        for second in range(first + 1, len(embeddings)):
            assert np.abs(vectors_alone[first] - vectors_alone[second]).max() > 1e-3, (first, second)

    assert together[len(embeddings):] == alone[len(embeddings):]
    blip_texts = [body["results"] for body in alone[len(embeddings):]]
    assert all(text.startswith("a photo of") for text in blip_texts)
    assert len(set(blip_texts)) >= 2, "the tiny BLIP captions these images alike: a mix-up would not show"


def test_every_operation_over_ray_handles(gateway, client, image_url):
    png = png_bytes()
    florence = serve.get_deployment_handle("florence-2-large", app_name="gigarouter")
    for task in FLORENCE2_TASKS:
        text = TEXT_TASK_INPUTS[task.input]
        region = REGION if task.input == "region" else None
        result = florence.generate.remote(image=png, task=task.name, text=text, region=region).result(timeout_s=60)
        http = client.post(f"/v1/vision/florence-2-large/{task.name}", json=fal_body(task, image_url)).json()
        assert result.results == http["results"], task.name

    kosmos = serve.get_deployment_handle("kosmos-2-patch14-224", app_name="gigarouter")
    for task in KOSMOS2_TASKS:
        text = "a red square" if task.input == "text" else None
        region = REGION if task.input == "region" else None
        result = kosmos.generate.remote(image=png, task=task.name, text=text, region=region).result(timeout_s=120)
        assert set(result.results) == {"text", "answer", "entities"}, task.name

    blip = serve.get_deployment_handle("blip-image-captioning-base", app_name="gigarouter")
    assert blip.generate.remote(image=png, text="a photo of").result(timeout_s=120).text.startswith("a photo of")

    siglip = serve.get_deployment_handle("siglip2-base-patch16-naflex", app_name="gigarouter")
    images = siglip.embed_images.remote(images=[png]).result(timeout_s=120).vectors
    texts = siglip.embed_texts.remote(texts=["a cat"]).result(timeout_s=60).vectors
    assert np.allclose(np.linalg.norm(images, axis=1), 1, atol=1e-4) and np.allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-4)
    labels = siglip.classify.remote(image=png, labels=["cat", "dog"]).result(timeout_s=60).labels
    assert {label for label, _ in labels} == {"cat", "dog"}
    scores = siglip.score.remote(images=[png, png], texts=["cat"]).result(timeout_s=60).scores
    assert np.array(scores).shape == (2, 1)
    http_embedding = client.post("/v1/embeddings", json={"model": SIGLIP, "input": [image_url]}).json()
    assert np.allclose(http_embedding["data"][0]["embedding"], images[0], atol=1e-5)


def model_runs(deployment: str) -> tuple[int, int]:
    """Items and model runs (batches) a model deployment's replica has counted so far."""
    stats = serve.get_deployment_handle(deployment, app_name="gigarouter").stats.remote().result(timeout_s=30)
    return stats["items"], stats["batches"]


def ask_alone_then_together(
    client, requests: list[tuple[str, dict]], expected_items: dict[str, int], rounds: int = 5
) -> tuple[list[dict], list[dict]]:
    """Each request alone, then all at once: both lists of answers, from a round in which every model
    deployment in `expected_items` ran that many items in fewer runs (some of them batched).

    A fast model (SigLIP2 takes milliseconds) sometimes finishes each request before the next one
    arrives; then the round proves nothing about batching and the requests go again.
    """

    def ask(request: tuple[str, dict]) -> dict:
        response = client.post(request[0], json=request[1])
        assert response.status_code == 200, response.text
        return response.json()

    alone = [ask(request) for request in requests]
    counts = {}
    for _ in range(rounds):
        before = {deployment: model_runs(deployment) for deployment in expected_items}
        with ThreadPoolExecutor(len(requests)) as pool:
            together = list(pool.map(ask, requests))
        for deployment, expected in expected_items.items():
            (items_before, runs_before), (items_after, runs_after) = before[deployment], model_runs(deployment)
            counts[deployment] = (items_after - items_before, runs_after - runs_before)
            assert counts[deployment][0] == expected, f"{deployment}: {counts[deployment][0]} items, not {expected}"
        if all(runs < items for items, runs in counts.values()):
            return alone, together
    pytest.fail(f"nothing batched in {rounds} rounds; the last one's (items, runs): {counts}")


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
