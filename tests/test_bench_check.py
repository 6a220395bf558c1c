"""The independent check's own raw loop (benchmarks/check_raw.py) and its two verdicts, without Ray.

The loop must do the work the gateway does for the same request (else a ratio against it means
nothing): its embedding of the benchmark's image equals the SigLIP2 replica class's, on the tiny
checkpoint with the same `from_pretrained` code as the real size."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from benchmarks.check import compare_relative, model_line, model_window
from benchmarks.check_raw import PlainLoop
from benchmarks.workloads import WORKLOADS
from deployments.siglip2 import Siglip2
from serve.contract import EmbedImagesCall
from serve.image_codec import probe_image
from serve.images import ImageLimits
from tests.helpers import local_args

SPECS = {spec["source"]: spec for spec in local_args()["models"]}


@pytest.fixture(scope="module")
def image_url() -> str:
    return WORKLOADS["siglip2_embed"].image_url()


@pytest.fixture(scope="module")
def loop(checkpoints, image_url) -> PlainLoop:
    return PlainLoop(checkpoints / "siglip2", image_url, batch_size=3, threads=1)


def test_the_plain_loop_embeds_as_the_gateways_replica_does(checkpoints, loop, image_url):
    import base64

    vectors = loop.embed()
    assert vectors.shape[0] == 3
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    replica = Siglip2(SPECS["siglip2"], str(checkpoints / "siglip2"))
    jpeg = base64.b64decode(image_url.split(",", 1)[1])
    encoded = probe_image(jpeg, ImageLimits(), "input")
    # 256 patches, as the benchmark's catalog entry sets them (local.yaml's tiny default is 64)
    served = asyncio.run(replica.run(EmbedImagesCall(images=(encoded,), max_num_patches=256))).vectors
    np.testing.assert_allclose(vectors[0], np.asarray(served[0]), atol=1e-4)


def test_a_window_counts_whole_runs_of_the_batch(loop):
    measured = loop.window(0.2, warmup_runs=1)
    assert measured["runs"] >= 1
    assert measured["seconds"] >= 0.2
    assert measured["images_per_s"] == pytest.approx(3 * measured["runs"] / measured["seconds"])


def test_the_relative_verdict_compares_gateway_over_raw_with_latest():
    latest = {"gateway_vs_raw": 0.88}
    agrees = compare_relative([(1.85, 2.10), (2.00, 2.25), (1.70, 1.95)], latest["gateway_vs_raw"])
    assert agrees["ratio"] == pytest.approx((1.85 / 2.10) / 0.88)  # the median round
    assert agrees["per_round"] == pytest.approx([1.85 / 2.10, 2.00 / 2.25, 1.70 / 1.95])
    assert agrees["agrees"] is True
    # a gateway at 1.3x the raw loop where latest.json said 0.88: the artefact the check exists to catch
    off = compare_relative([(2.6, 2.0), (2.6, 2.0), (2.6, 2.0)], 0.88)
    assert off["agrees"] is False and off["ratio"] == pytest.approx(1.3 / 0.88)
    assert compare_relative([(1.0, 1.0)], None) == {
        "ratio": None,
        "per_round": [1.0],
        "agrees": False,
        "why": "latest.json has no gateway / raw ratio for the workload",
    }


def test_a_round_says_how_the_gateways_model_ran_in_the_window():
    """Two `read_at_pass_end` readings -> passes, mean batch, seconds a pass, busy fraction: the
    figures that tell a starved model (low busy fraction) from a slow one (long passes)."""
    first = {"reading": {"runs": 10, "items": 80, "busy_s": 40.0}, "at": 100.0, "aligned": True}
    last = {"reading": {"runs": 20, "items": 156, "busy_s": 78.0}, "at": 140.0, "aligned": True}
    model = model_window(first, last)
    assert model == {
        "passes": 10,
        "mean_batch": pytest.approx(7.6),
        "pass_s": pytest.approx(3.8),
        "busy_fraction": pytest.approx(0.95),
        "aligned": True,
    }
    line = model_line({"model": model, "raw_run_s": 3.9})
    assert line == "gateway model: 10 passes of 7.6 images, 3.80 s each, busy 95%; plain loop 3.90 s a run"
    unaligned = model_window(first, {**last, "aligned": False})
    assert unaligned["aligned"] is False
    idle = model_window(first, {**first, "at": 140.0})
    assert idle["passes"] == 0 and idle["pass_s"] is None
    assert model_line({"model": idle, "raw_run_s": 3.9}) == "gateway model: no forward pass ended in the window"


def test_the_plain_loop_of_a_round_is_taken_from_both_sides_of_the_gateway_window():
    from benchmarks.check import both_sides

    # the machine slowed down between the two plain windows: the round's figure sits between them,
    # weighted by each window's seconds (images over summed seconds, not a mean of rates)
    before = {"images_per_s": 2.0, "seconds": 40.0, "runs": 80}
    after = {"images_per_s": 1.0, "seconds": 60.0, "runs": 60}
    joined = both_sides(before, after)
    assert joined["images_per_s"] == pytest.approx((80 + 60) / 100)
    assert joined["seconds"] == 100.0 and joined["runs"] == 140


def test_the_throughput_rounds_raw_figure_joins_the_windows_before_and_after_the_gateway():
    from benchmarks.throughput import raw_both_sides

    before = {"system": "raw", "batches": 10, "runs": 10, "items": 10, "items_per_s": 2.0, "p50_ms": 500.0}
    after = {"system": "raw", "batches": 5, "runs": 5, "items": 5, "items_per_s": 1.0, "p50_ms": 1000.0}
    joined = raw_both_sides(before, after)
    # 10 items in 5 s and 5 items in 5 s: 15 items in 10 s
    assert joined["items_per_s"] == pytest.approx(1.5)
    assert (joined["runs"], joined["batches"], joined["items"]) == (15, 15, 15)
    assert joined["sides"] == [2.0, 1.0]


def test_the_verdict_lines_say_which_side_of_the_tolerance_each_figure_is():
    from benchmarks.check import verdict_lines

    ref = {"quick": False, "started_at": "t", "gateway_vs_raw": 0.90, "items_per_s": 1.50}
    result = {
        "relative": {"per_round": [0.80, 0.81, 0.82], "ratio": 0.90, "agrees": False},
        "absolute": {"ratio": 1.02, "agrees": True},
        "median_images_per_s": 1.53,
        "median_raw_images_per_s": 1.80,
    }
    relative, absolute = verdict_lines(result, ref, 3, 40).splitlines()
    assert relative.endswith("ratio 0.900 -> DISAGREES by more than 5%")
    assert "ratio 1.020 -> agrees within 5%" in absolute
    result["relative"]["agrees"], result["absolute"]["agrees"] = True, False
    relative, absolute = verdict_lines(result, ref, 3, 40).splitlines()
    assert relative.endswith("-> agrees within 5%") and "-> differs by more than 5%" in absolute
