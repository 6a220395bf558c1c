"""The ingress's front door: API keys, per-caller rate limits and the request body cap.

`GuardMiddleware` is a plain ASGI middleware in front of the FastAPI app. Per HTTP request it
checks, in this order, before any route code or body parsing runs:

1. auth (when on): `Authorization: Bearer <key>` (or fal's `Key <key>`) must name a bootstrap key
   (env/file) or a key in the store (`serve.accounts`), else 401 (with the reason for a revoked or
   expired key); the caller goes into the ASGI scope's state for the routes;
2. the rate limit (when on): one token from the caller's bucket, else 429 with `Retry-After`;
3. the body size: a declared `Content-Length` over `max_body_bytes` is refused at once, and the
   body is read chunk by chunk, counting, before the app sees it, so a chunked or lying upload
   is cut off as soon as it passes the cap (413).

Open paths (`serve.auth.is_open`: /health, /health/ready, /docs, /openapi.json and the web pages) need
no key and are not rate limited.
Every refusal is the OpenAI error envelope. The app is JSON-only, so reading the (capped) body
here costs no more memory than FastAPI's own `request.body()` that follows.
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from serve.auth import AuthConfig, KeyStore, is_open, secret_of
from serve.errors import APIError, error_body

Scope = dict[str, Any]
Message = dict[str, Any]


class RateLimitConfig(BaseModel):
    """`gateway.rate_limit`: a token bucket per caller.

    The buckets live in each ingress replica's memory: with N ingress replicas a caller can get
    up to N times the configured rate (Serve's proxies spread requests over the replicas), and a
    restarted replica starts with full buckets. Size the numbers per replica.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    requests_per_s: float = Field(10.0, gt=0, description="sustained requests per second per caller")
    burst: int = Field(20, ge=1, description="requests a caller may make at once after being idle")
    key: Literal["auto", "api_key", "client_ip"] = Field(
        "auto", description="who a bucket belongs to; auto: the API key when auth is on, else the client IP"
    )
    max_callers: int = Field(100_000, ge=1, description="buckets kept; the least recently used go first")


class TokenBucket:
    """`burst` tokens, refilled at `rate` per second; each request takes one."""

    __slots__ = ("tokens", "updated")

    def __init__(self, burst: int, now: float) -> None:
        self.tokens = float(burst)
        self.updated = now

    def take(self, rate: float, burst: int, now: float) -> float:
        """Take a token: 0.0 if there was one, else the seconds until there will be."""
        self.tokens = min(float(burst), self.tokens + (now - self.updated) * rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate


class RateLimiter:
    """Token buckets by caller, in one process (single event loop: no locking needed)."""

    def __init__(self, config: RateLimitConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def retry_after(self, caller: str, rate: float | None = None) -> int:
        """0 if the caller may go ahead now, else whole seconds to wait (at least 1); `rate`: the
        caller's own requests per second (an API key's `rate_limit`) instead of the configured one."""
        now = self.clock()
        bucket = self._buckets.get(caller)
        if bucket is None:
            bucket = self._buckets[caller] = TokenBucket(self.config.burst, now)
            if len(self._buckets) > self.config.max_callers:
                # The least recently seen caller; idle for burst/rate seconds it was full anyway.
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(caller)
        wait = bucket.take(rate or self.config.requests_per_s, self.config.burst, now)
        return 0 if wait <= 0 else max(1, math.ceil(wait))


class Guard:
    """The settings GuardMiddleware enforces for one gateway.

    `keys`: the bootstrap keys (env/file); `accounts`: the store's keys (and the bootstrap keys
    through it). Auth is on when either is set.
    """

    def __init__(
        self,
        max_body_bytes: int,
        keys: KeyStore | None = None,
        limiter: RateLimiter | None = None,
        accounts: Any = None,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.keys = keys
        self.accounts = accounts
        self.limiter = limiter
        self.auth = keys is not None or accounts is not None
        self.by_key = limiter is not None and (
            limiter.config.key == "api_key" or (limiter.config.key == "auto" and self.auth)
        )
        if self.by_key and not self.auth:
            raise ValueError("rate_limit.key is api_key but auth is off: turn auth on or use client_ip")

    @classmethod
    def from_config(
        cls, max_body_bytes: int, auth: AuthConfig, rate_limit: RateLimitConfig, accounts: Any = None
    ) -> Guard:
        keys = None
        if auth.enabled:
            try:
                keys = KeyStore.from_config(auth)
            except ValueError:
                if accounts is None:  # without the store, auth needs bootstrap keys
                    raise
        limiter = RateLimiter(rate_limit) if rate_limit.enabled else None
        return cls(max_body_bytes, keys, limiter, accounts if auth.enabled else None)

    async def caller(self, authorization: str | None) -> Any:
        """The caller of a request (`serve.accounts.Caller`); APIError 401 (or 503) if there is none."""
        from serve.accounts import Caller, unauthorized  # noqa: PLC0415  (the store is optional here)

        secret = secret_of(authorization)
        if secret is None:
            raise unauthorized(_UNAUTHORIZED)
        if self.keys is not None:
            key_id = self.keys.match(secret)
            if key_id is not None:
                return Caller(key_id=key_id, admin=self.keys.is_admin(key_id))
        if self.accounts is None:
            raise unauthorized(_UNAUTHORIZED)
        return await self.accounts.identify(secret)


GuardSource = Guard | Callable[[], "Guard | None"]


class GuardMiddleware:
    """Auth, rate limit and body cap in front of an ASGI app (see the module docstring).

    `guard` is a Guard, or a function returning the current one (the ingress reads it from its
    Serve replica, since the app object is copied when the deployment class is decorated).
    """

    def __init__(self, app: Callable, guard: GuardSource) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        guard = self.guard if isinstance(self.guard, Guard) else self.guard()
        if scope["type"] != "http" or guard is None:
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        if not is_open(route_path(scope)):
            key_id, rate = None, None
            if guard.auth:
                try:
                    caller = await guard.caller(headers.get("authorization"))
                except APIError as error:
                    await _refuse(send, error.status, error.message, error.type, error.code, error.headers)
                    return
                key_id, rate = caller.key_id, caller.rate_limit
                # the routes' caller context (serve/routers/common.py) reads it from here
                state = scope.setdefault("state", {})
                state["key_id"], state["caller"] = key_id, caller
            if guard.limiter is not None:
                bucket = f"key:{key_id}" if guard.by_key else f"ip:{_client_ip(scope)}"
                wait = guard.limiter.retry_after(bucket, rate)
                if wait:
                    await _refuse(
                        send,
                        429,
                        f"Rate limit reached: at most {guard.limiter.config.requests_per_s:g} requests per second"
                        f" (bursts of {guard.limiter.config.burst}). Retry after {wait} s.",
                        "rate_limit_error",
                        "rate_limit_exceeded",
                        {"retry-after": str(wait)},
                    )
                    return
        declared = headers.get("content-length", "")
        if declared.strip().isdigit() and int(declared) > guard.max_body_bytes:
            await _refuse(send, 413, _too_large(guard.max_body_bytes), "invalid_request_error", "request_too_large")
            return
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break  # http.disconnect: let the app see it
            size += len(message.get("body", b""))
            if size > guard.max_body_bytes:
                await _refuse(send, 413, _too_large(guard.max_body_bytes), "invalid_request_error", "request_too_large")
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(messages, receive), send)


_UNAUTHORIZED = "Missing or invalid API key: send it as 'Authorization: Bearer <key>' (or fal's 'Key <key>')."


def _too_large(limit: int) -> str:
    return f"The request body is larger than the limit of {limit} bytes."


def route_path(scope: Scope) -> str:
    """The path the app routes on: without the Serve route prefix (root_path)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


def _headers(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}


def _client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _replay(messages: list[Message], receive: Callable) -> Callable:
    """A receive() that hands out the already-read body as one message, then the real receive."""
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    pending += [m for m in messages if m["type"] != "http.request"]

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


async def _refuse(
    send: Callable, status: int, message: str, type: str, code: str, headers: dict[str, str] | None = None
) -> None:
    payload = json.dumps(error_body(message, type, None, code)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload, "more_body": False})
