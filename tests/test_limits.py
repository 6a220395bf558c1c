"""The front door without Ray: API key store, token buckets, the guard middleware on a small ASGI app,
validation params, and the image-URL switch. The same pieces run in the real gateway in test_hardening.py."""

from __future__ import annotations

import asyncio
import hashlib
import logging

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import ValidationError

from serve.auth import AuthConfig, KeyStore
from serve.config import GatewayConfig
from serve.errors import APIError
from serve.images import ImageLimits, load_image
from serve.limits import Guard, GuardMiddleware, RateLimitConfig, RateLimiter
from serve.validation import validation_error

KEY = "k" * 20
OTHER = "o" * 20


def test_keys_from_env_and_file_are_kept_as_digests(tmp_path):
    hashed = "h" * 24
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# comment\n\n{OTHER}\nsha256:{hashlib.sha256(hashed.encode()).hexdigest()}\n")
    config = AuthConfig(enabled=True, keys_env="KEYS", keys_file=str(keys_file))
    store = KeyStore.from_config(config, environ={"KEYS": f"{KEY}, {'x' * 16}"})
    assert len(store) == 4
    assert all(KEY not in repr(d) for d in store._digests)
    for key in (KEY, OTHER, hashed):
        assert store.identify(f"Bearer {key}") == hashlib.sha256(key.encode()).hexdigest()[:12]
    assert store.identify(f"bearer   {KEY}  ") is not None
    for header in (None, "", f"Basic {KEY}", "Bearer", f"Bearer {KEY}x", KEY):
        assert store.identify(header) is None


def test_key_config_errors_never_show_a_key(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ValueError, match="no API keys"):
        KeyStore.from_config(AuthConfig(enabled=True, keys_env="KEYS"), environ={})
    with pytest.raises(ValueError, match="shorter than") as short:
        KeyStore.from_config(AuthConfig(enabled=True, keys_env="KEYS"), environ={"KEYS": "tiny-secret"})
    assert "tiny-secret" not in str(short.value)
    with pytest.raises(ValueError, match="does not exist"):
        KeyStore.from_config(AuthConfig(enabled=True, keys_env=None, keys_file=str(tmp_path / "missing")))
    KeyStore.from_config(AuthConfig(enabled=True, keys_env="KEYS"), environ={"KEYS": KEY})
    assert KEY not in caplog.text


