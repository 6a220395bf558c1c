"""Florence-2 region encoding and the conversion of parsed answers to fal.ai's result shapes."""

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
