"""Request and response bodies of the usage and key-management endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

GroupBy = Literal["model", "key", "day"]


class UsageGroup(BaseModel):
    group: str | None = Field(description="a model id, a key id (null: requests without a key) or a UTC day")
    requests: int
    images: int
    prompt_tokens: int
    completion_tokens: int
    estimated_cost_usd: float = Field(description="images x the model's price per 1,000 images / 1,000")
    unpriced_requests: int = Field(description="requests to models without a price: counted at cost 0")


class UsageReport(BaseModel):
    object: Literal["usage"] = "usage"
    group_by: GroupBy
    key_id: str | None = Field(description="whose usage this is; null: every key's (admin, or auth off)")
    start: datetime | None
    end: datetime | None
    data: list[UsageGroup]


class KeyFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    budget_usd: float | None = Field(None, ge=0, description="spend after which the key gets 429 insufficient_quota")
    models: list[str] | None = Field(None, min_length=1, description="model ids the key may use (null: all)")
    rate_limit: float | None = Field(None, gt=0, description="requests per second (null: the gateway's)")
    expires_at: datetime | None = None


class KeyCreate(KeyFields):
    name: str = Field(min_length=1, max_length=200)


class KeyUpdate(KeyFields):
    """Only the fields sent are changed; send null to clear one."""

    name: str | None = Field(None, min_length=1, max_length=200)


class KeyRevoke(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=500)


class KeyOut(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    name: str
    secret_prefix: str = Field(description="the secret's first characters, to recognise it")
    models: list[str] | None
    rate_limit: float | None
    budget_usd: float | None
    spent_usd: float
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_reason: str | None
    created_at: datetime
    updated_at: datetime


class KeyCreated(KeyOut):
    secret: str = Field(description="shown once: only its hash is stored")


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyOut]
