"""Readiness: `GET /health/ready` and the one line `make run` prints (serve/announce.py).
Readiness going 503 while a live model has no replica is in tests/test_hardening.py."""

from __future__ import annotations

from serve.announce import address, wait_ready
from tests.helpers import LOCAL_CONFIG


def test_ready_when_every_live_model_has_a_replica(client):
    response = client.get("/health/ready")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready", "waiting_for": {}}
    assert client.get("/health").json() == {"status": "ok"}


def test_the_announcer_finds_the_gateway_and_says_when_it_is_ready(gateway):
    ready, body = wait_ready(gateway.url, timeout_s=60)
    assert ready and body["status"] == "ready"


def test_the_announcer_reads_the_address_from_the_config(tmp_path):
    assert address(LOCAL_CONFIG) == "http://127.0.0.1:8000"
    other = tmp_path / "c.yaml"
    other.write_text("http_options: {host: 0.0.0.0, port: 9100}\napplications: []\n")
    assert address(other) == "http://127.0.0.1:9100"
    (tmp_path / "d.yaml").write_text("applications: []\n")
    assert address(tmp_path / "d.yaml") == "http://127.0.0.1:8000"


def test_the_gateways_status_read_says_what_serve_status_says(gateway):
    """The control plane reads the controller's details directly (serve.status() costs ~40 ms of CPU
    a read); for every deployment of the session's app, it must say what serve.status() says."""
    from ray import serve

    from serve.ray_compat import deployment_overviews
    from tests.helpers import APP_NAME

    ours = deployment_overviews(APP_NAME)
    theirs = serve.status().applications[APP_NAME].deployments
    assert set(ours) == set(theirs) and "Gateway" in ours
    for name, overview in theirs.items():
        states = {getattr(k, "value", k): n for k, n in overview.replica_states.items()}
        assert ours[name].replica_states == states, name
        assert ours[name].status == getattr(overview.status, "value", overview.status), name
        assert ours[name].message == (overview.message or ""), name
    assert any(o.replica_states.get("RUNNING") for o in ours.values()), "some model is running"
    assert deployment_overviews("no-such-app") == {}
