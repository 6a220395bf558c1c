"""Every Florence-2 region task: a hand-written answer through the real processor comes out as
non-empty regions in pixels of the given image (end-to-end tests see only what the tiny model says)."""

from __future__ import annotations

import pytest

from deployments.florence2 import parse_answer
from families.florence2 import TASKS as FLORENCE2_TASKS

# Not square, so a swapped width and height would show. Florence bins are 1000 per side; bin b maps
# to int((b + 0.5) * side / 1000): on 200x100, <loc_100> is x 20 or y 10, <loc_999> is x 199 or y 99.
SIZE = (200, 100)
BOX = "<loc_100><loc_200><loc_300><loc_400>"
PIXEL_BOX = {"x": 20.0, "y": 20.0, "w": 40.0, "h": 20.0}
WHOLE_IMAGE = "<loc_0><loc_0><loc_999><loc_999>"
PIXEL_WHOLE_IMAGE = {"x": 0.0, "y": 0.0, "w": 199.0, "h": 99.0}
TRIANGLE = "<loc_100><loc_200><loc_300><loc_200><loc_300><loc_400>"
PIXEL_TRIANGLE = [{"x": 20.0, "y": 20.0}, {"x": 60.0, "y": 20.0}, {"x": 60.0, "y": 40.0}]

ANSWERS = {
    "object-detection": (
        f"</s><s>car{BOX}dog{WHOLE_IMAGE}</s>",
        {"bboxes": [{**PIXEL_BOX, "label": "car"}, {**PIXEL_WHOLE_IMAGE, "label": "dog"}]},
    ),
    "dense-region-caption": (f"</s><s>a red car{BOX}</s>", {"bboxes": [{**PIXEL_BOX, "label": "a red car"}]}),
    "region-proposal": (
        f"</s><s>{BOX}{WHOLE_IMAGE}</s>",
        {"bboxes": [{**PIXEL_BOX, "label": ""}, {**PIXEL_WHOLE_IMAGE, "label": ""}]},
    ),
    "caption-to-phrase-grounding": (
        f"</s><s>a red square{BOX}</s>",
        {"bboxes": [{**PIXEL_BOX, "label": "a red square"}]},
    ),
    # The processor answers this one with bboxes_labels and an empty polygon list: neither shows.
    "open-vocabulary-detection": (
        f"</s><s>a red square{BOX}</s>",
        {"bboxes": [{**PIXEL_BOX, "label": "a red square"}]},
    ),
    "referring-expression-segmentation": (
        f"</s><s>{TRIANGLE}</s>",
        {"polygons": [{"points": PIXEL_TRIANGLE, "label": ""}]},
    ),
    "region-to-segmentation": (f"</s><s>{TRIANGLE}</s>", {"polygons": [{"points": PIXEL_TRIANGLE, "label": ""}]}),
    "ocr-with-region": (
        "</s><s>STOP<loc_100><loc_200><loc_300><loc_200><loc_300><loc_400><loc_100><loc_400></s>",
        {
            "quad_boxes": [
                {
                    **PIXEL_BOX,
                    "label": "STOP",
                    "points": [*PIXEL_TRIANGLE, {"x": 20.0, "y": 40.0}],
                }
            ]
        },
    ),
}
TASKS = {task.name: task for task in FLORENCE2_TASKS}


@pytest.fixture(scope="module")
def processor(checkpoints):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(checkpoints / "florence-2-large")


def test_every_region_task_has_a_case(processor):
    # By the processor's own table of answer kinds: a region task added to the catalog needs a case.
    kinds = processor.tasks_answer_post_processing_type
    assert set(ANSWERS) == {name for name, task in TASKS.items() if kinds.get(task.prompt, "pure_text") != "pure_text"}


@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_region_answer_to_pixels(processor, name):
    raw, expected = ANSWERS[name]
    result = parse_answer(processor, raw, TASKS[name].prompt, SIZE)
    assert result == expected
