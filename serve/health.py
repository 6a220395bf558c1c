"""The health endpoints' contract: liveness (`/health`) and readiness (`/health/ready`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Readiness(BaseModel):
    """`GET /health/ready`: 200 with `ready` once every live model has a running replica, else 503.

    Coming-soon models are not waited for: they are at zero replicas by design and wake on demand.
    """

    status: Literal["ready", "not_ready"]
    waiting_for: dict[str, str] = Field(
        default_factory=dict, description="live models without a running replica, with their state and reason"
    )
