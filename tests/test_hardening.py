"""Hardening over real HTTP on the session's Ray Serve: caps and validation params on every endpoint,
auth, rate limits and body caps (the `guarded` app), bounded queues, a killed replica, a model that
cannot load and an ingress restart (the `faults` app). See tests/hardening_apps.py for the two apps."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import openai
import pytest

from tests.hardening_apps import (
    BROKEN_MODEL,
    COLD_QUEUED_MODEL,
    ENV_KEYS,
    FILE_KEY,
    GUARDED_BODY_LIMIT,
    HASHED_KEY,
    NOT_CACHED_MODEL,
    QUEUED_MODEL,
    kill_replica,
    replica_actor_names,
)
from tests.helpers import BLIP, FLORENCE_LARGE, SIGLIP, assert_error, chat

# ----- caps and validation on the main gateway -----


def test_generation_caps_are_400_with_the_param(client, image_url):
    # The local config keeps the default caps: max_new_tokens_cap 1024, num_beams_cap 5.
    chat_path = "/v1/chat/completions"
    assert_error(
        client.post(chat_path, json=chat(FLORENCE_LARGE, "<CAPTION>", image_url, max_tokens=1025)), 400, "max_tokens"
    )
    assert_error(
        client.post(chat_path, json=chat(FLORENCE_LARGE, "<CAPTION>", image_url, max_completion_tokens=5000)),
        400,
        "max_completion_tokens",
    )
    assert_error(client.post(chat_path, json=chat(BLIP, "", image_url, num_beams=6)), 400, "num_beams")
    task = "/v1/vision/florence-2-large/caption"
    assert_error(client.post(task, json={"image_url": image_url, "max_tokens": 1025}), 400, "max_tokens")
    assert_error(client.post(task, json={"image_url": image_url, "num_beams": 6}), 400, "num_beams")
    assert client.post(task, json={"image_url": image_url, "max_tokens": 4, "num_beams": 2}).status_code == 200


def test_images_labels_and_inputs_per_request_are_capped(client, image_url):
    seventeen = [image_url] * 17  # max_images_per_request is 16
    assert_error(client.post("/v1/embeddings", json={"model": SIGLIP, "input": seventeen}), 400, "input")
    assert_error(
        client.post("/v1/scores", json={"model": SIGLIP, "images": seventeen, "texts": ["a cat"]}), 400, "images"
    )
    labels = [f"label {i}" for i in range(257)]  # max_labels is 256
    assert_error(
        client.post("/v1/classifications", json={"model": SIGLIP, "image": image_url, "labels": labels}), 400, "labels"
    )
    assert_error(
        client.post("/v1/scores", json={"model": SIGLIP, "images": [image_url], "texts": labels}), 400, "texts"
    )
    texts = [f"text {i}" for i in range(257)]  # max_inputs_per_request is 256
    assert_error(client.post("/v1/embeddings", json={"model": SIGLIP, "input": texts}), 400, "input")
    two_images = chat(BLIP, "", image_url)
    two_images["messages"][0]["content"].append({"type": "image_url", "image_url": {"url": image_url}})
    assert_error(client.post("/v1/chat/completions", json=two_images), 400, "messages[0].content")


@pytest.mark.parametrize(
    "path,body,param",
    [
        (
            "/v1/chat/completions",
            {
                "model": BLIP,
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]}],
            },
            "messages[0].content[0].image_url.url",
        ),
        ("/v1/chat/completions", {"model": BLIP, "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        (
            "/v1/chat/completions",
            {"model": BLIP, "messages": [{"role": "user", "content": [{"type": "video"}]}]},
            "messages[0].content[0]",
        ),
        (
            "/v1/chat/completions",
            {"model": BLIP, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            {"model": BLIP, "messages": [{"role": "user", "content": "x"}], "stream": "often"},
            "stream",
        ),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, "model"),
        ("/v1/embeddings", {"model": SIGLIP, "input": ["ok", 3]}, "input[1]"),
        ("/v1/embeddings", {"model": SIGLIP, "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ("/v1/embeddings", {"model": SIGLIP, "input": "x", "modality": "audio"}, "modality"),
        ("/v1/classifications", {"model": SIGLIP, "image": "data:,", "labels": ["a", " "]}, "labels"),
        (
            "/v1/classifications",
            {"model": SIGLIP, "image": "data:,", "labels": ["a"], "prompt_template": "no slot"},
            "prompt_template",
        ),
        ("/v1/scores", {"model": SIGLIP, "images": [], "texts": ["a"]}, "images"),
        (
            "/v1/scores",
            {"model": SIGLIP, "images": ["data:,"], "texts": ["a"], "max_num_patches": 0},
            "max_num_patches",
        ),
        (
            "/v1/vision/florence-2-large/object-detection",
            {"image_url": "data:,", "region": {"x1": -1, "y1": 0, "x2": 1, "y2": 1}},
            "region.x1",
        ),
        ("/v1/vision/florence-2-large/object-detection", {"image_url": 5}, "image_url"),
        ("/v1/vision/florence-2-large/object-detection", {}, "image_url"),
    ],
)
def test_validation_errors_are_openai_400s_naming_the_param(client, path, body, param):
    error = assert_error(client.post(path, json=body), 400, param)
    assert error["type"] == "invalid_request_error"


def test_malformed_bodies_are_400_without_a_param(client):
    for content in (b"{not json", b"[1, 2]", b""):
        error = assert_error(
            client.post("/v1/embeddings", content=content, headers={"content-type": "application/json"}), 400
        )
        assert error["param"] is None


# ----- auth, rate limits and body caps: the `guarded` app -----


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_auth_requires_a_configured_key(guarded):
    listing = f"{guarded.url}/v1/models"
    for headers in ({}, bearer("not-a-configured-key-at-all"), {"Authorization": f"Basic {ENV_KEYS['auth']}"}):
        response = httpx.get(listing, headers=headers, timeout=30)
        error = assert_error(response, 401)
        assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
        assert response.headers["www-authenticate"] == "Bearer"
    post = httpx.post(f"{guarded.url}/v1/embeddings", json={"model": SIGLIP, "input": "x"}, timeout=30)
    assert_error(post, 401)
    for key in (ENV_KEYS["auth"], FILE_KEY, HASHED_KEY):  # from the env var, the file, the file's digest line
        assert httpx.get(listing, headers=bearer(key), timeout=30).status_code == 200, key
    # Open without a key: liveness, readiness (load balancer and Kubernetes probes) and the API description.
    for path in ("/health", "/health/ready", "/openapi.json", "/docs"):
        assert httpx.get(f"{guarded.url}{path}", timeout=30).status_code == 200, path


def test_openai_sdk_sends_its_key(guarded):
    sdk = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key=ENV_KEYS["sdk"], max_retries=0, timeout=30)
    assert [m.id for m in sdk.models.list()] == [SIGLIP]
    wrong = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="wrong-key-wrong-key-wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_rate_limit_is_per_key_with_retry_after(guarded):
    burst = guarded.config["gateway"]["rate_limit"]["burst"]
    listing = f"{guarded.url}/v1/models"
    statuses = [httpx.get(listing, headers=bearer(ENV_KEYS["rate"]), timeout=30) for _ in range(burst + 1)]
    assert [r.status_code for r in statuses[:burst]] == [200] * burst
    limited = statuses[-1]
    error = assert_error(limited, 429)
    assert error["type"] == "rate_limit_error"
    assert limited.headers["retry-after"].isdigit() and int(limited.headers["retry-after"]) >= 1
    # Another key has its own bucket; /health is never limited.
    assert httpx.get(listing, headers=bearer(FILE_KEY), timeout=30).status_code == 200
    assert httpx.get(f"{guarded.url}/health", timeout=30).status_code == 200


def test_body_cap_is_413_by_length_and_while_streaming(guarded):
    headers = {**bearer(ENV_KEYS["body"]), "content-type": "application/json"}
    url = f"{guarded.url}/v1/embeddings"
    big = b'{"model": "x", "input": "' + b"a" * GUARDED_BODY_LIMIT + b'"}'
    error = assert_error(httpx.post(url, content=big, headers=headers, timeout=30), 413)
    assert error["code"] == "request_too_large"

    def chunked():  # no Content-Length: cut off while streaming
        yield b'{"model": "x", "input": "'
        for _ in range(GUARDED_BODY_LIMIT // 4096 + 2):
            yield b"a" * 4096
        yield b'"}'

    assert_error(httpx.post(url, content=chunked(), headers=headers, timeout=30), 413)
    # Under the cap the request goes through to validation as usual.
    small = httpx.post(
        url, json={"model": "acme/none", "input": "a" * 1000}, headers=bearer(ENV_KEYS["body"]), timeout=30
    )
    assert_error(small, 404, "model")


# ----- bounded queues, failures and restarts: the `faults` app -----


def embed(url: str, text: str = "a red square", model: str = QUEUED_MODEL) -> dict:
    return {"url": f"{url}/v1/embeddings", "json": {"model": model, "input": [text] * 4}}


async def _flood(url: str, n: int, model: str) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120) as http:
        return await asyncio.gather(*(http.post(**embed(url, f"text {i}", model)) for i in range(n)))


def test_a_burst_from_zero_is_not_shed_by_the_queue_bound(faults):
    # 1 slot + a queue of 1: during the cold start all 12 wait in that queue, and the ingress
    # sends the ones it rejects again until there is room, instead of answering 503.
    assert httpx.get(f"{faults.url}/v1/models/{COLD_QUEUED_MODEL}", timeout=30).json()["replicas"] == 0
    responses = asyncio.run(_flood(faults.url, 12, COLD_QUEUED_MODEL))
    assert [r.status_code for r in responses] == [200] * 12, [r.text for r in responses if r.status_code != 200]
    assert any(r.headers.get("x-cold-start") == "true" for r in responses)


def test_a_full_queue_is_503_with_retry_after_and_nothing_else_fails(faults):
    def flood(n: int) -> list[httpx.Response]:
        return asyncio.run(_flood(faults.url, n, QUEUED_MODEL))

    responses: list[httpx.Response] = []
    for _ in range(3):  # a flood of 48 against 1 running + 2 queued; a second wave only if none was shed
        responses += flood(48)
        if any(r.status_code == 503 for r in responses):
            break
    statuses = {r.status_code for r in responses}
    assert statuses <= {200, 503}, statuses
    shed = [r for r in responses if r.status_code == 503]
    assert shed, "a queue of 2 in front of one slot should shed some of 48 concurrent requests"
    for response in shed:
        error = assert_error(response, 503)
        assert error["code"] == "model_overloaded" and error["type"] == "overloaded_error"
        assert response.headers["retry-after"].isdigit()
    assert any(r.status_code == 200 for r in responses)
    for response in responses:
        if response.status_code == 200:
            assert len(response.json()["data"]) == 4


class BoundedLoad:
    """A few clients sending embeddings to the faults app until stopped (at most 400 requests each),
    keeping every status and every error body; a client timeout counts as a hang. Two clients stay
    within the model's 1 slot + 2 queued, so any 503 is a fault's doing, not overload."""

    def __init__(self, url: str, clients: int = 2) -> None:
        self.url = url
        self.results: list[int | str] = []
        self.errors: list[httpx.Response] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]

    def _client(self) -> None:
        with httpx.Client(timeout=60) as http:  # the client timeout is the "never hangs" check
            for _ in range(400):
                if self._stop.is_set():
                    return
                try:
                    response = http.post(**embed(self.url))
                except httpx.HTTPError as error:
                    self.results.append(type(error).__name__)
                    return
                self.results.append(response.status_code)
                if response.status_code != 200:
                    self.errors.append(response)

    def __enter__(self) -> BoundedLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)
        assert not any(t.is_alive() for t in self._threads)

    def wait_for(self, n: int, limit_s: float = 60) -> None:
        deadline = time.monotonic() + limit_s
        while len(self.results) < n:
            assert time.monotonic() < deadline, f"only {len(self.results)} responses in {limit_s} s"
            time.sleep(0.05)


def assert_envelopes(responses: list[httpx.Response]) -> None:
    bare = [(r.status_code, r.headers.get("content-type"), r.text[:200]) for r in responses
            if not r.headers.get("content-type", "").startswith("application/json")]
    assert bare == [], f"{len(bare)} error bodies outside the envelope"
    for response in responses:
        assert_error(response, response.status_code)


def wait_replaced(app: str, deployment: str, killed: str, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while not ((names := replica_actor_names(app, deployment)) and killed not in names):
        assert time.monotonic() < deadline, f"{app}/{deployment} was not replaced within {limit_s} s"
        time.sleep(0.2)


def test_killing_a_model_replica_under_load_fails_no_request(faults):
    """Requests in flight on the killed replica are sent again; new ones wait for the replacement,
    as for a cold start; readiness says 503 while the live model has no replica."""
    deployment = "siglip-small-queue"
    not_ready = []
    with BoundedLoad(faults.url) as load:
        load.wait_for(10)
        killed = kill_replica("faults", deployment)
        before = len(load.results)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready = httpx.get(f"{faults.url}/health/ready", timeout=30)
            if ready.status_code == 503:
                not_ready.append(ready.json())
            elif not_ready:  # ready again after it was not
                break
            time.sleep(0.1)
        wait_replaced("faults", deployment, killed)
        load.wait_for(before + 10)
    assert_envelopes(load.errors)  # never a bare text 500
    assert [r for r in load.results if r != 200] == [], [e.text[:300] for e in load.errors[:3]]
    assert not_ready and QUEUED_MODEL in not_ready[0]["waiting_for"], "readiness never said the model was missing"
    assert not_ready[0]["status"] == "not_ready"
    assert httpx.get(f"{faults.url}/health/ready", timeout=30).json() == {"status": "ready", "waiting_for": {}}


def test_killing_the_ingress_under_load_fails_no_request(faults):
    with BoundedLoad(faults.url) as load:
        load.wait_for(10)
        killed = kill_replica("faults", "Gateway")
        before = len(load.results)
        wait_replaced("faults", "Gateway", killed)
        load.wait_for(before + 10)
    assert_envelopes(load.errors)
    assert [r for r in load.results if r != 200] == [], [e.text[:300] for e in load.errors[:3]]


def test_a_model_that_cannot_load_is_503_and_listed_unavailable(faults, client, image_url):
    request = {"model": BROKEN_MODEL, "messages": chat(BROKEN_MODEL, "", image_url)["messages"]}
    with httpx.Client(timeout=120) as http:
        first = http.post(f"{faults.url}/v1/chat/completions", json=request)  # wakes it; loading fails
        error = assert_error(first, 503)
        assert error["code"] == "model_unavailable"
        assert first.headers["retry-after"].isdigit()
        again = http.post(f"{faults.url}/v1/chat/completions", json=request)
        assert_error(again, 503)  # answered from the deployment's state, without waiting
        card = http.get(f"{faults.url}/v1/models/{BROKEN_MODEL}").json()
        assert card["state"] == "unavailable" and card["replicas"] == 0
        assert card["state_reason"] and "File " not in card["state_reason"] and "pid=" not in card["state_reason"]
        listing = {m["id"]: m for m in http.get(f"{faults.url}/v1/models").json()["data"]}
        assert listing[BROKEN_MODEL]["state"] == "unavailable"
        # The other models keep serving, in this app and in the main one.
        assert http.post(**embed(faults.url)).status_code == 200
    assert client.post("/v1/embeddings", json={"model": SIGLIP, "input": "still here"}).status_code == 200


def test_weights_that_cannot_be_fetched_make_the_model_unavailable_with_the_reason(faults, image_url):
    request = chat(NOT_CACHED_MODEL, "", image_url)
    with httpx.Client(timeout=120) as http:
        first = http.post(f"{faults.url}/v1/chat/completions", json=request)  # wakes it; loading fails
        error = assert_error(first, 503)
        assert error["code"] == "model_unavailable"  # not a 504 after the 90 s cold-start timeout
        card = http.get(f"{faults.url}/v1/models/{NOT_CACHED_MODEL}").json()
    assert card["state"] == "unavailable"
    assert "could not load the weights" in card["state_reason"], card["state_reason"]
    assert "acme/no-such-checkpoint-anywhere" in card["state_reason"]


def test_restarting_the_ingress_keeps_demand_counts(faults):
    with httpx.Client(timeout=30) as http:
        for _ in range(3):
            assert http.post(f"{faults.url}/v1/models/{QUEUED_MODEL}/interest").status_code == 200
        before = http.get(f"{faults.url}/v1/models/{QUEUED_MODEL}").json()["demand"]
        assert before >= 3
    killed = kill_replica("faults", "Gateway")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        names = replica_actor_names("faults", "Gateway")
        if names and killed not in names:
            try:
                card = httpx.get(f"{faults.url}/v1/models/{QUEUED_MODEL}", timeout=10)
                if card.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
        time.sleep(0.5)
    else:
        raise AssertionError("the ingress was not restarted")
    assert card.json()["demand"] == before
