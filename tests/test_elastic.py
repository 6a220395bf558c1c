"""Elastic capacity on the session's Serve instance: scale to zero and back, bursts from zero,
clean cold-start timeouts for a model that cannot be placed, and demand-driven pre-warming.

The session catalog is adjusted in tests/elastic_config.py. Every wait is a bounded poll; the
timings are printed (run with -s to see them) and never asserted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
from ray import serve

from serve.config import AppArgs, slug
from serve.control import STALE_READ_S
from serve.app import application_runtime_env
from serve.standby import (
    actor_runtime_envs,
    alive_nodes,
    inherited_env,
    RAYLET_PID_ENV,
    local_standbys,
    marker_of,
    prestart,
    replica_class,
)
from tests.elastic_config import (
    ELASTIC_MODEL,
    STANDBY_GRACE_S,
    UNPLACEABLE,
    UNPLACEABLE_PREWARM,
    UNPLACEABLE_TIMEOUT_S,
    apply_elastic_overrides,
)
from tests.hardening_apps import kill_replica, replica_actor_names
from tests.helpers import APP_NAME, FLORENCE_LARGE, SIGLIP, assert_error, chat, local_args

ELASTIC_DEPLOYMENT = slug(ELASTIC_MODEL)
STANDBY_HOLD_S = 10.0


def card(client: httpx.Client, model_id: str) -> dict:
    response = client.get(f"/v1/models/{model_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(client: httpx.Client, model_id: str, check: Callable[[dict], bool], what: str, limit_s: float) -> dict:
    """Poll the model card until `check` holds; fail with the last card after `limit_s`."""
    deadline = time.monotonic() + limit_s
    while True:
        current = card(client, model_id)
        if check(current):
            return current
        assert time.monotonic() < deadline, f"{model_id} not {what} within {limit_s} s: {current}"
        time.sleep(0.5)


def is_cold(model: dict) -> bool:
    return model["replicas"] == 0 and model["state"] == "cold"


def test_scale_to_zero_and_back(client, image_url):
    wait_for(client, ELASTIC_MODEL, is_cold, "cold", 60)

    started = time.monotonic()
    first = client.post("/v1/chat/completions", json=chat(ELASTIC_MODEL, "<CAPTION>", image_url, max_tokens=8))
    cold_start_s = time.monotonic() - started
    assert first.status_code == 200, first.text
    assert first.headers.get("x-cold-start") == "true"

    ready = wait_for(client, ELASTIC_MODEL, lambda m: m["state"] == "ready", "ready", 15)
    assert ready["replicas"] == 1 and ready["state_reason"] is None
    warm = client.post("/v1/chat/completions", json=chat(ELASTIC_MODEL, "<CAPTION>", image_url, max_tokens=8))
    assert warm.status_code == 200, warm.text
    assert "x-cold-start" not in warm.headers

    idle_from = time.monotonic()
    cold = wait_for(client, ELASTIC_MODEL, is_cold, "back at zero", 60)
    assert cold["state_reason"] is None
    print(
        f"\n{ELASTIC_MODEL}: cold request {cold_start_s:.1f} s, back to zero {time.monotonic() - idle_from:.1f} s after idle"
    )


def test_first_request_after_a_quiet_spell_is_a_cold_start(client, image_url):
    """Nothing asks the gateway about the model while it goes back to zero: its last read of
    Serve's status says ready, and the next request must still be served and marked cold."""
    wait_for(client, ELASTIC_MODEL, is_cold, "cold", 60)
    warm_up = client.post("/v1/chat/completions", json=chat(ELASTIC_MODEL, "<CAPTION>", image_url, max_tokens=8))
    assert warm_up.status_code == 200, warm_up.text
    ready = client.post("/v1/chat/completions", json=chat(ELASTIC_MODEL, "<CAPTION>", image_url, max_tokens=8))
    assert ready.status_code == 200 and "x-cold-start" not in ready.headers
    quiet_from = time.monotonic()
    deadline = quiet_from + 60
    while running_replicas(ELASTIC_DEPLOYMENT) > 0:  # Serve's own status, not the gateway's
        assert time.monotonic() < deadline, "the elastic model did not go back to zero within 60 s"
        time.sleep(0.5)
    time.sleep(max(0.0, STALE_READ_S - (time.monotonic() - quiet_from)))
    after = client.post("/v1/chat/completions", json=chat(ELASTIC_MODEL, "<CAPTION>", image_url, max_tokens=8))
    assert after.status_code == 200, after.text
    assert after.headers.get("x-cold-start") == "true"


