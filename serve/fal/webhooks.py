"""Webhooks of the fal queue: the payload, its Standard Webhooks signature, and a pinned delivery.

Signature (https://www.standardwebhooks.com): each POST carries

    webhook-id: <the job's request id>            (the same on every retry: receivers deduplicate by it)
    webhook-timestamp: <unix seconds of this try>
    webhook-signature: v1,<base64 HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")>

with `key` the configured secret (`$GIGAROUTER_WEBHOOK_SECRET`): a `whsec_<base64>` secret is its
base64-decoded bytes (the Standard Webhooks libraries' format), any other string its UTF-8 bytes.
`verify` is the receiver's side (the `standardwebhooks` package does the same).

A webhook URL is a client's, so it goes through the image fetcher's address policy
(`images.allow_hosts`, serve/netguard.py): the host is resolved, refused if any address is
private, loopback, link-local or otherwise non-public unless `allow_hosts` names it, and the POST
goes to the checked address (no second lookup: no DNS rebinding), with the name in `Host` and SNI.
No redirects are followed and no proxy from the environment is used.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

import httpx

from serve.fal.protocol import WebhookPayload
from serve.images import AddressRefused, allowed_address, pinned_client
from serve.netguard import HostPolicy, IPAddress, parse_host_address
from serve.store import JobRecord

TOLERANCE_S = 300  # a receiver refuses a timestamp further than this from its clock (replays)


class WebhookRefused(ValueError):
    """A webhook URL the gateway will not call (the message says why)."""


class DeliveryFailed(Exception):
    """One try that did not get a 2xx answer."""


def signing_key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, message_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = int(now if now is not None else time.time())
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
        "user-agent": "gigarouter-serve webhooks",
    }


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None) -> bool:
    """The receiver's check: a `v1` signature of these headers and body, with a recent timestamp."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        message_id, timestamp = lower["webhook-id"], int(lower["webhook-timestamp"])
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > TOLERANCE_S:
        return False
    expected = sign(secret, message_id, timestamp, body)
    offered = lower.get("webhook-signature", "").split()  # several, space-separated, during key rotation
    return any(hmac.compare_digest(expected, candidate) for candidate in offered)


def payload(job: JobRecord) -> bytes:
    """fal's webhook body for an ended job: OK with the result, or ERROR with the error body."""
    if job.status == "COMPLETED":
        body = WebhookPayload(request_id=job.id, gateway_request_id=job.id, status="OK", payload=job.result)
    else:
        error = job.error or {}
        body = WebhookPayload(
            request_id=job.id,
            gateway_request_id=job.id,
            status="ERROR",
            error=f"Invalid status code: {error.get('status', 500)}",
            payload=error.get("body") or {"detail": error.get("message"), "error_type": error.get("error_type")},
        )
    return json.dumps(body.model_dump(), separators=(",", ":")).encode()


def parse_target(url: str) -> httpx.URL:
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise WebhookRefused("fal_webhook is not a valid URL.") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise WebhookRefused("fal_webhook must be an http(s) URL with a host.")
    if target.userinfo:
        raise WebhookRefused("fal_webhook must not contain a username or password.")
    return target


async def checked_address(target: httpx.URL, policy: HostPolicy) -> IPAddress:
    """The address to POST to: resolved, and refused unless every answer is allowed by `policy`."""
    try:
        return await allowed_address(target, policy)
    except AddressRefused as refused:
        if refused.address is None:
            raise WebhookRefused(f"the fal_webhook host {refused.host!r} could not be resolved.") from None
        raise WebhookRefused(
            f"the fal_webhook host {refused.host!r} resolves to an address that is not allowed (private, loopback,"
            " link-local or otherwise non-public); an operator may allow it with images.allow_hosts."
        ) from None


async def check_url(url: str, policy: HostPolicy) -> None:
    """At submit: WebhookRefused for a URL that would never be called."""
    await checked_address(parse_target(url), policy)


async def deliver(url: str, body: bytes, headers: dict[str, str], policy: HostPolicy, timeout_s: float) -> None:
    """POST once to the checked, pinned address; DeliveryFailed (or WebhookRefused) unless 2xx."""
    target = parse_target(url)
    address = await checked_address(target, policy)
    host = target.raw_host.decode("ascii")
    extensions: dict[str, Any] = {}
    if target.scheme == "https" and parse_host_address(host) is None:
        extensions["sni_hostname"] = host
    pinned = target.copy_with(host=str(address), fragment=None)
    try:
        async with pinned_client(httpx.Timeout(timeout_s)) as client:
            response = await client.post(
                pinned, content=body, headers={**headers, "host": target.netloc.decode("ascii")}, extensions=extensions
            )
    except httpx.HTTPError as error:
        raise DeliveryFailed(f"{type(error).__name__}: {error}") from None
    if not 200 <= response.status_code < 300:
        raise DeliveryFailed(f"the receiver answered HTTP {response.status_code}")
