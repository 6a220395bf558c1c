"""The benchmark's validity checks and window sizing (no Ray, no model): a ratio that cannot be true,
a window of one or two model runs, and rounds that disagree are flagged, never reported as results."""

from __future__ import annotations

import math
from typing import Any

import pytest

from benchmarks.metrics import (
    MAX_RATIO_VS_RAW,
    MAX_ROUND_SPREAD,
    MIN_RUNS,
    runs_spanned,
    validity,
    window_seconds,
)

SYSTEMS = ("raw", "gateway", "gateway_unbatched", "naive", "litserve")


def round_of(rates: dict[str, float], runs: float = 12.0) -> dict[str, dict[str, Any]]:
    """One round's windows: every system at `rates[system]` items/s (default 5.0), each spanning `runs` runs."""
    return {system: {"items_per_s": rates.get(system, 5.0), "runs": runs} for system in SYSTEMS}


def good_rounds() -> list[dict[str, dict[str, Any]]]:
    return [
        round_of({"raw": 5.30, "gateway": 4.80, "gateway_unbatched": 4.0, "naive": 3.9, "litserve": 4.7}),
        round_of({"raw": 5.28, "gateway": 4.80, "gateway_unbatched": 4.1, "naive": 3.8, "litserve": 4.6}),
        round_of({"raw": 5.33, "gateway": 4.81, "gateway_unbatched": 4.0, "naive": 3.9, "litserve": 4.7}),
    ]


def test_the_thresholds_are_the_issues():
    assert (MIN_RUNS, MAX_RATIO_VS_RAW, MAX_ROUND_SPREAD) == (10, 1.05, 1.15)


def test_a_good_measurement_passes():
    checked = validity(good_rounds())
    assert checked["ok"], checked["reasons"]
    assert checked["reasons"] == []
    assert all(r["ok"] for r in checked["rounds"])
    assert all(r["ok"] for r in checked["ratios"].values())


def test_a_ratio_of_1_39_over_the_raw_loop_is_flagged():
    # the committed run's SigLIP2 headline: per round 0.98, 1.39, 1.44 of the raw loop
    rounds = [
        round_of({"raw": 5.0, "gateway": 4.90}),
        round_of({"raw": 5.0, "gateway": 6.95}),
        round_of({"raw": 5.0, "gateway": 7.20}),
    ]
    checked = validity(rounds)
    assert not checked["ok"]
    gateway = checked["ratios"]["gateway_vs_raw"]
    assert not gateway["ok"]
    assert any("median gateway / raw = 1.390" in reason for reason in gateway["reasons"])
    assert any("round 2: gateway / raw = 1.390 > 1.05" in reason for reason in checked["reasons"])
    assert checked["rounds"][0]["ok"] and not checked["rounds"][1]["ok"]
    # the other ratios are not tainted by it
    assert checked["ratios"]["naive_vs_raw"]["ok"]


def test_just_above_1_05_is_flagged_and_at_it_is_not():
    others = {"gateway_unbatched": 0.8, "naive": 0.8, "litserve": 0.9}
    assert not validity([round_of({"raw": 1.0, "gateway": 1.06, **others})] * 3)["ok"]
    assert validity([round_of({"raw": 1.0, "gateway": 1.05, **others})] * 3)["ok"]


def test_a_window_of_two_runs_is_flagged():
    rounds = good_rounds()
    rounds[1]["litserve"]["runs"] = 2.0
    checked = validity(rounds)
    assert not checked["ok"]
    assert checked["rounds"][1]["reasons"] == ["round 2: litserve window too short (2.0 runs < 10)"]
    assert checked["rounds"][0]["ok"] and checked["rounds"][2]["ok"]
    assert not checked["ratios"]["litserve_vs_raw"]["ok"]
    assert checked["ratios"]["gateway_vs_raw"]["ok"]


def test_a_window_without_a_run_count_is_flagged():
    rounds = good_rounds()
    del rounds[0]["raw"]["runs"]
    checked = validity(rounds)
    assert "round 1: raw window too short (unknown runs < 10)" in checked["reasons"]
    # the raw loop is in every ratio against it
    assert not checked["ratios"]["gateway_vs_raw"]["ok"]


def test_a_wide_spread_across_rounds_is_flagged():
    rounds = [
        round_of({"raw": 5.0, "gateway": 4.1}),
        round_of({"raw": 5.0, "gateway": 4.6}),
        round_of({"raw": 5.0, "gateway": 5.0}),
    ]
    checked = validity(rounds)
    assert not checked["ok"]
    assert checked["ratios"]["gateway_vs_raw"]["reasons"] == [
        "gateway / raw spread 0.82–1.00 across rounds (max/min 1.22 > 1.15)"
    ]
    # every round on its own is fine: it is the disagreement that is flagged
    assert all(r["ok"] for r in checked["rounds"])


def test_one_round_gives_no_spread():
    checked = validity(good_rounds()[:1])
    assert not checked["ok"]
    assert "gateway / raw: fewer than 2 rounds, no spread" in checked["reasons"]


