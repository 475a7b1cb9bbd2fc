"""Alembic environment: run by ``topup db upgrade`` and at ``topup serve`` start-up."""

from __future__ import annotations

from alembic import context

from core.db import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise SystemExit("run migrations with `topup db upgrade`, which supplies the connection")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
