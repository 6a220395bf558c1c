"""Jobs of the fal queue: submitted requests, their leases, results and webhook deliveries.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("app_id", sa.String(300), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("task", sa.String(100), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("request", sa.JSON, nullable=True),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("error", sa.JSON, nullable=True),
        sa.Column("logs", sa.JSON, nullable=False),
        sa.Column("inference_time", sa.Double, nullable=True),
        sa.Column("webhook_url", sa.String(2048), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("result_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expired", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("webhook_state", sa.String(16), nullable=True),
        sa.Column("webhook_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("webhook_next_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("webhook_error", sa.String(500), nullable=True),
    )
    op.create_index("jobs_status_model_seq", "jobs", ["status", "model", "seq"])
    op.create_index("jobs_status_lease", "jobs", ["status", "lease_expires_at"])
    op.create_index("jobs_webhook_due", "jobs", ["webhook_state", "webhook_next_at"])
    op.create_index("jobs_result_expires", "jobs", ["result_expires_at"])


def downgrade() -> None:
    for name in ("jobs_result_expires", "jobs_webhook_due", "jobs_status_lease", "jobs_status_model_seq"):
        op.drop_index(name, table_name="jobs")
    op.drop_table("jobs")
