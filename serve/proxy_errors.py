"""An ASGI middleware for Ray Serve's HTTP proxy: what the proxy itself answers reaches clients in
the gateway's error envelope, and a request whose ingress replica died under it is sent once more.

Serve's proxy answers some requests without the gateway's code: when the ingress replica dies while
handling a request it sends nothing and its server answers a bare `500 Internal Server Error` in
text; when it sheds or times out a request it answers in plain text. Clients of an OpenAI-style API
parse `{"error": {...}}`, so this middleware rewrites any error response that is not JSON into the
envelope (the gateway's own API errors are always JSON and pass untouched, and so do its web pages,
e.g. the 404 page of an unknown model, which carry the `PAGE_HEADER`).

The proxy drops a dead ingress replica from its routing at once and queues new requests until
Serve's replacement is up. So when a request ends with no response at all (its replica died), the
middleware replays it through the proxy once, provided the request is safe to repeat: a read, or an
inference call (idempotent), with a body small enough to have been kept (`MAX_REPLAY_BYTES`).

Install it in the proxy's environment (it is read when the proxy starts):

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve.proxy_errors:middlewares

`make run`, the tests, the soak and the benchmark set it; on a cluster, set it where `ray start` runs
(cluster.yaml does).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from starlette.middleware import Middleware

logger = logging.getLogger("gigarouter.proxy")

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK_PATH = "serve.proxy_errors:middlewares"
MAX_REPLAY_BYTES = 16 * 1024 * 1024
# Set on the gateway's HTML pages (serve/routers/pages.py): an HTML error page is an answer, not a proxy failure.
PAGE_HEADER = "x-gigarouter-page"
# POSTs that only compute an answer: repeating one cannot change any state.
# (fal's synchronous runs too; its queue submits are not: a replay would queue the job twice)
IDEMPOTENT_POST = re.compile(
    r"(^|/)(v1/(chat/completions|embeddings|classifications|scores|vision/[^/]+/[^/]+)"
    r"|fal/(?!queue/)[^/]+/[^/]+/[^/]+)$"
)

_KINDS = {
    408: ("timeout_error", "request_timeout", "The request timed out in the gateway's proxy."),
    429: ("rate_limit_error", "rate_limited", "Too many requests."),
    500: ("server_error", "ingress_failed", "The gateway failed to answer this request. Try again."),
    503: ("overloaded_error", "service_unavailable", "The gateway is unavailable just now. Try again later."),
}


def envelope(status: int, detail: str = "") -> bytes:
    """The error envelope for a status the proxy produced, with its own text as the message when it has one."""
    kind, code, default = _KINDS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None, ""))
    message = detail.strip() or default or f"HTTP {status}"
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


def replayable(scope: dict[str, Any]) -> bool:
    method = scope.get("method", "GET")
    return method in ("GET", "HEAD") or (method == "POST" and bool(IDEMPOTENT_POST.search(scope.get("path", ""))))


class EnvelopeErrors:
    """Pure ASGI middleware (see the module docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        recorded: list[dict[str, Any]] | None = [] if replayable(scope) else None
        size = 0

        async def recording_receive() -> dict[str, Any]:
            nonlocal recorded, size
            message = await receive()
            if recorded is not None and message["type"] == "http.request":
                size += len(message.get("body", b""))
                recorded = recorded + [message] if size <= MAX_REPLAY_BYTES else None
            return message

        # the proxy rewrites the scope it is given (a route prefix moves from `path` to `root_path`)
        original = dict(scope)
        answered = await self._once(dict(original), recording_receive, send)
        if answered:
            return
        if recorded is not None:
            logger.warning("%s %s: the ingress replica stopped before answering; sending it again", scope.get("method"), scope.get("path"))
            replay = list(recorded)

            async def replaying_receive() -> dict[str, Any]:
                return replay.pop(0) if replay else await receive()

            if await self._once(dict(original), replaying_receive, send):
                return
        await send_envelope(send, 500)

    async def _once(self, scope: dict[str, Any], receive: Any, send: Any) -> bool:
        """Run the proxy's app once; True if a response was sent (rewritten into the envelope if needed)."""
        started = False
        held: dict[str, Any] | None = None  # the start of a non-JSON error, sent once its body is known
        body = b""

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started, held, body
            if message["type"] == "http.response.start":
                started = True
                headers = dict(message.get("headers") or [])
                content_type = headers.get(b"content-type", b"")
                page = PAGE_HEADER.encode() in headers
                if message["status"] >= 400 and not content_type.startswith(b"application/json") and not page:
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                body += message.get("body", b"")
                if message.get("more_body", False):
                    return
                await send_envelope(send, held["status"], body.decode(errors="replace")[:500], held.get("headers"))
                held = None
                return
            await send(message)

        try:
            await self.app(scope, receive, guarded_send)
        except Exception:
            if started:
                raise
            logger.exception("the proxy failed before answering %s %s", scope.get("method"), scope.get("path"))
            return False
        if held is not None:  # an error start with no body message: answer it now
            await send_envelope(send, held["status"], "", held.get("headers"))
        return started


async def send_envelope(send: Any, status: int, detail: str = "", headers: list | None = None) -> None:
    body = envelope(status, detail)
    kept = [(k, v) for k, v in (headers or []) if k.lower() == b"retry-after"]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *kept],
        }
    )
    await send({"type": "http.response.body", "body": body})


def middlewares() -> list[Middleware]:
    """The callback Serve's proxy calls (`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`)."""
    return [Middleware(EnvelopeErrors)]
