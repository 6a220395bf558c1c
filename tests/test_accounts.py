"""Keys, budgets and the usage ledger end to end: a gateway with two ingress replicas sharing a real
PostgreSQL server (its own, so it can be stopped), auth on, one priced model.

Checked: keys created through the admin API work at once; unknown → 401, revoked → 401 with the
reason on every ingress replica within seconds, model not allowed → 403, budget spent → 429
insufficient_quota with no overrun under concurrency; usage and demand counted once across the
replicas; the database going away gives 503s where it is needed and loses no usage row; a
graceful stop flushes what is buffered."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ray import serve

from serve.store import Store
from tests.elastic_config import TOY_FAMILY_PATH
from tests.hardening_apps import _deploy
from tests.helpers import assert_error, data_url, png_bytes
from tests.postgres import PostgresServer

APP = "metered"
MODEL = "test/toy-metered"
TASK_PATH = "/v1/vision/toy-metered/mean-colour"
PRICE_PER_1K = 2.0  # $0.002 per image
BUDGET = 0.01  # five images
ADMIN_KEY = "admin-key-for-the-metered-tests"
BOOTSTRAP_KEY = "bootstrap-key-for-the-metered-tests"


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> Iterator[tuple[PostgresServer, str]]:
    server = PostgresServer.create()
    server.start()
    try:
        yield server, server.create_database("metered")
    finally:
        server.destroy()


@pytest.fixture(scope="module")
def metered(gateway, checkpoints: Path, database) -> Iterator[str]:
    _, url = database
    args = {
        "checkpoint_dir": str(checkpoints),
        "families": [TOY_FAMILY_PATH],
        "gateway": {
            "num_replicas": 2,
            "database_url": url,
            "keys_refresh_s": 1.0,
            # rows wait up to 3 s in the buffers: the graceful-stop test stops them before a timed flush
            "usage_flush_s": 3.0,
            "auth": {"enabled": True, "keys_env": "METERED_KEYS", "admin_keys_env": "METERED_ADMIN_KEYS"},
            "images": {"allow_http": False},
            "ray_actor_options": {
                "num_cpus": 0.05,
                "runtime_env": {"env_vars": {"METERED_KEYS": BOOTSTRAP_KEY, "METERED_ADMIN_KEYS": ADMIN_KEY}},
            },
        },
        "models": [
            {
                "id": MODEL,
                "source": "siglip2",
                "family": "toy-colour",
                "price_per_1k_images": PRICE_PER_1K,
                "deployment": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0}},
            }
        ],
    }
    _deploy(APP, args)
    base = f"{gateway.url}/{APP}"
    deadline = time.monotonic() + 90
    while httpx.get(f"{base}/health/ready", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the metered gateway did not become ready"
        time.sleep(0.3)
    yield base
    if APP in serve.status().applications:
        serve.delete(APP)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


IMAGE = data_url(png_bytes())


def run(base: str, key: str) -> httpx.Response:
    return httpx.post(f"{base}{TASK_PATH}", json={"image_url": IMAGE}, headers=auth(key), timeout=60)


def create_key(base: str, **fields) -> dict:
    response = httpx.post(f"{base}/v1/admin/keys", json=fields, headers=auth(ADMIN_KEY), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def usage(base: str, key: str, **query) -> dict:
    response = httpx.get(f"{base}/v1/usage", params=query, headers=auth(key), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def eventually(check, timeout_s: float = 15.0, every_s: float = 0.3):
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(every_s)


def test_keys_from_the_admin_api_work_at_once_and_bad_keys_are_refused(metered):
    plain = create_key(metered, name="plain")
    assert plain["secret"].startswith("gr-") and plain["secret_prefix"] in plain["secret"]
    assert run(metered, plain["secret"]).status_code == 200
    assert run(metered, BOOTSTRAP_KEY).status_code == 200

    error = assert_error(run(metered, "gr-not-a-key-at-all-0123456789"), 401)
    assert error["code"] == "invalid_api_key"
    restricted = create_key(metered, name="other models", models=["some/other-model"])
    error = assert_error(run(metered, restricted["secret"]), 403, "model")
    assert error["type"] == "permission_error"
    # key management is for admin keys only
    assert_error(httpx.get(f"{metered}/v1/admin/keys", headers=auth(plain["secret"]), timeout=30), 403)
    listed = httpx.get(f"{metered}/v1/admin/keys", headers=auth(ADMIN_KEY), timeout=30).json()["data"]
    assert {"plain", "other models"} <= {k["name"] for k in listed}
    assert all("secret" not in k and "secret_hash" not in k for k in listed)


def test_a_budget_is_never_overrun_by_concurrent_requests_on_two_replicas(metered):
    key = create_key(metered, name="budgeted", budget_usd=BUDGET, models=[MODEL])
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = Counter(r.status_code for r in pool.map(lambda _: run(metered, key["secret"]), range(16)))
    assert statuses == {200: 5, 429: 11}, statuses
    error = assert_error(run(metered, key["secret"]), 429)
    assert error["type"] == "insufficient_quota" and error["code"] == "insufficient_quota"
    # raising the budget lets the key go on
    raised = httpx.patch(
        f"{metered}/v1/admin/keys/{key['id']}", json={"budget_usd": BUDGET * 2}, headers=auth(ADMIN_KEY), timeout=30
    )
    assert raised.status_code == 200 and raised.json()["budget_usd"] == BUDGET * 2
    assert eventually(lambda: run(metered, key["secret"]).status_code == 200)

    # the ledger counted every request once, across both ingress replicas (flushed within ~1 s)
    def counted():
        rows = usage(metered, key["secret"], group_by="model")["data"]
        return rows if rows and rows[0]["requests"] == 18 else None

    rows = eventually(counted)
    assert rows, usage(metered, key["secret"], group_by="model")
    assert rows[0]["group"] == MODEL and rows[0]["images"] == 6
    assert rows[0]["estimated_cost_usd"] == pytest.approx(6 * PRICE_PER_1K / 1000)


def test_a_revoked_key_is_refused_by_every_replica_within_seconds(metered):
    key = create_key(metered, name="soon revoked")
    assert run(metered, key["secret"]).status_code == 200
    revoked = httpx.post(
        f"{metered}/v1/admin/keys/{key['id']}/revoke", json={"reason": "leaked"}, headers=auth(ADMIN_KEY), timeout=30
    )
    assert revoked.status_code == 200 and revoked.json()["revoked_reason"] == "leaked"
    assert eventually(lambda: run(metered, key["secret"]).status_code == 401, timeout_s=10)
    # one replica refused it; each re-reads the keys every keys_refresh_s (1 s here): after two
    # periods, thirty requests spread over both replicas by Serve's proxy are all refused, with the reason
    time.sleep(2.0)
    responses = [run(metered, key["secret"]) for _ in range(30)]
    assert {r.status_code for r in responses} == {401}
    assert all("revoked: leaked" in r.json()["error"]["message"] for r in responses)


def test_demand_and_own_usage_are_counted_once(metered):
    for _ in range(10):
        assert httpx.post(f"{metered}/v1/models/{MODEL}/interest", headers=auth(BOOTSTRAP_KEY), timeout=30).status_code == 200
    cards = [httpx.get(f"{metered}/v1/models/{MODEL}", headers=auth(BOOTSTRAP_KEY), timeout=30).json() for _ in range(6)]
    assert {card["demand"] for card in cards} == {10}
    # a caller sees its own key only; another key's usage is for admins
    mine = create_key(metered, name="mine")
    for _ in range(3):
        assert run(metered, mine["secret"]).status_code == 200
    assert eventually(lambda: usage(metered, mine["secret"])["data"] and usage(metered, mine["secret"])["data"][0]["requests"] == 3)
    report = usage(metered, mine["secret"], group_by="key")
    assert report["key_id"] == mine["id"] and [row["group"] for row in report["data"]] == [mine["id"]]
    other = httpx.get(f"{metered}/v1/usage", params={"key_id": "key_someone"}, headers=auth(mine["secret"]), timeout=30)
    assert_error(other, 403, "key_id")
    everyone = usage(metered, ADMIN_KEY, group_by="key")
    assert mine["id"] in {row["group"] for row in everyone["data"]} and len(everyone["data"]) >= 3


def test_the_database_going_away_gives_503s_and_loses_no_usage(metered, database):
    server, url = database
    key = create_key(metered, name="through the outage")
    assert run(metered, key["secret"]).status_code == 200
    time.sleep(2.5)  # both ingress replicas have re-read the keys (every 1 s here): each knows this one
    server.stop()
    try:
        # inference goes on for known keys (cached) and bootstrap keys; their usage waits in the buffers
        during = [run(metered, key["secret"]) for _ in range(4)] + [run(metered, BOOTSTRAP_KEY) for _ in range(2)]
        assert [r.status_code for r in during] == [200] * 6
        assert_error(httpx.post(f"{metered}/v1/models/{MODEL}/interest", headers=auth(BOOTSTRAP_KEY), timeout=30), 503)
        error = assert_error(httpx.get(f"{metered}/v1/usage", headers=auth(ADMIN_KEY), timeout=30), 503)
        assert error["code"] == "database_unavailable"
        assert_error(run(metered, "gr-unknown-while-the-database-is-down-0"), 503)
    finally:
        server.start()

    def recorded():
        rows = usage(metered, key["secret"])["data"]
        return rows and rows[0]["requests"] == 5

    assert eventually(recorded, timeout_s=20), usage(metered, key["secret"])


def test_a_graceful_stop_writes_what_is_buffered(metered, database):
    _, url = database
    key = create_key(metered, name="last requests")
    for _ in range(4):
        assert run(metered, key["secret"]).status_code == 200
    serve.delete(APP)  # the ingress replicas stop gracefully: their buffers are flushed

    async def totals():
        async with Store(url) as store:
            return await store.usage_totals(group_by="key", key_id=key["id"])

    rows = asyncio.run(totals())
    assert len(rows) == 1 and rows[0].requests == 4 and rows[0].images == 4
