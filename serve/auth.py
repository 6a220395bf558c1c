"""API keys: `Authorization: Bearer <key>`, checked against SHA-256 digests only.

Keys come from an environment variable (comma- or whitespace-separated) and/or a file (one per
line; lines starting with `#` are comments). A file line holds the key itself or its digest as
`sha256:<64 hex>`, so an operator can keep no plaintext key on disk at all. In memory the gateway
keeps digests only, compares them with `hmac.compare_digest`, and never logs a key: a caller is
named by `key_id`, the first 12 hex digits of its key's digest. Keys are read when an ingress
replica starts; rotating them means redeploying (or restarting) the ingress.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger("gigarouter.auth")

_DIGEST_LINE = re.compile(r"sha256:([0-9a-fA-F]{64})")
_MIN_KEY_CHARS = 16

# Paths anyone may call without a key: liveness and the API description.
OPEN_PATHS = frozenset({"/health", "/health/ready", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
# The web pages and their files (serve/routers/pages.py): they hold only the catalog's public
# config; live state, demand and the playground's calls go through the API with the user's key.
OPEN_PAGES = frozenset({"/"})
OPEN_PAGE_PREFIXES = ("/models/", "/static/")


def is_open(path: str) -> bool:
    """Whether a path (without the route prefix) needs no key and is not rate limited."""
    return path in OPEN_PATHS or path in OPEN_PAGES or path.startswith(OPEN_PAGE_PREFIXES)


class AuthConfig(BaseModel):
    """`gateway.auth`: off by default (local use); production turns it on."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    keys_env: str | None = Field(
        "GIGAROUTER_API_KEYS",
        description="environment variable of the ingress replicas holding comma-separated keys",
    )
    keys_file: str | None = Field(
        None, description="file on the ingress node: one key, or `sha256:<hex digest>` of a key, per line"
    )
    admin_keys_env: str | None = Field(
        "GIGAROUTER_ADMIN_KEYS",
        description="environment variable of the ingress replicas holding the admin keys (comma-separated):"
        " they manage keys (/v1/admin/keys) and read everyone's usage",
    )


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class KeyStore:
    """The SHA-256 digests of the accepted API keys."""

    def __init__(self, digests: Iterable[bytes], admin: Iterable[bytes] = ()) -> None:
        admin = tuple(dict.fromkeys(admin))
        self._digests = tuple(dict.fromkeys([*digests, *admin]))
        self._admin_ids = frozenset(d.hex()[:12] for d in admin)

    def is_admin(self, key_id: str) -> bool:
        """Whether the key with this id is an admin key."""
        return key_id in self._admin_ids

    def __len__(self) -> int:
        return len(self._digests)

    @classmethod
    def from_config(cls, config: AuthConfig, environ: Mapping[str, str] | None = None) -> KeyStore:
        """Load the keys an enabled config names; raise ValueError if it names none."""
        environ = os.environ if environ is None else environ
        digests: list[bytes] = []
        if config.keys_env:
            digests += [digest(key) for key in _split_keys(environ.get(config.keys_env, ""), config.keys_env)]
        if config.keys_file:
            digests += _read_key_file(Path(config.keys_file).expanduser())
        admin: list[bytes] = []
        if config.admin_keys_env:
            admin = [digest(key) for key in _split_keys(environ.get(config.admin_keys_env, ""), config.admin_keys_env)]
        store = cls(digests, admin)
        if not store:
            sources = " or ".join(s for s in (config.keys_env and f"${config.keys_env}", config.keys_file) if s)
            raise ValueError(
                f"gateway.auth is enabled but no API keys were found in {sources or 'nothing'};"
                " set keys_env and/or keys_file"
            )
        logger.info("API key auth on: %d key(s)", len(store))
        return store

    def match(self, secret: str) -> str | None:
        """The key id of a bootstrap key's secret, else None (constant time over the keys)."""
        presented = digest(secret)
        found: bytes | None = None
        for known in self._digests:  # no early exit: the time taken does not depend on which key matched
            if hmac.compare_digest(presented, known):
                found = known
        return found.hex()[:12] if found is not None else None

    def identify(self, authorization: str | None) -> str | None:
        """The key id of a valid `Authorization` header, else None: `Bearer <key>` (OpenAI's scheme) or
        `Key <key>` (fal's: what `fal_client` sends from `FAL_KEY`), the same keys either way; the
        scheme in any letter case."""
        secret = secret_of(authorization)
        return None if secret is None else self.match(secret)


def secret_of(authorization: str | None) -> str | None:
    """The key in `Authorization: Bearer <key>` (OpenAI's scheme) or `Key <key>` (fal's), else None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() not in ("bearer", "key") or not token:
        return None
    return token


def _split_keys(text: str, source: str) -> list[str]:
    keys = [key for key in re.split(r"[\s,]+", text) if key]
    for key in keys:
        _check_key(key, source)
    return keys


def _check_key(key: str, source: str) -> None:
    if len(key) < _MIN_KEY_CHARS:
        # The message names where the key came from, never the key.
        raise ValueError(f"an API key in {source} is shorter than {_MIN_KEY_CHARS} characters")


def _read_key_file(path: Path) -> list[bytes]:
    if not path.is_file():
        raise ValueError(f"gateway.auth.keys_file {path} does not exist")
    digests = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        hashed = _DIGEST_LINE.fullmatch(line)
        if hashed:
            digests.append(bytes.fromhex(hashed.group(1)))
        else:
            _check_key(line, f"{path} line {number}")
            digests.append(digest(line))
    return digests
