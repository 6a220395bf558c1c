"""Typed configuration: YAML args -> these models -> deployment options. Nothing else reads the YAML.

This module holds the application-level args (`AppArgs`, `GatewayConfig`); a catalog entry and its
sections are in `serve.model_spec`, what every deployment is given in `serve.deployment_options`.
`serve.config` stays the public path for all of them: operators, tools and tests import from here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from families.registry import load
from serve.auth import AuthConfig
from serve.deployment_options import (
    DEMAND_POLICY_PATH,
    REPLICA_ENV,
    SCALE_TO_ZERO_DEFAULTS,
    picks_interpreter,
    with_env,
)
from serve.fal.settings import FalQueueConfig
from serve.images import ImageLimits
from serve.limits import RateLimitConfig
from serve.model_spec import (
    WEB_URL_PATTERN,
    BatchConfig,
    Benchmark,
    CardInfo,
    DemandPolicy,
    DeploymentConfig,
    GenerationConfig,
    Link,
    ModelSpec,
    Status,
    Strict,
    slug,
)

# Defined here, or re-exported from serve.model_spec and serve.deployment_options for the public path.
__all__ = [
    "AppArgs",
    "BatchConfig",
    "Benchmark",
    "CardInfo",
    "DEMAND_POLICY_PATH",
    "DemandPolicy",
    "DeploymentConfig",
    "GatewayConfig",
    "GenerationConfig",
    "HUB_ID",
    "Link",
    "ModelSpec",
    "REPLICA_ENV",
    "SCALE_TO_ZERO_DEFAULTS",
    "Status",
    "Strict",
    "WEB_URL_PATTERN",
    "picks_interpreter",
    "slug",
    "with_env",
]


class GatewayConfig(Strict):
    """Settings of the ingress."""

    request_timeout_s: float = Field(120.0, gt=0, description="a warm model must answer within this")
    cold_start_timeout_s: float = Field(180.0, gt=0, description="a model at zero replicas must answer within this")
    status_cache_s: float = Field(1.0, ge=0, description="how long a read of Serve's status is reused")
    max_images_per_request: int = Field(16, ge=1)
    max_inputs_per_request: int = Field(256, ge=1)
    max_labels: int = Field(256, ge=1)
    images: ImageLimits = Field(default_factory=ImageLimits)
    max_body_bytes: int = Field(
        32 * 1024 * 1024,
        gt=0,
        description="request bodies larger than this are refused with 413 (fits one max-size image as base64)",
    )
    auth: AuthConfig = Field(default_factory=AuthConfig)
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    database_url: str | None = Field(
        None,
        description="the store (keys, usage, demand, standby starts): sqlite+aiosqlite:///FILE (default"
        " data/gigarouter.sqlite3, or $GIGAROUTER_DATABASE_URL) or postgresql+asyncpg://USER:PASSWORD@HOST/DB"
        " (shared by every ingress replica on a cluster)",
    )
    demand_db: str | None = Field(
        None, description="older name: a SQLite file path, used as the database when database_url is not set"
    )
    metering: bool = Field(
        True, description="record usage and enforce budgets (false: no usage ledger, budgets not enforced)"
    )
    usage_flush_s: float = Field(
        1.0, gt=0, le=60, description="how often buffered usage rows are written (a crash loses at most this much)"
    )
    keys_refresh_s: float = Field(
        2.0, gt=0, le=60, description="how often each ingress re-reads the API keys (revokes take effect within it)"
    )
    num_replicas: int = Field(1, ge=1, description="ingress replicas")
    standby_keep_alive_s: int = Field(
        3600,
        ge=60,
        description="how long Ray keeps a model's idle standby worker before it may reclaim it; the gateway"
        " starts a new one shortly before",
    )
    standby_check_s: float = Field(
        10.0, ge=0.5, le=300, description="how often the ingress checks that each cold model's standby worker is there"
    )
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 0.25})
    max_ongoing_requests: int = Field(256, ge=1)
    fal: FalQueueConfig = Field(default_factory=FalQueueConfig, description="the fal queue (serve/fal/)")

    @property
    def store_url(self) -> str:
        """The database URL this gateway uses (a relative SQLite path is relative to the working directory)."""
        if self.database_url:
            return self.database_url
        if self.demand_db:
            return f"sqlite+aiosqlite:///{self.demand_db}"
        from serve.store.engine import default_url  # noqa: PLC0415  (kept out of config imports)

        return default_url()

    @model_validator(mode="after")
    def _rate_limit_key(self) -> GatewayConfig:
        if self.rate_limit.enabled and self.rate_limit.key == "api_key" and not self.auth.enabled:
            raise ValueError("gateway.rate_limit.key is api_key but gateway.auth is off: turn auth on or use client_ip")
        return self

    def serve_options(self, app_env: dict[str, Any] | None = None) -> dict[str, Any]:
        """The keyword arguments of `Deployment.options` for the ingress (`app_env`: as for the models)."""
        return {
            "num_replicas": self.num_replicas,
            "ray_actor_options": with_env(self.ray_actor_options, REPLICA_ENV, app_env),
            "max_ongoing_requests": self.max_ongoing_requests,
        }


class AppArgs(Strict):
    """Arguments of `serve.app:build_app`, as written under `args:` in a Serve config file."""

    families: list[str] = Field(
        default_factory=list,
        description="extra model families by import path (`package.module:DESCRIPTOR`), registered before"
        " the models are read",
    )
    models: list[ModelSpec] = Field(min_length=1)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    checkpoint_dir: str | None = Field(
        None, description="relative model sources are looked up here (default: the working directory)"
    )

    @model_validator(mode="before")
    @classmethod
    def _register_families(cls, data: Any) -> Any:
        # Before the models are validated: their `family` must name a registered one.
        for path in (data.get("families") or []) if isinstance(data, dict) else []:
            load(path)
        return data

    @model_validator(mode="after")
    def _unique(self) -> AppArgs:
        for attr in ("id", "deployment_name"):
            seen: set[str] = set()
            for model in self.models:
                value = getattr(model, attr)
                if value in seen:
                    raise ValueError(f"two models share the {attr.replace('_', ' ')} '{value}'")
                seen.add(value)
        return self

    def resolve_source(self, source: str) -> str:
        """A local checkpoint directory as an absolute path (replicas run elsewhere); a hub id unchanged.

        A source that is not a hub id (`owner/name`) is a local folder and must exist: a replica
        would otherwise ask the hub for it and retry for minutes instead of failing.
        """
        base = Path(self.checkpoint_dir).expanduser() if self.checkpoint_dir else Path.cwd()
        candidate = Path(source).expanduser()
        candidate = candidate if candidate.is_absolute() else base / candidate
        if candidate.is_dir():
            return str(candidate.resolve())
        if HUB_ID.fullmatch(source) and not source.startswith((".", "~", "/")):
            return source
        hint = " (build the tiny local checkpoints with `make checkpoints`)" if self.checkpoint_dir else ""
        raise ValueError(f"checkpoint folder {candidate.resolve()} does not exist{hint}")

    @model_validator(mode="after")
    def _sources_exist(self) -> AppArgs:
        for model in self.models:
            try:
                self.resolve_source(model.source)
            except ValueError as error:
                raise ValueError(f"model {model.id}: {error}") from None
        return self


# A Hugging Face hub repository id: `owner/name`.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
