"""Reading orders, their attempts and their timelines.

Nothing here writes: every change of an order goes through the lifecycle
(core/lifecycle/). Reads run on the read pool.
"""

from __future__ import annotations

from sqlalchemy import Connection, and_, bindparam, func, select

from core.db import Database, attempts, order_events, orders
from core.orders import (
    OPEN_ATTEMPT,
    AttemptRecord,
    OrderEvent,
    OrderRecord,
    State,
    attempt_from_row,
    order_from_row,
    order_from_tuple,
)
from core.suppliers import UpstreamOrder

# Built once: the status query runs them thousands of times a second, and building a
# statement costs more than running it.
BY_CSTM_ORDER_NO = select(orders).where(
    orders.c.app_id == bindparam("app"), orders.c.cstm_order_no == bindparam("cstm")
)
BY_ORDER_NO = select(orders).where(orders.c.order_no == bindparam("order_no"))


class OrderStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- acceptance and lookup ------------------------------------------------------

    async def find(self, app_id: str, cstm_order_no: str) -> OrderRecord | None:
        return await self._one(BY_CSTM_ORDER_NO, {"app": app_id, "cstm": cstm_order_no})

    async def get(self, order_no: str) -> OrderRecord | None:
        return await self._one(BY_ORDER_NO, {"order_no": order_no})

    async def _one(self, statement, params: dict[str, str]) -> OrderRecord | None:
        row = await self.db.fetch_one(statement, params)
        return None if row is None else order_from_tuple(row)

    async def attempts_of(self, order_no: str) -> list[AttemptRecord]:
        def find(conn: Connection) -> list[AttemptRecord]:
            rows = conn.execute(
                select(attempts).where(attempts.c.order_no == order_no).order_by(attempts.c.seq)
            )
            return [attempt_from_row(row) for row in rows]

        return await self.db.read(find)

    async def count(self) -> int:
        return await self.db.read(
            lambda conn: conn.execute(select(func.count()).select_from(orders)).scalar_one()
        )

    async def open_attempt(self, order_no: str) -> tuple[AttemptRecord, UpstreamOrder] | None:
        """The order's attempt whose outcome is still open, as the plugin should see it."""
        return await self._attempt_view(
            and_(attempts.c.order_no == order_no, attempts.c.state.in_(OPEN_ATTEMPT))
        )

    async def attempt(self, reference: str) -> tuple[AttemptRecord, UpstreamOrder] | None:
        return await self._attempt_view(attempts.c.reference == reference)

    async def _attempt_view(self, condition) -> tuple[AttemptRecord, UpstreamOrder] | None:
        def view(conn: Connection) -> tuple[AttemptRecord, UpstreamOrder] | None:
            row = conn.execute(
                select(
                    attempts,
                    orders.c.phone_no,
                    orders.c.carrier,
                    orders.c.product_id,
                    orders.c.face_value,
                )
                .join(orders, orders.c.order_no == attempts.c.order_no)
                .where(condition)
                .order_by(attempts.c.seq.desc())
                .limit(1)
            ).first()
            if row is None:
                return None
            upstream = UpstreamOrder(
                reference=row.reference,
                order_no=row.order_no,
                attempt=row.seq,
                phone_no=row.phone_no,
                carrier=row.carrier,
                product_id=row.product_id,
                face_value=row.face_value,
                created_at=row.created_at,
                supplier_ref=row.supplier_ref,
            )
            return attempt_from_row(row), upstream

        return await self.db.read(view)

    async def tried_plugins(self, order_no: str) -> list[str]:
        return [attempt.plugin for attempt in await self.attempts_of(order_no)]

    # -- manual review ------------------------------------------------------------------

    async def in_review(self, limit: int | None = None) -> list[OrderRecord]:
        """Orders in manual review, the oldest first (``limit``: only so many)."""

        def find(conn: Connection) -> list[OrderRecord]:
            rows = conn.execute(
                select(orders)
                .where(orders.c.state == State.REVIEW)
                .order_by(orders.c.order_no)
                .limit(limit)
            )
            return [order_from_row(row) for row in rows]

        return await self.db.read(find)

    async def review_queue(self, limit: int) -> list[tuple[OrderRecord, AttemptRecord | None]]:
        """The oldest orders in review, each with its open attempt, in two queries."""

        def find(conn: Connection) -> list[tuple[OrderRecord, AttemptRecord | None]]:
            waiting = [
                order_from_row(row)
                for row in conn.execute(
                    select(orders)
                    .where(orders.c.state == State.REVIEW)
                    .order_by(orders.c.order_no)
                    .limit(limit)
                )
            ]
            open_attempts: dict[str, AttemptRecord] = {}
            if waiting:
                rows = conn.execute(
                    select(attempts)
                    .where(
                        attempts.c.order_no.in_([order.order_no for order in waiting]),
                        attempts.c.state.in_(OPEN_ATTEMPT),
                    )
                    .order_by(attempts.c.seq)
                )
                open_attempts = {row.order_no: attempt_from_row(row) for row in rows}
            return [(order, open_attempts.get(order.order_no)) for order in waiting]

        return await self.db.read_aside(find)

    async def count_in_review(self) -> int:
        query = select(func.count()).select_from(orders).where(orders.c.state == State.REVIEW)
        return await self.db.read(lambda conn: conn.execute(query).scalar_one())

    async def events_of(self, order_no: str) -> list[OrderEvent]:
        def find(conn: Connection) -> list[OrderEvent]:
            rows = conn.execute(
                select(order_events)
                .where(order_events.c.order_no == order_no)
                .order_by(order_events.c.id)
            )
            return [OrderEvent(r.at, r.kind, r.actor, r.detail) for r in rows]

        return await self.db.read(find)