def test_a_cold_start_runs_in_the_standby_worker(client, image_url):
    """While the model is at zero a standby process waits with the model code imported; the next
    replica must start in it (a process that existed before the request was sent) and must have been
    given exactly the runtime env the gateway computed for it."""
    wait_for(client, ELASTIC_MODEL, is_cold, "cold", 60)
    deadline = time.monotonic() + 90
    raylet_pid = session_raylet_pid()
    while not (standbys := local_standbys(raylet_pid=raylet_pid)):
        assert time.monotonic() < deadline, "no standby worker appeared within 90 s of the model going cold"
        time.sleep(0.5)
    sent_at = time.time()
    response = client.post("/v1/chat/completions", json=chat(ELASTIC_MODEL, "<CAPTION>", image_url, max_tokens=8))
    cold_start_s = time.time() - sent_at
    assert response.status_code == 200, response.text
    assert response.headers.get("x-cold-start") == "true"
    stats = serve.get_deployment_handle(ELASTIC_DEPLOYMENT, APP_NAME).stats.remote().result(timeout_s=30)
    assert stats["preloaded_at"] < sent_at, "the replica's process imported the model code after the request"
    assert stats["pid"] in standbys

    args = local_args()
    apply_elastic_overrides(args)  # as the session's gateway fixture deployed it
    spec = next(s for s in AppArgs.model_validate(args).models if s.id == ELASTIC_MODEL)
    computed = inherited_env(
        next(iter(actor_runtime_envs({"ServeController"}))),
        spec.serve_options(app_env=application_runtime_env())["ray_actor_options"]["runtime_env"],
    )
    replica = replica_class(APP_NAME, ELASTIC_DEPLOYMENT)
    assert actor_runtime_envs({replica}) == {computed}
    print(f"\n{ELASTIC_MODEL}: cold start in a standby worker {cold_start_s:.2f} s, load {stats['load_seconds']:.2f} s")


def running_replicas(deployment: str) -> int:
    status = serve.status().applications[APP_NAME].deployments[deployment]
    return sum(n for state, n in status.replica_states.items() if getattr(state, "value", str(state)) == "RUNNING")


def test_burst_from_zero_loses_nothing(client, gateway, image_url):
    wait_for(client, ELASTIC_MODEL, is_cold, "cold", 60)

    async def burst(n: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=120) as http:
            request = chat(ELASTIC_MODEL, "<CAPTION>", image_url, max_tokens=8)
            return await asyncio.gather(*(http.post("/v1/chat/completions", json=request) for _ in range(n)))

    started = time.monotonic()
    responses = asyncio.run(burst(8))
    elapsed = time.monotonic() - started
    failures = [(r.status_code, r.text[:200]) for r in responses if r.status_code != 200]
    assert failures == []
    assert any(r.headers.get("x-cold-start") == "true" for r in responses)
    texts = {r.json()["choices"][0]["message"]["content"] for r in responses}
    assert len(texts) == 1  # one image, one prompt, greedy decoding: the same answer for all
    assert card(client, ELASTIC_MODEL)["replicas"] == 1  # max_replicas: 1
    print(f"\n{ELASTIC_MODEL}: 8 concurrent requests from zero answered in {elapsed:.1f} s")


def test_unplaceable_model_times_out_cleanly(client, image_url):
    wait_for(client, UNPLACEABLE, is_cold, "cold", 60)

    started = time.monotonic()
    response = client.post("/v1/chat/completions", json=chat(UNPLACEABLE, "", image_url))
    waited = time.monotonic() - started
    error = assert_error(response, 504)
    assert error["type"] == "timeout_error" and error["code"] == "model_timeout"
    assert UNPLACEABLE in error["message"] and f"within {UNPLACEABLE_TIMEOUT_S} s" in error["message"]
    assert response.headers["retry-after"]

    # The replica was asked for and waits for a GPU; the listing says so, with Serve's reason.
    listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    stuck = listed[UNPLACEABLE]
    assert stuck["replicas"] == 0 and stuck["state"] in ("starting", "pending"), stuck
    assert stuck["state_reason"], stuck
    assert listed[FLORENCE_LARGE]["state"] == "ready"
    served = client.post("/v1/chat/completions", json=chat(FLORENCE_LARGE, "<CAPTION>", image_url, max_tokens=8))
    assert served.status_code == 200, served.text

    # Nothing waits for it any more: the demand policy lets the pending replica go.
    wait_for(client, UNPLACEABLE, is_cold, "released", 30)
    print(f"\n{UNPLACEABLE}: 504 after {waited:.1f} s; listed as {stuck['state']}: {stuck['state_reason']}")


def test_interest_prewarms_a_cold_model_until_demand_fades(client):
    wait_for(client, UNPLACEABLE, is_cold, "cold", 60)
    for _ in range(UNPLACEABLE_PREWARM):
        assert client.post(f"/v1/models/{UNPLACEABLE}/interest").status_code == 200

    # No request was sent: only the demand policy can have asked for this replica.
    woken = wait_for(client, UNPLACEABLE, lambda m: m["state"] in ("starting", "pending"), "pre-warming", 20)
    assert woken["replicas"] == 0  # it can never run here; asked for is what counts
    wait_for(client, UNPLACEABLE, is_cold, "released after the interest window", 45)


# ----- the standby count stays at one per node and runtime env -----


def standby_key(model_id: str) -> str:
    """The key of the runtime env of the coming-soon models' replicas (one env: one standby)."""
    args = local_args()
    apply_elastic_overrides(args)
    spec = next(s for s in AppArgs.model_validate(args).models if s.id == model_id)
    return marker_of(spec.serve_options(app_env=application_runtime_env())["ray_actor_options"])


