"""Reading and changing orders: every state change of an order goes through here.

Hot writes (acceptance, attempt starts, supplier results) are queued to the group
writer as batch items (core/order_batches.py); the rest are single jobs. Reads run on
the read pool.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, and_, bindparam, func, or_, select, update

from core import metrics
from core.audit import record
from core.clock import now_ms
from core.db import Database, attempts, order_events, orders
from core.fastsql import fetch_one
from core.leases import lease_due
from core.ledger import settle_many
from core.notify import enqueue_many
from core.order_batches import (
    ACCEPT,
    APPLY,
    START,
    ApplyResult,
    StartAttempt,
    accept_batch,
    apply_batch,
    create_attempts,
    start_batch,
)
from core.orders import (
    OPEN_ATTEMPT,
    READY_TO_SUBMIT,
    TERMINAL,
    Applied,
    AttemptRecord,
    NewOrder,
    OrderEvent,
    OrderRecord,
    State,
    attempt_from_row,
    order_from_row,
    order_from_tuple,
)
from core.suppliers import SupplierResult, UpstreamOrder

# Built once: the status query runs them thousands of times a second, and building a
# statement costs more than running it.
BY_CSTM_ORDER_NO = select(orders).where(
    orders.c.app_id == bindparam("app"), orders.c.cstm_order_no == bindparam("cstm")
)
BY_ORDER_NO = select(orders).where(orders.c.order_no == bindparam("order_no"))


class OrderStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.writer.register(ACCEPT, accept_batch)
        db.writer.register(START, start_batch)
        db.writer.register(APPLY, apply_batch)

    # -- acceptance and lookup ------------------------------------------------------

    async def insert_or_get(self, new: NewOrder) -> tuple[OrderRecord, bool]:
        """Store ``new`` with its hold, durably, or return the order its (appID,
        cstmOrderNo) already made. Raises TopupError when the balance does not cover it."""
        return await self.db.batched(ACCEPT, new)

    async def find(self, app_id: str, cstm_order_no: str) -> OrderRecord | None:
        return await self._one(BY_CSTM_ORDER_NO, {"app": app_id, "cstm": cstm_order_no})

    async def get(self, order_no: str) -> OrderRecord | None:
        return await self._one(BY_ORDER_NO, {"order_no": order_no})

    async def _one(self, statement, params: dict[str, str]) -> OrderRecord | None:
        def find(conn: Connection) -> OrderRecord | None:
            row = fetch_one(conn, statement, params)
            return None if row is None else order_from_tuple(row)

        return await self.db.read(find)

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

    # -- the dispatcher's side ------------------------------------------------------

    async def claim_due(
        self,
        owner: str,
        lease_ms: int,
        limit: int,
        plan: Callable[[OrderRecord], tuple[str, int | None] | None] | None = None,
    ) -> list[tuple[OrderRecord, tuple[UpstreamOrder, str] | None]]:
        """Lease up to ``limit`` orders whose next step is due and nobody else holds.

        A claimed order falls due again when its lease runs out: if its worker dies
        mid-step, that is when another worker (or this one, restarted) resumes it.
        ``plan(order)`` gives (plugin, expected cost) for a first attempt: those attempts
        are recorded in the same transaction (saving one commit per order), and come
        back beside their order as (upstream order, plugin); every other order comes back
        with None.
        """

        def claim(conn: Connection) -> list[tuple[OrderRecord, tuple[UpstreamOrder, str] | None]]:
            rows = lease_due(conn, orders, orders.c.next_run_at, owner, lease_ms, limit, orders.c)
            claimed = [order_from_row(row) for row in rows]
            first = [
                (order, *planned)
                for order in claimed
                if plan is not None
                and order.state is State.ACCEPTED
                and (planned := plan(order)) is not None
            ]
            started = create_attempts(conn, first) if first else {}
            return [(order, started.get(order.order_no)) for order in claimed]

        return await self.db.write(claim)

    async def start_attempt(
        self, order_no: str, owner: str, plugin: str, cost: int | None = None
    ) -> UpstreamOrder | None:
        """Record the next attempt before anything is sent; None if the order moved on.

        ``cost``: what the plugin's supplier is expected to charge, for reconciliation.
        """
        return await self.db.batched(START, StartAttempt(order_no, owner, plugin, cost))

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
                    orders.c.supplier,
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
                supplier=row.supplier,
                product_id=row.product_id,
                face_value=row.face_value,
                created_at=row.created_at,
                supplier_ref=row.supplier_ref,
            )
            return attempt_from_row(row), upstream

        return await self.db.read(view)

    async def tried_plugins(self, order_no: str) -> list[str]:
        return [attempt.plugin for attempt in await self.attempts_of(order_no)]

    async def apply(
        self,
        reference: str,
        result: SupplierResult,
        *,
        retry_elsewhere: bool,
        next_query_delay_ms: int | None,
        counts_as_query: bool,
        event: tuple[str, str, str] | None = None,
    ) -> Applied | None:
        """Apply what a supplier said about one attempt; idempotent and monotonic.

        ``retry_elsewhere``: a FAILED result that allows failover, with a next supplier
        available, puts the order in ``retrying`` instead of ``failed``.
        ``next_query_delay_ms``: when to query an outcome that is still open; None
        gives up querying and sends the order to manual review.
        ``event``: (kind, actor, detail) recorded with the change, in the same commit.
        Returns None when the reference is not ours.
        """
        request = ApplyResult(
            reference, result, retry_elsewhere, next_query_delay_ms, counts_as_query, event
        )
        return await self.db.batched(APPLY, request)

    async def fail_unroutable(self, order_no: str, owner: str, reason: str) -> bool:
        """Fail an order that no supplier could take; only before anything is open upstream."""

        def fail(conn: Connection) -> bool:
            now = now_ms()
            failed = conn.execute(
                update(orders)
                .where(
                    orders.c.order_no == order_no,
                    orders.c.lease_owner == owner,
                    orders.c.state.in_(list(READY_TO_SUBMIT)),
                )
                .values(
                    state=State.FAILED,
                    fail_code=func.coalesce(orders.c.fail_code, "NO_SUPPLIER"),
                    fail_reason=func.coalesce(orders.c.fail_reason, reason),
                    finished_at=now,
                    updated_at=now,
                    next_run_at=None,
                    lease_owner=None,
                    lease_until=None,
                )
                .returning(orders.c.app_id)
            ).first()
            if failed is None:
                return False
            settle_many(conn, [(failed.app_id, order_no, False)])
            enqueue_many(conn, [(failed.app_id, order_no)])
            return True

        return await self.db.write(fail)

    async def reschedule(self, order_no: str, owner: str, delay_ms: int) -> None:
        """Give the lease back and look at the order again after ``delay_ms``."""
        now = now_ms()
        await self.db.write(
            lambda conn: conn.execute(
                update(orders)
                .where(
                    orders.c.order_no == order_no,
                    orders.c.lease_owner == owner,
                    orders.c.state.not_in(list(TERMINAL)),
                )
                .values(next_run_at=now + delay_ms, lease_owner=None, lease_until=None)
            )
        )

    async def wake(self, order_no: str) -> bool:
        """Make an order whose outcome is open due now, so that a worker queries it.

        For a callback that cannot be believed by itself. An order a worker holds keeps
        its lease; its next run time, now earlier than the lease's end, tells that
        worker's result to bring the next query forward (core.order_batches). True if
        the order was not already due.
        """

        def wake(conn: Connection) -> bool:
            now = now_ms()
            woken = conn.execute(
                update(orders)
                .where(
                    orders.c.order_no == order_no,
                    orders.c.state.in_([*OPEN_ATTEMPT, State.REVIEW]),
                    or_(orders.c.next_run_at.is_(None), orders.c.next_run_at > now),
                )
                .values(next_run_at=now)
            )
            return woken.rowcount == 1

        return await self.db.write(wake)

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

    async def resolve(self, order_no: str, succeeded: bool, reason: str, actor: str) -> Applied:
        """An operator's verdict on an order whose outcome the supplier never settled."""
        open_attempt = await self.open_attempt(order_no)
        if open_attempt is None:
            raise LookupError(f"order {order_no} has no open attempt to resolve")
        attempt, upstream = open_attempt
        verdict = (
            SupplierResult.succeeded(code="MANUAL", message=reason)
            if succeeded
            else SupplierResult.failed("MANUAL", reason)
        )
        outcome = "succeeded" if succeeded else "failed"
        applied = await self.apply(
            attempt.reference,
            verdict,
            retry_elsewhere=False,
            next_query_delay_ms=None,
            counts_as_query=False,
            event=("resolved", actor, f"{outcome}: {reason}"),
        )
        assert applied is not None
        if applied.changed and applied.state in TERMINAL:
            metrics.order_reached(applied.state, upstream.supplier, attempt.plugin)
        if applied.changed:
            # The verdict is applied in a batch of the lifecycle's; the order's own event
            # (kind "resolved") is written in that transaction, this record right after.
            await self.db.write(
                lambda conn: record(conn, actor, "order.resolve", order_no, reason, outcome=outcome)
            )
        return applied

    async def requery(self, order_no: str, actor: str, reason: str) -> bool:
        """Send an order in review back to automatic status queries, with a fresh count."""
        open_attempt = await self.open_attempt(order_no)
        if open_attempt is None:
            return False
        attempt, _upstream = open_attempt

        def requery(conn: Connection) -> bool:
            now = now_ms()
            moved = conn.execute(
                update(orders)
                .where(orders.c.order_no == order_no, orders.c.state == State.REVIEW)
                .values(state=attempt.state, next_run_at=now, updated_at=now)
            )
            if moved.rowcount != 1:
                return False
            conn.execute(
                update(attempts)
                .where(attempts.c.reference == attempt.reference)
                .values(queries=0, updated_at=now)
            )
            conn.execute(
                order_events.insert().values(
                    order_no=order_no, at=now, kind="requeried", actor=actor, detail=reason
                )
            )
            record(conn, actor, "order.requery", order_no, reason)
            return True

        return await self.db.write(requery)
