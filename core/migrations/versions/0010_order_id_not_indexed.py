"""orders.order_id loses its unique index: an orderId is unique by construction now.

A new order's orderId begins with its order number (core/ids.py: ``new_order_id``), and
order numbers are the primary key, so no index has to prove it unique; and nothing
looks an order up by orderId. The index cost more than any other part of storing an
order: orderIds were random, so each accepted order landed on its own page of it, and
that page went to the log at every commit (bench/LOG.md, 2026-11-29 "orderId").
Existing orderIds stay as they are: they were unique under the index, and a random
one meeting a derived one is a 116-bit coincidence.

SQLite cannot drop a constraint in place, so there the table is copied (batch mode):
once, 7.5 s for a file of 1,000,000 orders (2026-11-29, AMD EPYC).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# 0001 declared the constraint without a name: PostgreSQL named it by its own rule, and
# SQLite keeps none, so batch mode is given a name to drop it by.
SQLITE_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        with op.batch_alter_table(
            "orders", recreate="always", naming_convention=SQLITE_NAMES
        ) as batch:
            batch.drop_constraint("uq_orders_order_id", type_="unique")
        return
    for constraint in sa.inspect(bind).get_unique_constraints("orders"):
        if constraint["column_names"] == ["order_id"]:
            op.drop_constraint(constraint["name"], "orders", type_="unique")


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.create_unique_constraint("uq_orders_order_id", ["order_id"])