def session_raylet_pid() -> str:
    """The pid of this session's raylet, as its workers see it (another Ray on the machine, e.g. a
    benchmark, may have standbys with the same env key: they are not counted)."""
    ingress = serve.get_deployment_handle("Gateway", app_name=APP_NAME)
    return ingress.environment.remote([RAYLET_PID_ENV]).result(timeout_s=30)[RAYLET_PID_ENV]


class StandbyWatch:
    """Samples the number of idle standby workers of one env of this session's Ray on this machine."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.raylet_pid = session_raylet_pid()
        self.counts: list[int] = []

    def sample(self) -> int:
        self.counts.append(len(local_standbys(self.key, raylet_pid=self.raylet_pid)))
        return self.counts[-1]

    def until(self, check: Callable[[int], bool], what: str, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while not check(self.sample()):
            assert time.monotonic() < deadline, f"standby count not {what} within {limit_s} s: {self.counts[-20:]}"
            time.sleep(0.25)

    def assert_bounded(self) -> None:
        """Never more than one standby for longer than an extra takes to leave.

        Ray itself may start a second worker of the same env for a replica's lease (it carries the
        marker) and keep it idle for a moment; an extra, Ray's or the keeper's, must leave within the
        grace period (sampled every 0.25 s), and the count must never climb past two.
        """
        longest = run = 0
        for count in self.counts:
            run = run + 1 if count > 1 else 0
            longest = max(longest, run)
        assert max(self.counts) <= 2, self.counts
        assert longest * 0.25 <= STANDBY_GRACE_S + 2, f"an extra standby stayed {longest * 0.25} s: {self.counts}"

    def hold(self, seconds: float, during: Callable[[], None] = lambda: None) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            during()
            self.sample()
            time.sleep(0.25)


def keep_siglip_awake(client: httpx.Client) -> Callable[[], None]:
    last = [0.0]

    def poke() -> None:
        if time.monotonic() - last[0] > 1.0:
            response = client.post("/v1/embeddings", json={"model": SIGLIP, "input": "keep awake"})
            assert response.status_code == 200, response.text
            last[0] = time.monotonic()

    return poke


def test_one_standby_while_a_model_of_its_env_is_awake_and_after_kills(client):
    """SigLIP2 is kept awake while the other coming-soon models (same runtime env) stay cold: the
    keeper must keep exactly one standby through many of its checks (it used to start one every
    check), also after SigLIP2's replica and the ingress are killed."""
    watch = StandbyWatch(standby_key(SIGLIP))
    poke = keep_siglip_awake(client)
    poke()
    deployment = slug(SIGLIP)
    watch.until(lambda n: n == 1, "one", 60)
    # Many keeper periods (1 s in tests). The count may drop to 0 for a while: a worker Ray started
    # for the replica's lease carries the marker too, and Ray reclaims it once idle, before the
    # keeper's own standby has finished its imports. It must come back to one and not grow.
    watch.hold(STANDBY_HOLD_S, poke)
    watch.until(lambda n: n == 1, "one after many keeper periods", 60)
    watch.assert_bounded()

    killed = kill_replica(APP_NAME, deployment)
    deadline = time.monotonic() + 90
    while not ((names := replica_actor_names(APP_NAME, deployment)) and killed not in names):
        assert time.monotonic() < deadline, "the killed SigLIP2 replica was not replaced"
        watch.sample()
        time.sleep(0.25)
    poke()
    watch.until(lambda n: n == 1, "back to one after the replica kill", 60)
    watch.hold(STANDBY_HOLD_S / 2, poke)
    watch.until(lambda n: n == 1, "one after the replica kill", 60)
    watch.assert_bounded()

    killed = kill_replica(APP_NAME, "Gateway")
    deadline = time.monotonic() + 90
    while True:
        names = replica_actor_names(APP_NAME, "Gateway")
        if names and killed not in names:
            try:
                if client.get("/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
        assert time.monotonic() < deadline, "the ingress was not restarted"
        watch.sample()
        time.sleep(0.25)
    watch.hold(STANDBY_HOLD_S, poke)
    watch.until(lambda n: n == 1, "one after the ingress kill", 60)
    watch.assert_bounded()


def test_an_extra_standby_is_reclaimed(client):
    """However a second standby of the same env comes to be on a node, it leaves by itself."""
    key = standby_key(SIGLIP)
    watch = StandbyWatch(key)
    keep_siglip_awake(client)()
    watch.until(lambda n: n == 1, "one", 60)
    replica = replica_class(APP_NAME, slug(SIGLIP))
    env = next(iter(actor_runtime_envs({replica})))
    prestart(alive_nodes()[0], env, keep_alive_s=3600)
    watch.until(lambda n: n == 2, "two after asking Ray for a second one", 60)
    watch.until(lambda n: n == 1, "one again after the grace period", 30)
    watch.hold(STANDBY_GRACE_S + 2)
    assert watch.counts[-1] == 1, watch.counts
