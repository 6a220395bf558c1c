"""Images cross Ray encoded: a 12 MP photo reaches the replica as its JPEG bytes, is decoded there at the
scale the processor needs, and answers in pixels of the photo as sent; the operator's limits hold there too."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from ray import serve

from serve.errors import find_api_error
from tests.elastic_config import OPERATOR_MAX_SIDE
from tests.helpers import APP_NAME, assert_error, data_url
from tests.test_model_calls import photo

WIDTH, HEIGHT = 4032, 3024


@pytest.fixture(scope="module")
def big_photo() -> bytes:
    return photo((WIDTH, HEIGHT))


@pytest.fixture(scope="module")
def florence():
    return serve.get_deployment_handle("florence-2-large", app_name=APP_NAME)


def test_a_photo_crosses_as_bytes_and_boxes_are_in_its_pixels(client, florence, big_photo):
    url = data_url(big_photo, "image/jpeg")
    response = client.post("/v1/vision/florence-2-large/object-detection", json={"image_url": url, "max_tokens": 64})
    assert response.status_code == 200, response.text
    seen = florence.stats.remote().result(timeout_s=30)["last_image"]
    assert seen["arrived_as"] == "EncodedImage" and seen["bytes"] == len(big_photo)
    assert seen["size"] == [WIDTH, HEIGHT]
    assert seen["decoded"][0] < WIDTH and seen["decoded"][1] < HEIGHT, "decoded at a reduced scale"
    for box in response.json()["results"]["bboxes"]:
        assert 0 <= box["x"] <= box["x"] + box["w"] <= WIDTH + 1e-3
        assert 0 <= box["y"] <= box["y"] + box["h"] <= HEIGHT + 1e-3

    # a region at the photo's far corner is valid in its own pixels (not in the decoded image's)
    corner = {"x1": WIDTH - 500, "y1": HEIGHT - 400, "x2": WIDTH, "y2": HEIGHT}
    response = client.post(
        "/v1/vision/florence-2-large/region-to-category", json={"image_url": url, "region": corner, "max_tokens": 8}
    )
    assert response.status_code == 200, response.text
    outside = {**corner, "x2": WIDTH + 1}
    assert_error(
        client.post("/v1/vision/florence-2-large/region-to-category", json={"image_url": url, "region": outside}),
        400,
        "region",
    )


def test_the_operators_image_limits_apply_in_the_replica(client, florence):
    wide = io.BytesIO()
    Image.new("RGB", (OPERATOR_MAX_SIDE + 100, 4), "white").save(wide, format="PNG")
    # through HTTP the gateway refuses it; from a Python handle, the replica does, by the same limit
    assert_error(client.post("/v1/chat/completions", json={
        "model": "microsoft/Florence-2-large",
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(wide.getvalue())}}]}],
    }), 413)
    with pytest.raises(Exception) as raised:
        florence.generate.remote(image=wide.getvalue(), task="caption").result(timeout_s=60)
    error = find_api_error(raised.value)
    assert error is not None and error.status == 413 and f"{OPERATOR_MAX_SIDE} pixels per side" in error.message