def test_token_bucket_allows_a_burst_then_asks_to_wait():
    now = [100.0]
    limiter = RateLimiter(RateLimitConfig(enabled=True, requests_per_s=0.5, burst=3), clock=lambda: now[0])
    assert [limiter.retry_after("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.retry_after("a") == 2  # one token takes 2 s at 0.5/s
    assert limiter.retry_after("b") == 0  # buckets are per caller
    now[0] += 2.0
    assert limiter.retry_after("a") == 0
    assert limiter.retry_after("a") >= 1


def test_token_buckets_are_bounded():
    limiter = RateLimiter(RateLimitConfig(enabled=True, burst=1, max_callers=2))
    for caller in ("a", "b", "c"):
        limiter.retry_after(caller)
    assert list(limiter._buckets) == ["b", "c"]


def test_gateway_config_checks_rate_limit_key():
    with pytest.raises(ValidationError, match="auth is off"):
        GatewayConfig.model_validate({"rate_limit": {"enabled": True, "key": "api_key"}})
    assert GatewayConfig().max_body_bytes == 32 * 1024 * 1024
    assert not GatewayConfig().auth.enabled and not GatewayConfig().rate_limit.enabled


def small_app(guard: Guard) -> FastAPI:
    api = FastAPI()

    @api.post("/echo")
    async def echo(request: Request) -> dict:
        return {"size": len(await request.body())}

    @api.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    api.add_middleware(GuardMiddleware, guard=guard)
    return api


async def _send(api: FastAPI, method: str, path: str, **kwargs) -> httpx.Response:
    transport = httpx.ASGITransport(app=api, client=("10.1.2.3", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        return await client.request(method, path, **kwargs)


def send(api: FastAPI, method: str, path: str, **kwargs) -> httpx.Response:
    return asyncio.run(_send(api, method, path, **kwargs))


def assert_envelope(response: httpx.Response, status: int, type: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == type
    return error


def test_body_cap_by_content_length_and_while_streaming():
    api = small_app(Guard(max_body_bytes=1000))
    assert send(api, "POST", "/echo", content=b"x" * 1000).json() == {"size": 1000}
    assert_envelope(send(api, "POST", "/echo", content=b"x" * 1001), 413, "invalid_request_error")

    async def chunks():  # no Content-Length: the cap must hold while the body streams in
        for _ in range(50):
            yield b"y" * 100

    streamed = send(api, "POST", "/echo", content=chunks())
    assert "content-length" not in streamed.request.headers
    assert_envelope(streamed, 413, "invalid_request_error")

    async def small():
        yield b"z" * 300
        yield b"z" * 300

    assert send(api, "POST", "/echo", content=small()).json() == {"size": 600}


def test_auth_and_rate_limit_by_client_ip_when_auth_is_off():
    store = KeyStore([hashlib.sha256(KEY.encode()).digest()])
    api = small_app(Guard(1000, keys=store))
    error = assert_envelope(send(api, "POST", "/echo", content=b"{}"), 401, "authentication_error")
    assert error["code"] == "invalid_api_key"
    refused = send(api, "POST", "/echo", headers={"Authorization": "Bearer wrong-key-wrong-key"})
    assert refused.headers["www-authenticate"] == "Bearer"
    assert send(api, "POST", "/echo", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert send(api, "GET", "/health").status_code == 200  # open path

    by_ip = small_app(Guard(1000, limiter=RateLimiter(RateLimitConfig(enabled=True, requests_per_s=0.01, burst=2))))
    assert [send(by_ip, "POST", "/echo").status_code for _ in range(2)] == [200, 200]
    limited = send(by_ip, "POST", "/echo")
    assert_envelope(limited, 429, "rate_limit_error")
    assert int(limited.headers["retry-after"]) >= 1
    assert send(by_ip, "GET", "/health").status_code == 200  # not rate limited


@pytest.mark.parametrize(
    "errors,body,param",
    [
        (
            [
                {
                    "type": "string_too_short",
                    "loc": (
                        "body",
                        "messages",
                        0,
                        "content",
                        "list[tagged-union[TextPart,ImagePart]]",
                        0,
                        "image_url",
                        "image_url",
                        "url",
                    ),
                    "msg": "short",
                },
                {"type": "string_type", "loc": ("body", "messages", 0, "content", "str"), "msg": "not a string"},
            ],
            {"messages": [{"content": [{"type": "image_url", "image_url": {"url": ""}}]}]},
            "messages[0].content[0].image_url.url",
        ),
        ([{"type": "missing", "loc": ("body", "model"), "msg": "Field required"}], {}, "model"),
        ([{"type": "int_parsing", "loc": ("path", "task_name"), "msg": "bad"}], None, "task_name"),
        (
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", 7),
                    "msg": "JSON decode error",
                    "ctx": {"error": "Expecting value"},
                }
            ],
            None,
            None,
        ),
    ],
)
def test_validation_errors_name_the_param_the_client_sent(errors, body, param):
    error = validation_error(errors, body)
    assert error.status == 400 and error.param == param


def test_image_urls_can_be_switched_off_without_any_lookup():
    async def resolver(host, port):
        raise AssertionError("nothing may be resolved when allow_http is off")

    with pytest.raises(APIError) as refused:
        asyncio.run(load_image("http://example.com/cat.png", ImageLimits(allow_http=False), "image", resolver=resolver))
    assert refused.value.status == 400 and refused.value.param == "image"
    with pytest.raises(APIError):
        asyncio.run(
            load_image("HTTPS://example.com/cat.png", ImageLimits(allow_http=False), "image", resolver=resolver)
        )