def test_a_quick_run_is_never_valid():
    checked = validity(good_rounds(), quick=True)
    assert not checked["ok"]
    assert checked["reasons"][0].startswith("--quick run")
    assert all(not r["ok"] for r in checked["ratios"].values())


def test_ratios_between_served_systems_are_checked_for_spread():
    rounds = [
        round_of({"raw": 5.0, "gateway": 4.8, "naive": 3.0}),
        round_of({"raw": 5.0, "gateway": 4.8, "naive": 4.0}),
    ]
    checked = validity(rounds, ratios=(("gateway", "raw"), ("gateway", "naive")))
    assert checked["ratios"]["gateway_vs_raw"]["ok"]
    assert not checked["ratios"]["gateway_vs_naive"]["ok"]
    # 1.6 and 1.2 are above 1.05, but only a ratio over the raw loop has that bound
    assert not any("> 1.05" in reason for reason in checked["reasons"])


@pytest.mark.parametrize("run_s", [0.05, 0.37, 2.57, 3.0, 11.9])
def test_the_window_spans_at_least_ten_runs_of_a_measured_duration(run_s):
    seconds = window_seconds(run_s, MIN_RUNS, minimum_s=10.0)
    assert seconds >= MIN_RUNS * run_s
    assert seconds >= 10.0
    assert runs_spanned(seconds, run_s) >= MIN_RUNS


def test_the_issues_case_a_batch_of_16_taking_3_s_gets_a_30_s_window():
    # the committed bench used 3 s windows where one batch of 16 took ~3 s: one run per window
    assert window_seconds(3.0, MIN_RUNS) == pytest.approx(30.0)
    assert runs_spanned(3.0, 3.0) == pytest.approx(1.0)


def test_window_sizing_bounds_and_errors():
    assert window_seconds(0.01, MIN_RUNS, minimum_s=5.0) == 5.0
    assert window_seconds(30.0, MIN_RUNS, maximum_s=120.0) == 120.0
    assert runs_spanned(None, 1.0) is None
    with pytest.raises(ValueError, match="run_s must be positive"):
        window_seconds(0.0, MIN_RUNS)


def test_the_run_plan_sizes_every_system_from_its_own_run():
    from benchmarks.run import FULL, QUICK, window_plan

    siglip2 = next(w for w in FULL.workloads if w.workload == "siglip2_embed")
    sizing = window_plan(siglip2, {8: 2.57, 1: 0.37}, batch=8)
    for system, planned in sizing["systems"].items():
        assert math.floor(planned["window_s"] / planned["run_s"] + 1e-9) >= MIN_RUNS, system
    assert sizing["systems"]["gateway"]["run_s"] == 2.57
    assert sizing["systems"]["naive"]["run_s"] == 0.37
    # warm-ups of several runs; the estimate covers at least every window and warm-up
    assert sizing["systems"]["gateway"]["warmup_s"] >= 2 * 2.57
    assert sizing["round_s"] >= sum(p["window_s"] + p["warmup_s"] for p in sizing["systems"].values())
    assert all(w.runs >= MIN_RUNS for w in FULL.workloads)
    assert QUICK.quick and not FULL.quick


def test_the_report_strikes_an_invalid_ratio_and_keeps_the_measured_value():
    from benchmarks import report

    rounds = [
        round_of({"raw": 5.0, "gateway": 4.90}, runs=1.5),
        round_of({"raw": 5.0, "gateway": 6.95}, runs=1.5),
        round_of({"raw": 5.0, "gateway": 7.20}, runs=1.5),
    ]
    for measured in rounds:
        for window in measured.values():
            window.update(errors=0, n=10, p50_ms=1.0, p99_ms=2.0, system="x", concurrency=32)
    block = report.workload_summary(
        {
            "workload": "siglip2_embed",
            "rounds": rounds,
            "headline_concurrency": 32,
            "batch_size": 16,
            "sweep": [],
            "memory_mb": {},
            "idle_cpu_percent": {},
            "startup_s": {},
            "probe_items_per_s": {},
        }
    )
    assert block["efficiency_vs_raw"] is None
    assert block["efficiency_vs_raw_measured"] == pytest.approx(1.39)
    assert block["validity"]["ok"] is False
    assert block["ratios"]["gateway_vs_raw"]["rounds"] == pytest.approx([0.98, 1.39, 1.44])
    assert block["ratios"]["gateway_vs_raw"]["max_over_min"] == pytest.approx(1.44 / 0.98)
    cell = report._ratio_cell(block["ratios"]["gateway_vs_raw"])
    assert cell.startswith("~~1.39 (0.98–1.44)~~") and "invalid" in cell
    lines = "\n".join(report._validity_lines("siglip2_embed", block))
    assert "**Not a valid measurement:**" in lines
    assert "| gateway / raw | 1.39 | 0.98, 1.39, 1.44 | 0.98–1.44 | 1.47 | ⚠ no |" in lines
