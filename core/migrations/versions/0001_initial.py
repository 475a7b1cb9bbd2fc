"""Initial schema: partner apps, token key, orders and their upstream attempts.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "apps",
        sa.Column("app_id", sa.String(64), primary_key=True),
        sa.Column("company", sa.String(128), nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("sign_type", sa.String(16), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "server_keys",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(128), nullable=False),
    )
    op.create_table(
        "orders",
        sa.Column("order_no", sa.String(32), primary_key=True),
        sa.Column("order_id", sa.String(32), nullable=False, unique=True),
        sa.Column("app_id", sa.String(64), nullable=False),
        sa.Column("cstm_order_no", sa.String(64), nullable=False),
        sa.Column("cstm_order_name", sa.String(128), nullable=False),
        sa.Column("company", sa.String(128), nullable=False),
        sa.Column("supplier", sa.String(32), nullable=False),
        sa.Column("phone_no", sa.String(16), nullable=False),
        sa.Column("product_id", sa.String(64), nullable=False),
        sa.Column("face_value", sa.BigInteger, nullable=False),
        sa.Column("price", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("fail_code", sa.String(64)),
        sa.Column("fail_reason", sa.Text),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("finished_at", sa.BigInteger),
        sa.Column("next_run_at", sa.BigInteger),
        sa.Column("lease_owner", sa.String(64)),
        sa.Column("lease_until", sa.BigInteger),
        sa.UniqueConstraint("app_id", "cstm_order_no", name="uq_orders_app_cstm_order_no"),
    )
    op.create_index("ix_orders_next_run_at", "orders", ["next_run_at"])
    op.create_table(
        "attempts",
        sa.Column("reference", sa.String(48), primary_key=True),
        sa.Column("order_no", sa.String(32), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("plugin", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("supplier_ref", sa.String(128)),
        sa.Column("code", sa.String(64)),
        sa.Column("message", sa.Text),
        sa.Column("queries", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("order_no", "seq", name="uq_attempts_order_seq"),
    )


def downgrade() -> None:
    op.drop_table("attempts")
    op.drop_index("ix_orders_next_run_at", table_name="orders")
    op.drop_table("orders")
    op.drop_table("server_keys")
    op.drop_table("apps")
