"""The store's first schema: API keys, the usage ledger, demand signals and standby claims.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def surrogate_id() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("secret_prefix", sa.String(16), nullable=False),
        sa.Column("models", sa.JSON, nullable=True),
        sa.Column("rate_limit", sa.Double, nullable=True),
        sa.Column("budget_nanousd", sa.BigInteger, nullable=True),
        sa.Column("spent_nanousd", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_reason", sa.String(500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "usage",
        sa.Column("id", surrogate_id(), primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=False, unique=True),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("endpoint", sa.String(100), nullable=False),
        sa.Column("task", sa.String(100), nullable=True),
        sa.Column("images", sa.Integer, nullable=False, server_default="0"),
        sa.Column("prompt_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Double, nullable=False),
        sa.Column("cost_nanousd", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("priced", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("charged_nanousd", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("day", sa.Date, nullable=False),
    )
    op.create_index("usage_key_created", "usage", ["key_id", "created_at"])
    op.create_index("usage_created", "usage", ["created_at"])
    op.create_index("usage_day", "usage", ["day"])
    op.create_table(
        "interest",
        sa.Column("id", surrogate_id(), primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("interest_model_created", "interest", ["model", "created_at"])
    op.create_table(
        "standby_claims",
        sa.Column("key", sa.String(500), primary_key=True),
        sa.Column("started_at", sa.Double, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("standby_claims")
    op.drop_index("interest_model_created", table_name="interest")
    op.drop_table("interest")
    op.drop_index("usage_day", table_name="usage")
    op.drop_index("usage_created", table_name="usage")
    op.drop_index("usage_key_created", table_name="usage")
    op.drop_table("usage")
    op.drop_table("api_keys")
