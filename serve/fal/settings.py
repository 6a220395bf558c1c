"""`gateway.fal`: the fal queue's settings (jobs, runners, retention, webhooks)."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

WEBHOOK_SECRET_ENV = "GIGAROUTER_WEBHOOK_SECRET"


class FalQueueConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    public_url: str | None = Field(
        None,
        description="the queue's base URL in the status/response/cancel URLs it answers with (e.g."
        " https://gateway.example.com/fal/queue); default: the scheme and host the request came to",
    )
    result_ttl_s: float = Field(3600, gt=0, description="how long a job's result is kept; then it answers 410")
    tombstone_s: float = Field(
        7 * 86400, ge=0, description="how long an expired job still answers 410 (then 404: forgotten)"
    )
    runner_concurrency: int = Field(8, ge=1, description="jobs each ingress replica runs at once")
    lease_s: float = Field(
        30, ge=1, description="a runner renews its job's lease every third of this; a job whose lease expired is"
        " taken to be orphaned (its runner died)"  # fmt: skip
    )
    max_attempts: int = Field(3, ge=1, description="runs of a job whose runners died before it is failed")
    poll_s: float = Field(0.25, gt=0, le=10, description="how often an idle runner looks for queued jobs")
    webhook_secret_env: str = Field(
        WEBHOOK_SECRET_ENV,
        description="the environment variable holding the webhook signing secret (Standard Webhooks:"
        " `whsec_<base64>` or any string); without one, `fal_webhook` is refused",
    )
    webhook_max_attempts: int = Field(10, ge=1, description="tries of a webhook delivery before it is given up")
    webhook_backoff_s: float = Field(2.0, gt=0, description="the wait before the second try; doubled after each")
    webhook_backoff_max_s: float = Field(900.0, gt=0)
    webhook_timeout_s: float = Field(10.0, gt=0, description="a delivery's connect + answer time limit")

    def webhook_secret(self) -> str | None:
        return os.environ.get(self.webhook_secret_env) or None
