"""The proxy middleware (serve/proxy_errors.py) on small real ASGI apps standing in for Serve's proxy app:
errors that are not JSON become the envelope, an app that ends without answering is replayed once for
idempotent requests (with the same body and an unmodified scope), and never for the others."""

from __future__ import annotations

import asyncio
import json

import pytest

from serve.proxy_errors import PAGE_HEADER, EnvelopeErrors, middlewares, replayable


def run(app, scope: dict, body: bytes = b"") -> tuple[int, dict, bytes]:
    """Call an ASGI app the way uvicorn would; (status, headers, body) of what it sent."""
    sent: list[dict] = []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        if chunks:
            return chunks.pop(0)
        await asyncio.sleep(3600)  # the client stays connected
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(dict(scope), receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def http_scope(method: str = "POST", path: str = "/v1/embeddings") -> dict:
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}


def text_error(status: int, text: bytes):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"3")]})
        await send({"type": "http.response.body", "body": text})

    return app


def test_a_plain_text_error_becomes_the_envelope_with_its_text_and_retry_after():
    status, headers, body = run(EnvelopeErrors(text_error(503, b"Request dropped due to backpressure")), http_scope())
    assert status == 503 and headers[b"content-type"] == b"application/json" and headers[b"retry-after"] == b"3"
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] == "Request dropped due to backpressure" and error["type"] == "overloaded_error"


def test_json_errors_and_successes_pass_untouched():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"error": {"message": "m", "type": "t", "param": null, "code": null}}'})

    assert run(EnvelopeErrors(app), http_scope())[2] == b'{"error": {"message": "m", "type": "t", "param": null, "code": null}}'
    assert run(EnvelopeErrors(text_error(200, b"ok")), http_scope())[2] == b"ok"


def test_the_gateways_html_pages_pass_untouched_even_as_errors():
    page = b"<!doctype html><h1>Model not found</h1>"

    async def app(scope, receive, send):
        headers = [(b"content-type", b"text/html; charset=utf-8"), (PAGE_HEADER.encode(), b"1")]
        await send({"type": "http.response.start", "status": 404, "headers": headers})
        await send({"type": "http.response.body", "body": page})

    status, headers, body = run(EnvelopeErrors(app), http_scope("GET", "/models/nope"))
    assert (status, headers[b"content-type"], body) == (404, b"text/html; charset=utf-8", page)
    # HTML without the marker is not the gateway's: it becomes the envelope
    assert json.loads(run(EnvelopeErrors(text_error(502, b"<html>bad gateway</html>")), http_scope())[2])["error"]


class DiesOnce:
    """Ends without answering the first time (as Serve's proxy does when the ingress replica died),
    answers with what it read the second time; rewrites the scope it is given, as the proxy does."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []

    async def __call__(self, scope, receive, send):
        body = (await receive())["body"]
        self.calls.append((scope["path"], body))
        scope["path"] = "/rewritten"
        if len(self.calls) == 1:
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


def test_an_inference_request_whose_ingress_died_is_sent_again_with_its_body():
    app = DiesOnce()
    status, _, body = run(EnvelopeErrors(app), http_scope("POST", "/faults/v1/embeddings"), b'{"input": "x"}')
    assert status == 200 and body == b'{"input": "x"}'
    assert app.calls == [("/faults/v1/embeddings", b'{"input": "x"}')] * 2, "same path and body both times"


def test_a_request_that_is_not_safe_to_repeat_gets_the_envelope_instead():
    app = DiesOnce()
    status, headers, body = run(EnvelopeErrors(app), http_scope("POST", "/v1/models/acme/x/interest"))
    assert len(app.calls) == 1
    assert status == 500 and headers[b"content-type"] == b"application/json"
    assert json.loads(body)["error"]["type"] == "server_error"


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/v1/models", True),
        ("POST", "/v1/chat/completions", True),
        ("POST", "/prefix/v1/vision/florence-2-large/caption", True),
        ("POST", "/v1/models/a/b/interest", False),
        ("POST", "/fal/fal-ai/florence-2-large/object-detection", True),
        ("POST", "/fal/queue/fal-ai/florence-2-large/object-detection", False),
        ("PUT", "/fal/queue/fal-ai/florence-2-large/requests/abc/cancel", False),
        ("DELETE", "/v1/embeddings", False),
    ],
)
def test_what_may_be_replayed(method, path, expected):
    assert replayable({"method": method, "path": path}) is expected


def test_the_proxy_callback_returns_the_middleware():
    assert [m.cls for m in middlewares()] == [EnvelopeErrors]
