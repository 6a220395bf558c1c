"""Annotated images: every kind of shape is drawn on the input, which is otherwise unchanged."""

from __future__ import annotations

import base64
import io

from PIL import Image

from serve.annotate import annotate, shapes


def decode(image: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(image["url"].split(",", 1)[1]))).convert("RGB")


def test_boxes_are_drawn_inside_the_returned_box():
    source = Image.new("RGB", (200, 100), "white")
    results = {"bboxes": [{"x": 20, "y": 30, "w": 100, "h": 40, "label": "car"}]}
    image = annotate(source, results)
    assert (image["width"], image["height"], image["content_type"]) == (200, 100, "image/png")
    drawn = decode(image)
    assert drawn.size == (200, 100)
    assert drawn.getpixel((60, 70)) != (255, 255, 255)  # the box's bottom edge
    assert drawn.getpixel((190, 90)) == (255, 255, 255)  # far outside every shape


def test_quads_polygons_and_entities_are_shapes():
    results = {
        "quad_boxes": [{"x": 0, "y": 0, "w": 1, "h": 1, "label": "t", "points": [{"x": 0, "y": 0}] * 4}],
        "polygons": [{"points": [{"x": 1, "y": 1}, {"x": 5, "y": 1}, {"x": 5, "y": 5}], "label": ""}],
        "entities": [{"phrase": "dog", "bboxes": [{"x": 1, "y": 2, "w": 3, "h": 4, "label": "dog"}]}],
    }
    kinds = [kind for kind, _, _ in shapes(results)]
    assert kinds == ["polygon", "polygon", "box"]
    drawn = decode(annotate(Image.new("RGB", (20, 20), "white"), results["polygons"] and {"polygons": results["polygons"]}))
    assert drawn.getpixel((3, 1)) != (255, 255, 255)


def test_text_results_leave_the_image_unchanged():
    source = Image.new("RGB", (10, 10), "blue")
    assert list(decode(annotate(source, "a caption")).getdata()) == list(source.getdata())
