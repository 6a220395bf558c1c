"""A family added from the test tree alone (tests/toy_family: a descriptor, a module, one `families:`
line in the session config) is listed, validated and served end to end like the shipped ones."""

from __future__ import annotations

import pytest

from families.registry import FAMILIES, load
from serve.config import AppArgs
from tests.elastic_config import TOY_FAMILY_PATH, TOY_MODEL
from tests.helpers import assert_error, chat, data_url, local_args, png_bytes


def test_the_config_registers_the_family_by_import_path(checkpoints):
    args = local_args()
    args["checkpoint_dir"] = str(checkpoints)
    args["models"].append({"id": TOY_MODEL, "source": "siglip2", "family": "toy-colour"})
    args["families"] = [TOY_FAMILY_PATH]
    parsed = AppArgs.model_validate(args)
    assert parsed.models[-1].tasks == ["mean-colour", "region-colour"]
    assert FAMILIES["toy-colour"] is load(TOY_FAMILY_PATH)


def test_an_unknown_family_is_refused_with_the_known_ones(checkpoints):
    args = local_args()
    args["checkpoint_dir"] = str(checkpoints)
    args["models"][0]["family"] = "no-such-family"
    with pytest.raises(ValueError, match="unknown family 'no-such-family'; known: .*blip"):
        AppArgs.model_validate(args)
    with pytest.raises(ValueError, match="cannot import the family"):
        load("tests.toy_family.nowhere:TOY")


def test_the_toy_family_is_listed(client):
    card = client.get(f"/v1/models/{TOY_MODEL}").json()
    assert card["family"] == "toy-colour"
    assert card["tasks"] == ["mean-colour", "region-colour"]
    assert card["endpoints"] == ["chat"]
    assert card["replicas"] == 1


def test_the_toy_family_answers_its_tasks(client):
    # left half red, right half blue: the whole image averages both, a region sees one colour
    from PIL import Image, ImageDraw
    import io

    image = Image.new("RGB", (200, 100), (255, 0, 0))
    ImageDraw.Draw(image).rectangle([100, 0, 199, 99], fill=(0, 0, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    url = data_url(buffer.getvalue())

    whole = client.post("/v1/vision/toy-colour/mean-colour", json={"image_url": url})
    assert whole.status_code == 200, whole.text
    assert whole.json()["results"] == {"mean_rgb": [127.5, 0.0, 127.5], "width": 200, "height": 100}

    right = client.post(
        "/v1/vision/toy-colour/region-colour",
        json={"image_url": url, "region": {"x1": 100, "y1": 0, "x2": 200, "y2": 100}},
    )
    assert right.status_code == 200, right.text
    assert right.json()["results"]["mean_rgb"] == [0.0, 0.0, 255.0]

    answer = client.post("/v1/chat/completions", json=chat(TOY_MODEL, "<MEAN>", url)).json()
    assert answer["vision"]["results"]["mean_rgb"] == [127.5, 0.0, 127.5]
    assert answer["usage"]["images"] == 1


def test_the_toy_family_refuses_bad_input_through_the_shared_rules(client):
    url = data_url(png_bytes())
    assert_error(client.post("/v1/vision/toy-colour/region-colour", json={"image_url": url}), 400, "region")
    assert_error(
        client.post("/v1/vision/toy-colour/mean-colour", json={"image_url": url, "text_input": "x"}), 400, "text_input"
    )
    assert_error(client.post("/v1/vision/toy-colour/no-task", json={"image_url": url}), 404, "task")
