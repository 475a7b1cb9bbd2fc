"""Carrier checks: each app's policy for an order whose Supplier contradicts the phone
number's segment, and the segment's carrier recorded on an order accepted that way.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing apps keep accepting what they sent before: the default is "accept".
    with op.batch_alter_table("apps") as batch:
        batch.add_column(
            sa.Column("carrier_mismatch", sa.String(8), nullable=False, server_default="accept")
        )
    # Nullable, no default: existing orders were never checked, and adding it rewrites nothing.
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("segment_carrier", sa.String(32)))


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("segment_carrier")
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("carrier_mismatch")
