"""The orders column holding the partner's Supplier field (the carrier: 中国移动, ...) is
named ``carrier``, as it is everywhere in the code: a supplier is the upstream vendor.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A rename in place on both backends (SQLite 3.25 and later): no index names it, and
    # no row is rewritten.
    op.execute("ALTER TABLE orders RENAME COLUMN supplier TO carrier")


def downgrade() -> None:
    op.execute("ALTER TABLE orders RENAME COLUMN carrier TO supplier")
