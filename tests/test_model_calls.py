"""The typed call contract inside the model classes, without Ray: encoded images decoded at the scale
the processor needs with results in the sent image's pixels, the operator's limits applied in the
replica, and work-budgeted runs that split big requests and join them back."""

from __future__ import annotations

import asyncio
import io
import pickle

import numpy as np
import pytest
from PIL import Image

from deployments.florence2 import Florence2
from deployments.siglip2 import Siglip2
from serve.contract import EmbedImagesCall, EmbedTextsCall, GenerateCall, Region, ScoreCall, was_cold
from serve.errors import APIError
from serve.image_codec import probe_image
from serve.images import ImageLimits
from tests.helpers import local_args

SPECS = {spec["source"]: spec for spec in local_args()["models"]}


def photo(size=(4032, 3024)) -> bytes:
    """A photo-like JPEG: gradients and noise, so it compresses like a real photo."""
    width, height = size
    rng = np.random.default_rng(7)
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    pixels = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2)
    pixels += rng.normal(0, 12, pixels.shape).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def big_photo() -> bytes:
    return photo()


@pytest.fixture(scope="module")
def siglip(checkpoints) -> Siglip2:
    return Siglip2(SPECS["siglip2"], str(checkpoints / "siglip2"), {"max_side": 5000})


@pytest.fixture(scope="module")
def florence(checkpoints) -> Florence2:
    return Florence2(SPECS["florence-2-large"], str(checkpoints / "florence-2-large"))


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_photo_crosses_as_its_bytes(big_photo):
    encoded = probe_image(big_photo, ImageLimits(), "image")
    call = GenerateCall(image=encoded, task="caption")
    assert encoded.size == (4032, 3024) and encoded.data == big_photo
    # what Ray pickles is the JPEG (a few MB), not 36 MB of pixels
    assert len(pickle.dumps(call)) < len(big_photo) + 4096


def test_a_photo_is_decoded_at_the_processors_scale_and_answered_in_its_own_pixels(florence, big_photo):
    encoded = probe_image(big_photo, ImageLimits(), "image")
    item = run(florence.accept(GenerateCall(image=encoded, task="region-to-category", region=Region(3000, 2000, 4032, 3024))))
    decoded = item.picture.image.size
    needed = florence.processor_size()
    assert needed is not None
    assert decoded[0] < 4032 and decoded[1] < 3024, "decoded at a smaller scale"
    assert decoded[0] >= needed[0] and decoded[1] >= needed[1], "never below what the processor reads"
    assert item.picture.size == (4032, 3024)
    # the region is in the sent image's pixels: x2 = 4032 is its right edge (bin 999), not beyond a smaller image
    assert item.prompt == "<REGION_TO_CATEGORY><loc_744><loc_661><loc_999><loc_999>"
    result = florence._predict_group([item])[0]
    assert result.usage.images == 1


def test_the_operators_image_limits_apply_in_the_replica(siglip, big_photo):
    # this replica was given max_side 5000: a 6000-pixel-wide image from a handle is refused here
    wide = io.BytesIO()
    Image.new("RGB", (6000, 8), "white").save(wide, format="PNG")
    with pytest.raises(APIError) as error:
        run(siglip.run(EmbedImagesCall(images=(wide.getvalue(),))))
    assert error.value.status == 413 and "5000 pixels per side" in error.value.message
    # an already-probed image is probed again against the replica's limits
    encoded = probe_image(wide.getvalue(), ImageLimits(), "input[0]")
    with pytest.raises(APIError) as error:
        run(siglip.run(EmbedImagesCall(images=(encoded,))))
    assert error.value.status == 413


def test_requests_over_the_work_budget_are_split_and_joined_in_order(siglip):
    texts = tuple(f"a photo of thing number {i}" for i in range(11))
    whole = run(siglip.run(EmbedTextsCall(texts=texts)))
    siglip.reconfigure({"max_batch_size": 4})
    try:
        before = siglip.batches_run
        parts = run(siglip.run(EmbedTextsCall(texts=texts)))
        assert siglip.batches_run - before == 3  # 4 + 4 + 3 texts
        images = tuple(Image.new("RGB", (32, 32), c) for c in ("red", "green", "blue", "white", "black"))
        scored_split = run(siglip.run(ScoreCall(images=images, texts=("red", "blue"))))
    finally:
        siglip.reconfigure({"max_batch_size": 16})
    scored_whole = run(siglip.run(ScoreCall(images=images, texts=("red", "blue"))))
    np.testing.assert_allclose(parts.vectors, whole.vectors, atol=1e-5)
    assert parts.usage.prompt_tokens == whole.usage.prompt_tokens > 0
    assert len({tuple(np.round(v, 4)) for v in parts.vectors}) == len(texts), "each text kept its own vector"
    np.testing.assert_allclose(scored_split.scores, scored_whole.scores, atol=1e-5)
    assert scored_split.usage.images == 5 and scored_split.usage.prompt_tokens == scored_whole.usage.prompt_tokens


def test_results_say_when_their_replica_became_ready(siglip):
    result = run(siglip.run(EmbedTextsCall(texts=("a cat",))))
    assert result.replica_ready_at == siglip.ready_at > 0
    assert was_cold(siglip.ready_at - 1, result) is True  # arrived before the replica was ready: it waited
    assert was_cold(siglip.ready_at + 1, result) is False


def test_concurrent_calls_run_through_the_stages_and_account_the_models_time(siglip, florence):
    """Calls of different kinds at once share runs where they can, each answered as when alone,
    and the replica counts seconds in the model and in the CPU stages around it (its busy fraction)."""
    texts = ["a cat", "a red square", "two dogs"]
    image = probe_image(photo((640, 480)), ImageLimits(), "image")
    before = run(siglip.stats())

    async def together():
        return await asyncio.gather(
            *(siglip.run(EmbedTextsCall(texts=(t,))) for t in texts),
            siglip.run(EmbedImagesCall(images=(image, image))),
        )

    *text_results, images = run(together())
    alone = run(siglip.run(EmbedTextsCall(texts=tuple(texts))))
    assert np.allclose(np.concatenate([r.vectors for r in text_results]), alone.vectors, atol=1e-5)
    assert images.vectors.shape[0] == 2 and images.usage.images == 2
    after = run(siglip.stats())
    assert after["runs"] > before["runs"]
    for key in ("busy_s", "prepare_s", "finish_s"):
        assert after[key] > before[key], key

    # a generative family: a failing item (a broken prompt) fails alone; the other is answered
    good = run(florence.accept(GenerateCall(image=image, task="caption")))
    bad = run(florence.accept(GenerateCall(image=image, task="object-detection")))
    bad.prompt = None  # the processor cannot tokenize it: the group fails in `prepare`

    async def mixed():
        return await asyncio.gather(florence.submit(good), florence.submit(bad), return_exceptions=True)

    answered, failed = run(mixed())
    assert answered.task == "caption" and answered.usage.images == 1
    assert isinstance(failed, RuntimeError) and "failed to run the request" in str(failed)
