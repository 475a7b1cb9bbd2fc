"""The audit log: every operator action, who did it, when, to what, and why.

Actions are recorded by the core path that carries them out, inside the same
transaction, so the console and the CLI cannot act without leaving the record and a
record never describes an action that was rolled back. Rows are only ever inserted;
the database refuses UPDATE and DELETE on the table (see migration 0005).
"""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy import Connection, and_, insert, select

from core.clock import now_ms
from core.db import Database, audit_log


class AuditEntry(msgspec.Struct, frozen=True):
    id: int
    at: int
    actor: str
    action: str
    target: str
    reason: str
    detail: dict[str, Any]


def record(
    conn: Connection,
    actor: str,
    action: str,
    target: str,
    reason: str,
    **detail: Any,
) -> None:
    """Record an action in the transaction that performs it."""
    conn.execute(
        insert(audit_log).values(
            at=now_ms(),
            actor=actor,
            action=action,
            target=target,
            reason=reason,
            detail=msgspec.json.encode(detail).decode(),
        )
    )


def _entry(row: Any) -> AuditEntry:
    return AuditEntry(
        id=row.id,
        at=row.at,
        actor=row.actor,
        action=row.action,
        target=row.target,
        reason=row.reason,
        detail=msgspec.json.decode(row.detail),
    )


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def page(
        self,
        before_id: int | None = None,
        limit: int = 50,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
    ) -> list[AuditEntry]:
        """Newest first; ``before_id`` continues from the last entry of the previous page."""
        conditions = [
            column == value
            for column, value in (
                (audit_log.c.actor, actor),
                (audit_log.c.action, action),
                (audit_log.c.target, target),
            )
            if value
        ]
        if before_id is not None:
            conditions.append(audit_log.c.id < before_id)
        query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        if conditions:
            query = query.where(and_(*conditions))
        return await self.db.read_aside(lambda conn: [_entry(row) for row in conn.execute(query)])
