"""Money: partner accounts and their append-only ledger, partner notifications, attempt costs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("app_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("order_no", sa.String(32)),
        sa.Column("event_key", sa.String(80), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("event_key", name="uq_ledger_event_key"),
    )
    op.create_index("ix_ledger_app_id", "ledger", ["app_id"])
    op.create_table(
        "accounts",
        sa.Column("app_id", sa.String(64), primary_key=True),
        sa.Column("credited", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("captured", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("held", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("credit_limit", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.execute(
        "INSERT INTO accounts (app_id, credited, captured, held, credit_limit, updated_at) "
        "SELECT app_id, 0, 0, 0, 0, created_at FROM apps"
    )
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("order_no", sa.String(32), nullable=False),
        sa.Column("app_id", sa.String(64), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.BigInteger),
        sa.Column("lease_owner", sa.String(64)),
        sa.Column("lease_until", sa.BigInteger),
        sa.Column("delivered_at", sa.BigInteger),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("order_no", name="uq_notifications_order_no"),
    )
    op.create_index("ix_notifications_next_attempt_at", "notifications", ["next_attempt_at"])
    with op.batch_alter_table("apps") as batch:
        batch.add_column(sa.Column("notify_url", sa.Text))
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("cost", sa.BigInteger))
        batch.add_column(
            sa.Column("refused", sa.Boolean, nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("refused")
        batch.drop_column("cost")
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("notify_url")
    op.drop_index("ix_notifications_next_attempt_at", table_name="notifications")
    op.drop_table("notifications")
    op.drop_table("accounts")
    op.drop_index("ix_ledger_app_id", table_name="ledger")
    op.drop_table("ledger")
