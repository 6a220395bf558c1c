"""Family descriptors without torch: tasks, chat parsing, the shared task-input rules and options checked at load."""

from __future__ import annotations

import sys

import pytest

from families.base import HANDLE_NAMES, HTTP_TASK_NAMES, check_task_input
from families.registry import FAMILIES, family_of
from serve.config import ModelSpec
from serve.errors import APIError

FLORENCE, KOSMOS, BLIP, SIGLIP = (family_of(name) for name in ("florence2", "kosmos2", "blip", "siglip2"))


def test_descriptors_import_no_torch():
    import subprocess

    code = "import sys, families.registry; assert 'torch' not in sys.modules, 'a descriptor imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_florence_chat_tasks():
    parse = FLORENCE.chat_task
    assert parse("", "p")[0].name == "caption"
    assert parse("<OD>", "p") == (FLORENCE.task("<OD>"), "")
    task, text = parse("<CAPTION_TO_PHRASE_GROUNDING>  a red car ", "p")
    assert task.name == "caption-to-phrase-grounding" and text == "a red car"
    for bad in ("describe it", "<OD> extra", "<OPEN_VOCABULARY_DETECTION>", "<NOPE>"):
        with pytest.raises(APIError) as error:
            parse(bad, "messages")
        assert error.value.param == "messages"


def test_other_families_chat_tasks():
    assert KOSMOS.chat_task("", "p")[1] == "<grounding>An image of"
    assert BLIP.chat_task("", "p")[0].name == "caption"
    assert BLIP.chat_task("a photo of", "p") == (BLIP.task("conditional-caption"), "a photo of")
    assert SIGLIP.chat_task is None


def test_catalog_tasks():
    assert len(FLORENCE.tasks) == 15
    assert SIGLIP.endpoints == {"embeddings", "classifications", "scores"}
    assert BLIP.endpoints == {"chat"}
    assert FLORENCE.task("object-detection") is FLORENCE.task("<OD>")
    assert BLIP.task("") is None
    assert set(FAMILIES) >= {"florence2", "kosmos2", "siglip2", "blip"}


def refused(*args, **kwargs) -> APIError:
    with pytest.raises(APIError) as error:
        check_task_input(*args, **kwargs)
    assert error.value.status == 400
    return error.value


def test_task_input_rules_name_the_callers_field():
    ocr, ovd, region = FLORENCE.task("ocr"), FLORENCE.task("open-vocabulary-detection"), FLORENCE.task("region-to-category")
    check_task_input(FLORENCE, ocr, "", False)
    check_task_input(FLORENCE, ovd, "cars", False)
    check_task_input(FLORENCE, region, "", True)
    assert refused(FLORENCE, ovd, "", False, HTTP_TASK_NAMES).param == "text_input"
    assert refused(FLORENCE, ovd, "  ", False, HANDLE_NAMES).param == "text"
    assert refused(FLORENCE, ocr, "hello", False, HTTP_TASK_NAMES).param == "text_input"
    assert refused(FLORENCE, ocr, "", True, HTTP_TASK_NAMES).param == "region"
    assert refused(FLORENCE, region, "", False, HTTP_TASK_NAMES).param == "region"
    # Florence-2 reads a region given as text in chat and from handles, never from the task endpoint's text_input
    check_task_input(FLORENCE, region, "10,10,20,20", False)
    assert refused(FLORENCE, region, "10,10,20,20", False, HTTP_TASK_NAMES, region_text=False).param == "region"
    assert refused(FLORENCE, region, "10,10,20,20", True, HTTP_TASK_NAMES, region_text=False).param == "text_input"
    assert refused(FLORENCE, region, "10,10,20,20", True).param == "text"
    # Kosmos-2 takes regions only as regions; its caption takes optional text
    reg = KOSMOS.task("referring-expression-generation")
    assert refused(KOSMOS, reg, "0,0,1,1", False).param == "region"
    check_task_input(KOSMOS, KOSMOS.task("grounded-caption"), "", False)
    check_task_input(KOSMOS, KOSMOS.task("grounded-caption"), "An image of", False)


def test_family_options_are_checked_when_the_config_is_read():
    entry = {"id": "a/b", "source": "x/y", "family": "siglip2"}
    assert ModelSpec.model_validate({**entry, "options": {"max_num_patches": 128}}).options == {"max_num_patches": 128}
    with pytest.raises(ValueError, match="model a/b: options: .*min_num_patches <= max_num_patches"):
        ModelSpec.model_validate({**entry, "options": {"max_num_patches": 2048}})
    with pytest.raises(ValueError, match="model a/b: options: .*unknown_setting"):
        ModelSpec.model_validate({**entry, "options": {"unknown_setting": 1}})
    with pytest.raises(ValueError, match="model a/b: options: .*Extra inputs"):
        ModelSpec.model_validate({**entry, "family": "blip", "options": {"anything": 1}})


def test_the_removed_batch_wait_setting_says_what_replaces_it():
    entry = {"id": "a/b", "source": "x/y", "family": "blip"}
    assert ModelSpec.model_validate({**entry, "batching": {"batch_wait_timeout_s": 0.0}}).batching.max_batch_size == 8
    with pytest.raises(ValueError, match="batch_wait_timeout_s was removed.*fill_wait_ratio"):
        ModelSpec.model_validate({**entry, "batching": {"batch_wait_timeout_s": 0.01}})
