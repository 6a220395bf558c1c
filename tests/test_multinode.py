"""Fractional GPUs on a multi-node cluster: tests/cluster_scenario.py in a subprocess (its own Ray,
apart from the session's) packs four 0.25-GPU replicas onto the one GPU node, leaves a fifth
fraction pending, and the gateway keeps serving the placed models while the pending one answers 504.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.cluster_scenario import PACKED, REPLICAS_PER_MODEL, UNPLACEABLE
from tests.helpers import ROOT


@pytest.fixture(scope="module")
def scenario(checkpoints, tmp_path_factory) -> dict:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_SERVE_SLOW_STARTUP_WARNING_S": "1",
        "RAY_SERVE_SLOW_STARTUP_WARNING_PERIOD_S": "1",
    }
    env.pop("RAY_ADDRESS", None)  # never join the session's cluster
    command = [
        sys.executable, "-m", "tests.cluster_scenario",
        "--checkpoints", str(checkpoints),
        "--workdir", str(tmp_path_factory.mktemp("cluster")),
    ]  # fmt: skip
    # Its own process group: if it hangs, its Ray processes (GCS, raylets, workers) go with it.
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert process.returncode == 0 and lines, f"scenario failed ({process.returncode}):\n{stderr[-4000:]}"
    result = json.loads(lines[-1][len("RESULT ") :])
    print(f"\ncluster scenario timings (s): {result['timings_s']}")
    return result


def test_four_quarter_gpu_replicas_pack_onto_the_gpu_node(scenario):
    assert all(scenario["fractions"][model] == 0.25 for model in PACKED)  # production.yaml's fractions
    gpu_node, head_node = scenario["nodes"]["gpu"], scenario["nodes"]["head"]
    for model in PACKED:
        replicas = scenario["placement"][scenario["deployments"][model]]
        assert len(replicas) == REPLICAS_PER_MODEL, replicas
        assert all(r["state"] == "ALIVE" and r["node"] == gpu_node for r in replicas), replicas
    assert gpu_node != head_node
    assert scenario["gpu_total"] == 1.0 and scenario["gpu_available"] == 0.0


def test_placed_models_serve_while_the_fifth_fraction_is_pending(scenario):
    assert scenario["served"] == {model: 200 for model in PACKED}
    assert scenario["served_after"] == 200
    for model in PACKED:
        assert scenario["listing"][model] == {"replicas": REPLICAS_PER_MODEL, "state": "ready"}
    card = scenario["unplaceable_card"]
    assert card["replicas"] == 0 and card["state"] == "pending", card
    assert "to be scheduled" in card["state_reason"] and "GPU" in card["state_reason"]
    pending = scenario["placement"][scenario["deployments"][UNPLACEABLE]]
    assert [r["state"] for r in pending] == ["PENDING_CREATION"]


def test_requests_for_the_pending_model_time_out_cleanly(scenario):
    response = scenario["unplaceable_response"]
    assert response["status"] == 504
    error = response["body"]["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "timeout_error" and error["code"] == "model_timeout"
    assert UNPLACEABLE in error["message"] and "within 3 s" in error["message"]
