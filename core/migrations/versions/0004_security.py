"""Security: secrets sealed at rest, secret rotation with a grace period, IP allowlists,
notify URLs on private addresses only when the operator allowed them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

Existing app secrets and the token key are sealed with the master key here (see
core/sealing.py), so the process that runs the upgrade needs the master key every
instance will use (``TOPUP_MASTER_KEY`` or the key file).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from core.sealing import load_sealer

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("apps") as batch:
        batch.alter_column("secret", type_=sa.Text, existing_nullable=False)
        batch.add_column(sa.Column("previous_secret", sa.Text))
        batch.add_column(sa.Column("previous_secret_until", sa.BigInteger))
        batch.add_column(sa.Column("allow_ips", sa.Text))
        batch.add_column(
            sa.Column("notify_allow_private", sa.Boolean, nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("server_keys") as batch:
        batch.alter_column("value", type_=sa.Text, existing_nullable=False)
    _seal_existing()


def _seal_existing() -> None:
    conn = op.get_bind()
    apps = conn.execute(sa.text("SELECT app_id, secret FROM apps")).all()
    keys = conn.execute(sa.text("SELECT name, value FROM server_keys")).all()
    if not apps and not keys:
        return
    sealer = load_sealer()
    for app_id, secret in apps:
        conn.execute(
            sa.text("UPDATE apps SET secret = :secret WHERE app_id = :app_id"),
            {"secret": sealer.seal(secret, f"apps:{app_id}:secret"), "app_id": app_id},
        )
    for name, value in keys:
        conn.execute(
            sa.text("UPDATE server_keys SET value = :value WHERE name = :name"),
            {"value": sealer.seal(value, f"server_keys:{name}"), "name": name},
        )


def downgrade() -> None:
    conn = op.get_bind()
    sealer = load_sealer(create=False)
    for app_id, secret in conn.execute(sa.text("SELECT app_id, secret FROM apps")).all():
        conn.execute(
            sa.text("UPDATE apps SET secret = :secret WHERE app_id = :app_id"),
            {"secret": sealer.open(secret, f"apps:{app_id}:secret"), "app_id": app_id},
        )
    for name, value in conn.execute(sa.text("SELECT name, value FROM server_keys")).all():
        conn.execute(
            sa.text("UPDATE server_keys SET value = :value WHERE name = :name"),
            {"value": sealer.open(value, f"server_keys:{name}"), "name": name},
        )
    with op.batch_alter_table("server_keys") as batch:
        batch.alter_column("value", type_=sa.String(128), existing_nullable=False)
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("notify_allow_private")
        batch.drop_column("allow_ips")
        batch.drop_column("previous_secret_until")
        batch.drop_column("previous_secret")
        batch.alter_column("secret", type_=sa.String(128), existing_nullable=False)
