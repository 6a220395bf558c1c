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


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class KeyStore:
    """The SHA-256 digests of the accepted API keys."""

    def __init__(self, digests: Iterable[bytes]) -> None:
        self._digests = tuple(dict.fromkeys(digests))

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
        store = cls(digests)
        if not store:
            sources = " or ".join(s for s in (config.keys_env and f"${config.keys_env}", config.keys_file) if s)
            raise ValueError(
                f"gateway.auth is enabled but no API keys were found in {sources or 'nothing'};"
                " set keys_env and/or keys_file"
            )
        logger.info("API key auth on: %d key(s)", len(store))
        return store

    def identify(self, authorization: str | None) -> str | None:
        """The key id of a valid `Authorization: Bearer <key>` header, else None."""
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        presented = digest(token)
        match: bytes | None = None
        for known in self._digests:  # no early exit: the time taken does not depend on which key matched
            if hmac.compare_digest(presented, known):
                match = known
        return match.hex()[:12] if match is not None else None


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
