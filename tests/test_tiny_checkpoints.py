"""The tiny checkpoints load with the Auto classes and run every code path the serving layer uses."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    BlipForConditionalGeneration,
    BlipProcessor,
    Florence2ForConditionalGeneration,
    Florence2Processor,
    Kosmos2ForConditionalGeneration,
    Kosmos2Processor,
    Siglip2Model,
    Siglip2Processor,
)

from tools import tiny_checkpoints as tiny

REPO_ROOT = Path(tiny.__file__).resolve().parents[1]
IMAGE_SIZE = (640, 480)  # (width, height), as post-processors take it
FLORENCE = ["florence-2-large", "florence-2-base"]


def _image() -> Image.Image:
    pixels = torch.arange(IMAGE_SIZE[0] * IMAGE_SIZE[1] * 3, dtype=torch.int64) % 251
    return Image.fromarray(pixels.reshape(IMAGE_SIZE[1], IMAGE_SIZE[0], 3).to(torch.uint8).numpy())


def _digests(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def offline():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def real_configs(offline) -> Path:
    return tiny.resolve_real_configs()


@pytest.fixture(scope="module")
def built(tmp_path_factory, real_configs) -> tuple[Path, list[tiny.BuildResult]]:
    out = tmp_path_factory.mktemp("tiny")
    return out, tiny.build_all(out, real_configs=real_configs)


@pytest.fixture(scope="module")
def out_dir(built) -> Path:
    return built[0]


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return _image()


def test_builds_every_checkpoint_small(built):
    out, results = built
    assert [result.name for result in results] == list(tiny.CHECKPOINTS)
    assert {path.name for path in out.iterdir()} == set(tiny.CHECKPOINTS)  # no temporary leftovers
    for result in results:
        assert result.built
        assert 0.2e6 <= result.size_bytes <= 5e6, result


@pytest.mark.parametrize(
    ("name", "auto_model", "model_class", "processor_class"),
    [
        ("florence-2-large", AutoModelForImageTextToText, Florence2ForConditionalGeneration, Florence2Processor),
        ("florence-2-base", AutoModelForImageTextToText, Florence2ForConditionalGeneration, Florence2Processor),
        ("kosmos-2", AutoModelForImageTextToText, Kosmos2ForConditionalGeneration, Kosmos2Processor),
        ("siglip2", AutoModel, Siglip2Model, Siglip2Processor),
        ("blip", AutoModelForImageTextToText, BlipForConditionalGeneration, BlipProcessor),
    ],
)
def test_auto_classes_load_native_classes(out_dir, name, auto_model, model_class, processor_class):
    processor = AutoProcessor.from_pretrained(out_dir / name)
    model = auto_model.from_pretrained(out_dir / name)
    assert type(processor) is processor_class
    assert type(model) is model_class
    assert model.get_input_embeddings().num_embeddings == len(processor.tokenizer)


@pytest.mark.parametrize("name", FLORENCE)
def test_florence_generate_and_post_process(out_dir, image, name):
    processor = AutoProcessor.from_pretrained(out_dir / name)
    model = AutoModelForImageTextToText.from_pretrained(out_dir / name)
    assert model.generation_config.num_beams == 3

    for task in ("<CAPTION>", "<OD>"):
        inputs = processor(text=task, images=image, return_tensors="pt")
        image_tokens = (inputs["input_ids"] == model.config.image_token_id).sum().item()
        assert image_tokens == processor.num_image_tokens
        generated = model.generate(**inputs, max_new_tokens=10, num_beams=1, do_sample=False)
        text = processor.batch_decode(generated, skip_special_tokens=False)[0]
        parsed = processor.post_process_generation(text, task=task, image_size=IMAGE_SIZE)
        assert list(parsed) == [task]
        if task == "<CAPTION>":
            assert isinstance(parsed[task], str)
        else:
            assert set(parsed[task]) == {"bboxes", "labels"}
            assert len(parsed[task]["bboxes"]) == len(parsed[task]["labels"])
            assert all(len(box) == 4 for box in parsed[task]["bboxes"])


@pytest.mark.parametrize("name", FLORENCE)
def test_florence_parses_hand_written_answers(out_dir, name):
    processor = AutoProcessor.from_pretrained(out_dir / name)
    box = "<loc_100><loc_200><loc_300><loc_400>"
    # A bin is 1/1000 of the side; its centre is taken: (bin + 0.5) * side / 1000, truncated.
    expected = [64, 96, 192, 192]

    detections = processor.post_process_generation(f"</s><s>car{box}</s>", task="<OD>", image_size=IMAGE_SIZE)
    assert detections == {"<OD>": {"bboxes": [expected], "labels": ["car"]}}

    quad = "<loc_100><loc_200><loc_300><loc_200><loc_300><loc_400><loc_100><loc_400>"
    ocr = processor.post_process_generation(f"STOP{quad}", task="<OCR_WITH_REGION>", image_size=IMAGE_SIZE)
    assert ocr == {"<OCR_WITH_REGION>": {"quad_boxes": [[64, 96, 192, 96, 192, 192, 64, 192]], "labels": ["STOP"]}}

    grounding = processor.post_process_generation(
        f"a red car{box}", task="<CAPTION_TO_PHRASE_GROUNDING>", image_size=IMAGE_SIZE
    )
    assert grounding == {"<CAPTION_TO_PHRASE_GROUNDING>": {"bboxes": [expected], "labels": ["a red car"]}}

    polygon = processor.post_process_generation(
        "<poly><loc_100><loc_200><loc_300><loc_200><loc_300><loc_400></poly>",
        task="<REGION_TO_SEGMENTATION>",
        image_size=IMAGE_SIZE,
    )
    assert polygon == {"<REGION_TO_SEGMENTATION>": {"polygons": [[[64, 96, 192, 96, 192, 192]]], "labels": [""]}}

    # Every task token encodes to itself in the vocabulary, with the 1000 location bins.
    tokenizer = processor.tokenizer
    for token in ("<od>", "</od>", "<ocr>", "</ocr>", "<poly>", "</poly>", "<sep>", "<loc_0>", "<loc_999>"):
        assert tokenizer.convert_ids_to_tokens(tokenizer.encode(token, add_special_tokens=False)) == [token]


def test_kosmos_grounded_caption(out_dir, image):
    processor = AutoProcessor.from_pretrained(out_dir / "kosmos-2")
    model = AutoModelForImageTextToText.from_pretrained(out_dir / "kosmos-2")
    assert model.config.latent_query_num == processor.num_image_tokens == 64

    inputs = processor(text="<grounding>An image of", images=image, return_tensors="pt")
    assert inputs["image_embeds_position_mask"].sum().item() == 64
    generated = model.generate(**inputs, max_new_tokens=10)
    text = processor.batch_decode(generated, skip_special_tokens=True)[0]
    caption, entities = processor.post_process_generation(text)
    assert caption.startswith("An image of")
    assert isinstance(entities, list)

    written = (
        "<grounding> An image of<phrase> a red car</phrase>"
        "<object><patch_index_0044><patch_index_0863></object> near<phrase> a cat</phrase>"
        "<object><patch_index_0005><patch_index_0911></object>."
    )
    caption, entities = processor.post_process_generation(written)
    assert caption == "An image of a red car near a cat."
    assert entities == [
        ("a red car", (12, 21), [(0.390625, 0.046875, 0.984375, 0.828125)]),
        ("a cat", (27, 32), [(0.171875, 0.015625, 0.484375, 0.890625)]),
    ]


def test_siglip2_image_and_text_features(out_dir, image):
    processor = AutoProcessor.from_pretrained(out_dir / "siglip2")
    model = AutoModel.from_pretrained(out_dir / "siglip2")
    embedding_size = model.config.vision_config.hidden_size
    assert model.config.text_config.projection_size == embedding_size

    for max_num_patches in (64, 256):
        inputs = processor(images=[image], max_num_patches=max_num_patches, return_tensors="pt")
        assert inputs["pixel_values"].shape == (1, max_num_patches, 16 * 16 * 3)
        with torch.no_grad():
            features = model.get_image_features(**inputs).pooler_output
        assert features.shape == (1, embedding_size)

    texts = ["a photo of a cat", "A red car parked on the street"]
    inputs = processor(text=texts, padding="max_length", max_length=64, return_tensors="pt")
    assert list(inputs) == ["input_ids"]
    assert inputs["input_ids"].shape == (2, 64)
    assert inputs["input_ids"][0, -1].item() == processor.tokenizer.pad_token_id  # right padding
    assert processor.tokenizer.eos_token_id in inputs["input_ids"][0].tolist()
    with torch.no_grad():
        features = model.get_text_features(**inputs).pooler_output
    assert features.shape == (2, embedding_size)


def test_blip_unconditional_and_conditional_captions(out_dir, image):
    processor = AutoProcessor.from_pretrained(out_dir / "blip")
    model = AutoModelForImageTextToText.from_pretrained(out_dir / "blip")
    bos = processor.tokenizer.bos_token_id
    assert processor.tokenizer.bos_token == "[DEC]"
    assert model.config.text_config.bos_token_id == bos

    generated = model.generate(**processor(images=image, return_tensors="pt"), max_new_tokens=10)
    assert generated[0, 0].item() == bos
    assert generated.shape[1] > 1

    prefix = "a picture of"
    inputs = processor(images=image, text=prefix, return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=10)
    prefix_ids = processor.tokenizer.encode(prefix, add_special_tokens=False)
    assert generated[0, 1 : 1 + len(prefix_ids)].tolist() == prefix_ids
    assert processor.decode(generated[0], skip_special_tokens=True).startswith(prefix)


def test_second_build_is_skipped(built, real_configs):
    out, _ = built
    before = _digests(out)
    markers = {name: (out / name / tiny.MARKER_NAME).stat().st_mtime_ns for name in tiny.CHECKPOINTS}
    results = tiny.build_all(out, real_configs=real_configs)
    assert [result.built for result in results] == [False] * len(tiny.CHECKPOINTS)
    assert {name: (out / name / tiny.MARKER_NAME).stat().st_mtime_ns for name in tiny.CHECKPOINTS} == markers
    assert _digests(out) == before


def test_rebuild_in_a_new_process_is_byte_identical(built, real_configs, tmp_path):
    out, _ = built
    command = [sys.executable, "-m", tiny.__name__, "--out", str(tmp_path), "--real-configs", str(real_configs)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        command, check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr.count(" built ") == len(tiny.CHECKPOINTS)
    assert _digests(tmp_path) == _digests(out)


def test_incomplete_checkpoint_is_rebuilt(built, real_configs, tmp_path):
    out, _ = built
    first = tiny.build_checkpoint("blip", tmp_path, real_configs=real_configs)
    (first.path / "model.safetensors").unlink()
    again = tiny.build_checkpoint("blip", tmp_path, real_configs=real_configs)
    assert again.built
    assert _digests(again.path) == _digests(out / "blip")
