"""API keys in either scheme: `Authorization: Bearer <key>` (OpenAI's) or `Key <key>` (fal's, what
`fal_client` sends from FAL_KEY): the same keys, the same key id, in the store and at the front door."""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import pytest
from fastapi import FastAPI

from serve.auth import KeyStore
from serve.limits import Guard, GuardMiddleware

KEY = "fal-style-key-0123456789abcdef"
KEY_ID = hashlib.sha256(KEY.encode()).hexdigest()[:12]


@pytest.mark.parametrize(
    "header",
    [f"Bearer {KEY}", f"Key {KEY}", f"key {KEY}", f"KEY {KEY}", f"bearer {KEY}", f"  Key   {KEY}  "],
)
def test_both_schemes_name_the_same_key(header):
    assert KeyStore([hashlib.sha256(KEY.encode()).digest()]).identify(header) == KEY_ID


@pytest.mark.parametrize(
    "header",
    [None, "", "Key", "Key ", f"Basic {KEY}", f"Token {KEY}", f"Key {KEY}x", f"Key{KEY}", KEY, f"Key x{KEY}"],
)
def test_anything_else_is_no_key(header):
    assert KeyStore([hashlib.sha256(KEY.encode()).digest()]).identify(header) is None


def test_the_front_door_accepts_the_key_scheme():
    api = FastAPI()

    @api.post("/fal/fal-ai/florence-2-large/caption")
    async def run() -> dict:
        return {"results": "ok"}

    api.add_middleware(GuardMiddleware, guard=Guard(1000, keys=KeyStore([hashlib.sha256(KEY.encode()).digest()])))

    async def post(headers: dict[str, str]) -> httpx.Response:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            return await client.post("/fal/fal-ai/florence-2-large/caption", json={}, headers=headers)

    for scheme in ("Key", "Bearer"):
        assert asyncio.run(post({"Authorization": f"{scheme} {KEY}"})).json() == {"results": "ok"}
    refused = asyncio.run(post({"Authorization": f"Key wrong-{KEY}"}))
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
