"""Parsing model output: Florence-2 regions and fal shapes, Kosmos-2 entities, through the real processors."""

from __future__ import annotations

import pytest

from deployments.florence2 import region_tokens, to_fal
from serve.errors import APIError


def test_region_tokens_quantise_to_1000_bins():
    assert region_tokens({"x1": 0, "y1": 0, "x2": 640, "y2": 480}, (640, 480)) == "<loc_0><loc_0><loc_999><loc_999>"
    assert region_tokens({"x1": 64, "y1": 48, "x2": 320, "y2": 240}, (640, 480)) == "<loc_100><loc_100><loc_500><loc_500>"


@pytest.mark.parametrize(
    "region",
    [{"x1": 10, "y1": 0, "x2": 5, "y2": 10}, {"x1": 0, "y1": 0, "x2": 700, "y2": 10}, {"x1": 0, "y1": 0, "x2": 10}],
)
def test_bad_regions_are_400(region):
    with pytest.raises(APIError) as error:
        region_tokens(region, (640, 480))
    assert error.value.status == 400 and error.value.param == "region"


def test_boxes_to_fal():
    parsed = {"bboxes": [[10.0, 20.0, 110.0, 220.0]], "labels": ["car"]}
    assert to_fal(parsed) == {"bboxes": [{"x": 10.0, "y": 20.0, "w": 100.0, "h": 200.0, "label": "car"}]}


def test_quads_keep_their_corners():
    parsed = {"quad_boxes": [[10, 20, 110, 20, 110, 60, 10, 60]], "labels": ["</s>STOP"]}
    quad = to_fal(parsed)["quad_boxes"][0]
    assert (quad["x"], quad["y"], quad["w"], quad["h"], quad["label"]) == (10, 20, 100, 40, "STOP")
    assert quad["points"][2] == {"x": 110, "y": 60}


def test_polygons_to_points():
    parsed = {"polygons": [[[1, 2, 3, 4, 5, 6]]], "labels": [""]}
    assert to_fal(parsed) == {"polygons": [{"points": [{"x": 1, "y": 2}, {"x": 3, "y": 4}, {"x": 5, "y": 6}], "label": ""}]}


def test_open_vocabulary_mix_and_text():
    parsed = {"bboxes": [[0, 0, 2, 2]], "bboxes_labels": ["cat"], "polygons": [], "polygons_labels": []}
    assert to_fal(parsed) == {"bboxes": [{"x": 0, "y": 0, "w": 2, "h": 2, "label": "cat"}]}
    assert to_fal("a caption") == "a caption"


def test_corner_order_does_not_matter():
    parsed = {"bboxes": [[54.0, 40.0, 50.0, 18.0]], "labels": ["x"]}
    assert to_fal(parsed) == {"bboxes": [{"x": 50.0, "y": 18.0, "w": 4.0, "h": 22.0, "label": "x"}]}


def test_text_answers_lose_location_tokens():
    assert to_fal("car<loc_100><loc_200><loc_300><loc_400>") == "car"


@pytest.fixture(scope="module")
def florence_processor(checkpoints):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(checkpoints / "florence-2-large")


@pytest.fixture(scope="module")
def kosmos_processor(checkpoints):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(checkpoints / "kosmos-2")


def test_florence_detection_string_to_pixels(florence_processor):
    from deployments.florence2 import parse_answer

    raw = "</s><s>car<loc_100><loc_200><loc_300><loc_400></s>"
    result = parse_answer(florence_processor, raw, "<OD>", (640, 480))
    # Florence bins are 1000 per side; a bin's centre maps to int((bin + 0.5) * side / 1000).
    assert result == {"bboxes": [{"x": 64.0, "y": 96.0, "w": 128.0, "h": 96.0, "label": "car"}]}


def test_florence_ocr_with_region_string(florence_processor):
    from deployments.florence2 import parse_answer

    raw = "</s><s>STOP<loc_100><loc_100><loc_200><loc_100><loc_200><loc_200><loc_100><loc_200></s>"
    quad = parse_answer(florence_processor, raw, "<OCR_WITH_REGION>", (1000, 1000))["quad_boxes"][0]
    assert quad["label"] == "STOP"
    assert [(p["x"], p["y"]) for p in quad["points"]] == [(100, 100), (200, 100), (200, 200), (100, 200)]


def test_florence_polygon_string(florence_processor):
    from deployments.florence2 import parse_answer

    raw = "</s><s><loc_100><loc_100><loc_300><loc_100><loc_300><loc_300></s>"
    result = parse_answer(florence_processor, raw, "<REFERRING_EXPRESSION_SEGMENTATION>", (1000, 500))
    assert result["polygons"][0]["points"] == [{"x": 100, "y": 50}, {"x": 300, "y": 50}, {"x": 300, "y": 150}]


def test_kosmos_grounded_string_to_entities(kosmos_processor):
    from deployments.kosmos2 import parse_answer

    raw = "An image of<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object> warming himself"
    text, result = parse_answer(kosmos_processor, raw, "grounded-caption", (640, 480))
    assert text == "An image of a snowman warming himself"
    (entity,) = result["entities"]
    assert entity["phrase"] == "a snowman" and text[slice(*entity["span"])] == "a snowman"
    box = entity["boxes"][0]
    # 32x32 patch grid, boxes through patch centres: patch 44 is row 1, column 12; 863 is row 26, column 31.
    assert (box["x1"], box["y1"], box["x2"], box["y2"]) == (12.5 / 32, 1.5 / 32, 31.5 / 32, 26.5 / 32)
    pixels = entity["bboxes"][0]
    assert (pixels["x"], pixels["y"], pixels["w"], pixels["h"]) == (250.0, 22.5, 380.0, 375.0)


def test_kosmos_vqa_answer(kosmos_processor):
    from deployments.kosmos2 import parse_answer

    text, result = parse_answer(kosmos_processor, "Question: What is it? Answer: a dog", "grounded-vqa", (10, 10))
    assert text == "a dog" and result["text"] == "Question: What is it? Answer: a dog"


def test_florence_text_answers_hold_no_special_tokens(florence_processor):
    from deployments.florence2 import parse_answer

    raw = "</s><s>a red<image><pad> square<loc_5></s>"
    assert parse_answer(florence_processor, raw, "<CAPTION>", (10, 10)) == "a red square"
