"""A benchmark phase run where Ray already runs (here: the test session's Serve) leaves that Ray alone.

`run_phase` stops a Ray its phase started and left running, so that two local clusters never run at
once; stopping one that ran before the phase would take down its owner's Serve (it once took down
this suite's session Serve, and every end-to-end test after it failed with connection refused)."""

from __future__ import annotations

import ray

from benchmarks.phases import run_phase


def test_a_phase_does_not_stop_a_ray_that_ran_before_it(gateway, client):
    assert ray.is_initialized()
    result, status = run_phase("ttft", lambda: {"validity": []})
    assert status == {"wall_s": status["wall_s"], "ray_left_running": False, "ok": True}
    result, status = run_phase("overhead", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert status["ok"] is False and status["ray_left_running"] is False
    assert ray.is_initialized()
    response = client.get("/v1/models")
    assert response.status_code == 200 and response.json()["data"]
