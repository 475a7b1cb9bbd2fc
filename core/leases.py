"""Leasing due rows: how several workers (and processes, and instances) share work.

A worker claims rows whose time has come and that nobody holds, and marks them held
until the lease runs out; the row is due again at that moment, so if the worker dies
mid-step, the next worker to look takes it over. On PostgreSQL ``SKIP LOCKED`` lets
concurrent claims pass each other instead of queueing; SQLite has one writer anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Column, Connection, Row, Table, or_, select, update

from core.clock import now_ms


def lease_due(
    conn: Connection,
    table: Table,
    due: Column,
    owner: str,
    lease_ms: int,
    limit: int,
    returning: Sequence[Column],
) -> list[Row]:
    """Hold up to ``limit`` rows of ``table`` whose ``due`` time has passed; returns them.

    The table needs ``lease_owner`` and ``lease_until`` columns and a one-column key.
    """
    now = now_ms()
    until = now + lease_ms
    key = table.primary_key.columns.values()[0]
    claimable = (
        select(key)
        .where(due <= now, or_(table.c.lease_until.is_(None), table.c.lease_until < now))
        .order_by(due)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return conn.execute(
        update(table)
        .where(key.in_(claimable.scalar_subquery()))
        .values({"lease_owner": owner, "lease_until": until, due.key: until})
        .returning(*returning)
    ).all()
