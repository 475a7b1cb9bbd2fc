"""Counters every instance reads from the shared database.

``config_generation`` is bumped by ``topup reload``; each running instance notices
within a second and reloads its own ``plugins.toml``.
"""

from __future__ import annotations

from sqlalchemy import select, update

from core.clock import now_ms
from core.db import Database, control, insert_ignoring_conflicts

CONFIG_GENERATION = "config_generation"


async def read_counter(db: Database, name: str) -> int:
    async with db.read() as conn:
        value = (await conn.execute(select(control.c.value).where(control.c.name == name))).scalar()
    return value or 0


async def bump_counter(db: Database, name: str) -> int:
    async with db.write() as conn:
        await conn.execute(
            insert_ignoring_conflicts(db, control, ["name"]).values(
                name=name, value=0, updated_at=now_ms()
            )
        )
        await conn.execute(
            update(control)
            .where(control.c.name == name)
            .values(value=control.c.value + 1, updated_at=now_ms())
        )
        return (
            await conn.execute(select(control.c.value).where(control.c.name == name))
        ).scalar_one()
