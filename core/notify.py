"""The outbox of partner notifications.

When an order reaches its final state, a row is written here in the same transaction
(if the app has a notify URL), so the notification survives any crash; a notifier
claims due rows with a lease, delivers them and records the outcome, retrying on a
growing schedule until the partner acknowledges.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from sqlalchemy import ColumnElement, Connection, select, update

from core.clock import now_ms
from core.db import Database, apps, notifications
from core.fastsql import fetch_in, insert_rows
from core.leases import lease_due, make_due


class Notification(msgspec.Struct, frozen=True):
    id: int
    order_no: str
    app_id: str
    url: str
    attempts: int


# Apps that take notifications, and where (fetch_in: built once).
NOTIFY_URLS = select(apps.c.app_id, apps.c.notify_url).where(apps.c.notify_url.is_not(None))


OUTBOX_COLUMNS = ("order_no", "app_id", "url", "attempts", "next_attempt_at", "created_at")


def enqueue_many(conn: Connection, finished: list[tuple[str, str]]) -> None:
    """Queue a notification for each (app_id, order_no) just made final, in that transaction,
    if the app has a notify URL."""
    if not finished:
        return
    urls = dict(fetch_in(conn, NOTIFY_URLS, apps.c.app_id, {app for app, _ in finished}))
    now = now_ms()
    rows = [
        (order_no, app_id, urls[app_id], 0, now, now)
        for app_id, order_no in finished
        if urls.get(app_id)
    ]
    insert_rows(conn, notifications, OUTBOX_COLUMNS, rows, skip_conflicts_on=("order_no",))


class Outbox:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim_due(
        self, owner: str, lease_ms: int, limit: int, takeover_ms: int | None = None
    ) -> list[Notification]:
        """Lease up to ``limit`` due notifications (``takeover_ms``: see core.leases)."""

        def claim(conn: Connection) -> list[Notification]:
            rows = lease_due(
                conn,
                notifications,
                notifications.c.next_attempt_at,
                owner,
                lease_ms,
                limit,
                returning=(
                    notifications.c.id,
                    notifications.c.order_no,
                    notifications.c.app_id,
                    notifications.c.url,
                    notifications.c.attempts,
                ),
                takeover_ms=takeover_ms,
            )
            return [Notification(*row) for row in rows]

        return await self.db.write(claim)

    @staticmethod
    def make_due(conn: Connection, owners: Sequence[str], lease_ms: int) -> int:
        """Make the notifications ``owners`` hold due now (they died or stopped)."""
        return make_due(conn, notifications, notifications.c.next_attempt_at, owners, lease_ms)

    async def delivered(self, notification_id: int) -> None:
        """Record a delivery the partner acknowledged: whoever holds the notification now,
        it needs no other (a worker taken for dead may still finish one)."""
        await self._update(
            notifications.c.id == notification_id,
            notifications.c.delivered_at.is_(None),
            attempts=notifications.c.attempts + 1,
            delivered_at=now_ms(),
            next_attempt_at=None,
            last_error=None,
        )

    async def failed(
        self, notification_id: int, owner: str, error: str, retry_in_ms: int | None
    ) -> None:
        """Record a failed delivery by ``owner``; ``retry_in_ms`` None gives up. Nothing is
        recorded if ``owner`` no longer holds it: another worker took it over (this one was
        taken for dead) and is delivering it, and its lease and its outcome stand."""
        next_at = None if retry_in_ms is None else now_ms() + retry_in_ms
        await self._update(
            notifications.c.id == notification_id,
            notifications.c.lease_owner == owner,
            attempts=notifications.c.attempts + 1,
            next_attempt_at=next_at,
            last_error=error[:500],
        )

    async def _update(self, *where: ColumnElement[bool], **values) -> None:
        await self.db.write(
            lambda conn: conn.execute(
                update(notifications)
                .where(*where)
                .values(**values, lease_owner=None, lease_until=None)
            )
        )
