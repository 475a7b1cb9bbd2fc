"""Counters every instance reads from the shared database.

``config_generation`` is bumped by ``topup reload`` and by every route override set or
reset (core/route_overrides.py); each running instance notices within a second and
reloads its own ``plugins.toml`` with the overrides stored in the database.
"""

from __future__ import annotations

from sqlalchemy import Connection, select, update

from core.clock import now_ms
from core.db import Database, control, insert_ignoring_conflicts

CONFIG_GENERATION = "config_generation"


def _value(conn: Connection, name: str) -> int:
    return conn.execute(select(control.c.value).where(control.c.name == name)).scalar() or 0


async def read_counter(db: Database, name: str) -> int:
    return await db.read(lambda conn: _value(conn, name))


def bump(conn: Connection, name: str) -> int:
    """Add one to a counter, in the caller's transaction (a change and the generation bump
    that announces it commit together)."""
    conn.execute(
        insert_ignoring_conflicts(conn, control, ["name"]).values(
            name=name, value=0, updated_at=now_ms()
        )
    )
    conn.execute(
        update(control)
        .where(control.c.name == name)
        .values(value=control.c.value + 1, updated_at=now_ms())
    )
    return _value(conn, name)


async def bump_counter(db: Database, name: str) -> int:
    return await db.write(lambda conn: bump(conn, name))
