"""The typed records the store reads and writes (plain dataclasses: no ORM objects leave the store)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal

from serve.store.schema import from_nano

SECRET_PREFIX = "gr-"
DISPLAY_CHARS = 8  # of the random part, kept in clear beside the hash so people can tell keys apart

GroupBy = Literal["model", "key", "day"]


def new_secret() -> str:
    """A key's secret: `gr-` and 32 random bytes, URL-safe base64 (256 bits: a plain hash suffices)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """What the store keeps of a secret. A fast hash is enough for 256-bit random secrets (nothing
    to guess); a slow password hash would cost every request."""
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    return secret[: len(SECRET_PREFIX) + DISPLAY_CHARS]


def utcnow() -> datetime:
    return datetime.now(UTC)


def cost_usd(images: int, price_per_1k_images: float | None) -> tuple[float, bool]:
    """The estimated cost of a request and whether the model has a price (without one it costs 0)."""
    if price_per_1k_images is None:
        return 0.0, False
    return images * price_per_1k_images / 1000, True


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An API key as stored, without its secret."""

    id: str
    name: str
    secret_prefix: str
    models: list[str] | None  # None: every model
    rate_limit: float | None  # requests per second; None: the gateway's default
    budget_usd: float | None  # None: no budget
    spent_usd: float
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_reason: str | None
    created_at: datetime
    updated_at: datetime
    # the hash of the secret (never the secret): lets an ingress cache keys by what callers present
    secret_hash: str = field(default="", repr=False, compare=False)

    @classmethod
    def from_row(cls, row: Any) -> KeyRecord:
        """From a row of the `api_keys` table."""
        return cls(
            id=row.id,
            name=row.name,
            secret_prefix=row.secret_prefix,
            models=list(row.models) if row.models is not None else None,
            rate_limit=row.rate_limit,
            budget_usd=from_nano(row.budget_nanousd),
            spent_usd=from_nano(row.spent_nanousd) or 0.0,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            revoked_reason=row.revoked_reason,
            created_at=row.created_at,
            updated_at=row.updated_at,
            secret_hash=getattr(row, "secret_hash", ""),
        )

    def refusal(self, now: datetime | None = None) -> str | None:
        """Why the key may not be used now (revoked or expired), or None."""
        if self.revoked_at is not None:
            return f"API key {self.id} was revoked: {self.revoked_reason or 'no reason given'}"
        if self.expires_at is not None and self.expires_at <= (now or utcnow()):
            return f"API key {self.id} expired at {self.expires_at.isoformat()}"
        return None

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models

    @property
    def budget_exhausted(self) -> bool:
        return budget_exhausted(self.spent_usd, self.budget_usd)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("secret_hash", None)
        for name in ("expires_at", "revoked_at", "created_at", "updated_at"):
            data[name] = data[name].isoformat() if data[name] else None
        return data


def check_key_fields(fields: dict[str, Any]) -> None:
    """Raise ValueError, naming the field, for a key setting out of range (absent fields: fine)."""
    if "name" in fields and not (isinstance(fields["name"], str) and fields["name"].strip()):
        raise ValueError("name must be a non-empty string")
    budget = fields.get("budget_usd")
    if budget is not None and budget < 0:
        raise ValueError("budget_usd must be >= 0 (or None for no budget)")
    rate = fields.get("rate_limit")
    if rate is not None and rate <= 0:
        raise ValueError("rate_limit must be > 0 requests per second (or None for the gateway's default)")
    models = fields.get("models")
    if models is not None and (not models or not all(isinstance(m, str) and m for m in models)):
        raise ValueError("models must list at least one model id (or be None for every model)")
    expires = fields.get("expires_at")
    if expires is not None and not isinstance(expires, datetime):
        raise ValueError("expires_at must be a datetime (or None for no expiry)")


def budget_exhausted(spent_usd: float, budget_usd: float | None) -> bool:
    """A key is refused once its recorded cost reaches its budget (no budget: never)."""
    return budget_usd is not None and spent_usd >= budget_usd


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One served request, as the service layer reports it.

    `request_id` is unique per request: recording the same row twice counts it once.
    `charged_usd` is what `Store.charge` took for this request at admission (0 if not used): the
    key's spent total is corrected by `cost_usd - charged_usd` when the row is recorded.
    """

    request_id: str
    model: str
    endpoint: str
    status: int
    latency_ms: float
    key_id: str | None = None
    task: str | None = None
    images: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    priced: bool = True
    charged_usd: float = 0.0
    created_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class UsageTotal:
    """Usage summed over one group (a model id, a key id, or an ISO day `YYYY-MM-DD`)."""

    group: str | None  # None: requests without a key, under group_by="key"
    requests: int
    images: int
    prompt_tokens: int
    completion_tokens: int
    estimated_cost_usd: float
    unpriced_requests: int  # requests for models without a price: counted at cost 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def as_day(value: date | datetime | str) -> str:
    return value if isinstance(value, str) else value.strftime("%Y-%m-%d")
