"""Text limits inside the model classes, without Ray: each family loads a tiny checkpoint and counts
a prompt's tokens as the model will read it, and refuses (400) what does not fit its positions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
import torch
from PIL import Image
from transformers import BlipConfig, Florence2Config, Kosmos2Config, Siglip2Config

from deployments.blip import Blip, BlipItem
from deployments.florence2 import Florence2, Florence2Item
from deployments.kosmos2 import Kosmos2, Kosmos2Item
from deployments.siglip2 import Siglip2, TextsItem
from deployments.image_inputs import Picture
from families.registry import family_of
from serve.errors import APIError
from tests.helpers import local_args

SPECS = {spec["source"]: spec for spec in local_args()["models"]}
IMAGE = Image.new("RGB", (64, 48), "red")
PICTURE = Picture(IMAGE, IMAGE.size)
HTTP_NAMES = {"text": "text_input", "max_new_tokens": "max_tokens"}


def load(family: type, source: str, checkpoints, **options):
    spec = dict(SPECS[source])
    if options:
        spec["options"] = {**spec.get("options", {}), **options}
    return family(spec, str(checkpoints / source))


@pytest.fixture(scope="module")
def florence(checkpoints) -> Florence2:
    return load(Florence2, "florence-2-large", checkpoints)


@pytest.fixture(scope="module")
def kosmos(checkpoints) -> Kosmos2:
    return load(Kosmos2, "kosmos-2", checkpoints)


@pytest.fixture(scope="module")
def blip(checkpoints) -> Blip:
    return load(Blip, "blip", checkpoints)


@pytest.fixture(scope="module")
def siglip(checkpoints) -> Siglip2:
    return load(Siglip2, "siglip2", checkpoints)


def refused(call) -> APIError:
    """The 400 a coroutine raises before anything is queued (no Serve needed: it never reaches `submit`)."""
    with pytest.raises(APIError) as info:
        asyncio.run(call)
    assert info.value.status == 400 and info.value.code == "context_length_exceeded"
    return info.value


def words_for(count: Callable[[str], int], target: int) -> str:
    """A text of repeated words whose prompt `count` is exactly `target` tokens."""
    n = 1
    while count(" ".join(["cat"] * n)) < target:
        n += max(1, (target - count(" ".join(["cat"] * n))) // 2)
    while count(" ".join(["cat"] * n)) > target:
        n -= 1
    text = " ".join(["cat"] * n)
    assert count(text) == target, "the tokenizer cannot reach this count with one repeated word"
    return text


# ----- limits come from the loaded config, and hold for the published configs -----


def test_limits_are_the_loaded_models_positions(florence, kosmos, blip, siglip):
    for model in (florence, kosmos, blip, siglip):
        assert model.text_positions == model.model.config.text_config.max_position_embeddings
    assert siglip.options.text_max_length <= siglip.text_positions


@pytest.mark.parametrize(
    ("config_class", "path", "positions"),
    [
        (Florence2Config, "florence-community--Florence-2-large/config.assembled.json", 4096),
        (Florence2Config, "florence-community--Florence-2-base/config.assembled.json", 1024),
        (Kosmos2Config, "microsoft--kosmos-2-patch14-224/config.json", 2048),
        (BlipConfig, "Salesforce--blip-image-captioning-base/config.json", 512),
        (Siglip2Config, "google--siglip2-base-patch16-naflex/config.json", 64),
    ],
)
def test_published_configs_have_the_limit_the_models_read(config_class, path, positions):
    from tools.tiny_checkpoints import resolve_real_configs

    data = json.loads((resolve_real_configs() / path).read_text())
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    config = config_class.from_dict(data)
    limit = config.text_config.max_position_embeddings
    assert isinstance(limit, int) and limit > 0
    if positions is not None:
        assert limit == positions


# ----- the count is the length the model reads -----


def test_counted_prompts_match_what_the_models_read(florence, kosmos, blip):
    task = family_of("florence2").task("<OPEN_VOCABULARY_DETECTION>")
    prompt = task.prompt + "a red square"
    run = florence._predict_group([Florence2Item(PICTURE, task, prompt, 4, 1)])[0]
    assert florence.image_tokens + florence.text_tokens(prompt) == run.usage.prompt_tokens

    vqa, region = "<grounding> Question: what is red? Answer:", "<grounding><phrase> It</phrase> is"
    for prompt, box in ((vqa, None), (region, (0.1, 0.1, 0.5, 0.5))):
        run = kosmos._predict_group([Kosmos2Item(PICTURE, "grounded-vqa", prompt, box, 4, 1)])[0]
        boxes = None if box is None else [[box]]
        assert kosmos.image_tokens + kosmos.text_tokens(prompt, bboxes=boxes) == run.usage.prompt_tokens
    assert kosmos.image_tokens >= kosmos.model.config.latent_query_num

    run = blip._predict_group([BlipItem(PICTURE, "a picture of", 4, 1)])[0]
    assert blip.image_tokens == 0
    assert blip.text_tokens("a picture of") == run.usage.prompt_tokens


def test_siglip_counts_match_the_tokens_it_reports(siglip):
    texts = ["a cat", "This is a photo of a red square."]
    results = siglip._predict_group([TextsItem(texts)])
    reported = [r.usage.prompt_tokens for r in siglip._predict_group([TextsItem([t]) for t in texts])]
    assert results[0].usage.prompt_tokens == sum(reported)
    assert siglip.token_counts(texts) == reported


# ----- Florence-2: the encoder holds image and prompt, the decoder the answer -----


def test_florence_prompt_at_the_limit_runs_and_one_token_more_is_refused(florence):
    task = family_of("florence2").task("<OPEN_VOCABULARY_DETECTION>")
    limit = florence.text_positions

    def count(text: str) -> int:
        return florence.image_tokens + florence.text_tokens(task.prompt + text)

    fits = words_for(count, limit)
    florence._check_prompt(task.prompt + fits, fits, 4, HTTP_NAMES)
    # The model really holds that many: the encoder runs at the limit...
    run = florence._predict_group([Florence2Item(PICTURE, task, task.prompt + fits, 2, 1)])[0]
    assert run.usage.prompt_tokens == limit
    # ...and one token over it is what used to fail as a server error.
    over = fits + " cat"
    with pytest.raises(IndexError):
        florence.predict([Florence2Item(PICTURE, task, task.prompt + over, 2, 1)])

    error = refused(florence.generate(IMAGE, task="open-vocabulary-detection", text=over, param_names=HTTP_NAMES))
    assert error.param == "text_input"
    assert f"context of {limit} tokens" in error.message and f"comes to {limit + 1} tokens" in error.message
    # Python handle callers get the argument's own name.
    assert refused(florence.generate(IMAGE, task="open-vocabulary-detection", text=over)).param == "text"


def test_florence_answer_longer_than_the_decoder_is_refused(florence):
    limit = florence.text_positions
    florence._check_prompt(family_of("florence2").task("<CAPTION>").prompt, "", limit, HTTP_NAMES)
    with pytest.raises(APIError) as info:
        florence._check_prompt(family_of("florence2").task("<CAPTION>").prompt, "", limit + 1, HTTP_NAMES)
    assert info.value.param == "max_tokens" and f"at most {limit}" in info.value.message


# ----- Kosmos-2 and BLIP: prompt and answer share the positions -----


def test_kosmos_counts_image_tokens_prompt_and_answer(kosmos):
    limit, new = kosmos.text_positions, 32
    prefix = "<grounding> Question: "

    def count(text: str) -> int:
        return kosmos.image_tokens + kosmos.text_tokens(f"{prefix}{text} Answer:")

    fits = words_for(count, limit - new)
    kosmos._check_prompt(f"{prefix}{fits} Answer:", None, fits, new, None)
    error = refused(kosmos.generate(IMAGE, task="grounded-vqa", text=fits + " cat", max_new_tokens=new,
                                    param_names={"text": "messages", "max_new_tokens": "max_completion_tokens"}))
    assert error.param == "messages" and f"context of {limit} tokens" in error.message
    # The same question fits when less is generated.
    kosmos._check_prompt(f"{prefix}{fits} cat Answer:", None, fits + " cat", new - 1, None)


def test_blip_prefix_at_the_limit_runs_and_more_is_refused(blip):
    limit, new = blip.text_positions, 8
    fits = words_for(blip.text_tokens, limit - new)
    blip._check_prompt(fits, new, None)
    assert blip._predict_group([BlipItem(PICTURE, fits, new, 1)])[0].usage.prompt_tokens == limit - new
    error = refused(blip.generate(IMAGE, text=fits + " cat", max_new_tokens=new, param_names=HTTP_NAMES))
    assert error.param == "text_input" and f"context of {limit} tokens" in error.message


def test_blip_answer_that_cannot_fit_names_the_token_setting(blip):
    limit = blip.text_positions
    blip._check_prompt("", limit, None)  # no prefix: the decoder starts from its start token alone
    for prefix in ("", "a picture of"):
        error = refused(blip.generate(IMAGE, text=prefix, max_new_tokens=limit + 1, param_names=HTTP_NAMES))
        assert error.param == "max_tokens" and f"context is {limit} tokens" in error.message


# ----- SigLIP2: every text within text_max_length, refused rather than truncated -----


def test_siglip_text_at_the_limit_is_read_whole_and_one_more_is_refused(siglip):
    limit = siglip.options.text_max_length
    fits = words_for(lambda text: siglip.token_counts([text])[0], limit)
    siglip._check_texts(["a cat", fits], ["input[0]", "input[1]"])
    with torch.inference_mode():
        assert siglip._predict_group([TextsItem([fits])])[0].usage.prompt_tokens == limit
    over = fits + " cat"

    error = refused(siglip.embed_texts(["a cat", over], params=["input[0]", "input[1]"]))
    assert error.param == "input[1]" and f"at most {limit} tokens" in error.message
    assert refused(siglip.embed_texts([over], params=["input"])).param == "input"
    assert refused(siglip.embed_texts(["a cat", over])).param == "texts[1]"
    error = refused(siglip.score([IMAGE], ["a cat", "a dog", over]))
    assert error.param == "texts[2]" and f"at most {limit} tokens" in error.message


def test_siglip_labels_are_checked_inside_their_template(siglip):
    limit = siglip.options.text_max_length
    template = siglip.options.prompt_template
    fits = words_for(lambda label: siglip.token_counts([template.replace("{label}", label)])[0], limit)
    siglip._check_prompts([template.replace("{label}", fits)], template, custom_template=False)

    error = refused(siglip.classify(IMAGE, ["cat", fits + " cat"]))
    assert error.param == "labels[1]" and f"at most {limit} tokens" in error.message
    long_template = " ".join(["cat"] * limit) + " {label}"
    error = refused(siglip.classify(IMAGE, ["cat", "dog"], template=long_template))
    assert error.param == "prompt_template" and f"at most {limit}" in error.message


def test_siglip_refuses_to_load_with_padding_past_its_positions(checkpoints):
    # Loading fails (base.py may wrap the setup's ValueError), naming the cause.
    with pytest.raises((ValueError, RuntimeError), match="text_max_length 10000 exceeds the text model's 64 position"):
        load(Siglip2, "siglip2", checkpoints, text_max_length=10_000)


def test_token_counting_beside_a_padded_batch_never_breaks_the_batch(siglip):
    """Request checks count tokens in threads while the model's run pads a batch of texts: a fast
    tokenizer's padding setting is shared state, so both on one tokenizer once failed batches in the
    soak ('Unable to create tensor ... padding'). Bounded: 300 batches against a counting thread."""
    import threading

    texts = ["a", "a red square on white", "two words", "a much longer caption of a photo of a red square"]
    stop = threading.Event()
    counted: list[int] = []

    def count() -> None:
        while not stop.is_set():
            counted.extend(siglip.token_counts(texts))

    import sys

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the race needs a switch mid-call
    thread = threading.Thread(target=count)
    thread.start()
    try:
        for _ in range(300):
            inputs = siglip.prepare([TextsItem(texts)])
            assert inputs.texts["input_ids"].shape[0] == len(texts) and len(inputs.tokens) == len(texts)
    finally:
        stop.set()
        thread.join(timeout=30)
        sys.setswitchinterval(interval)
    assert counted, "the counting thread ran"
