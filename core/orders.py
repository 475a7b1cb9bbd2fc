"""Orders and their upstream attempts: every state change goes through here.

States of an order::

    accepted --> submitting --> pending --> succeeded
        |            |    \\        |  \\-> failed
        |            |     \\-> unknown --> (query) --> pending / succeeded / failed
        |            \\-> retrying --> submitting (next supplier; only after a
        |                              definitive failure that delivered nothing)
        \\-> failed (no supplier could take it)

    pending / unknown --(max_queries unanswered)--> review --(operator or late
    callback/poll)--> succeeded / failed

``succeeded`` and ``failed`` are terminal: no update ever leaves them. Each
attempt's row, with its own reference, is committed before the supplier is called,
and an order gets a new attempt only when every earlier attempt has failed
definitively, so no path can pay for one order twice.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec
from sqlalchemy import and_, func, or_, select, update

from core.clock import now_ms
from core.db import Database, attempts, insert_ignoring_conflicts, order_events, orders
from core.ids import attempt_reference
from core.ledger import hold, settle
from core.notify import enqueue
from core.suppliers import Outcome, SupplierResult, UpstreamOrder


class State(StrEnum):
    ACCEPTED = "accepted"
    SUBMITTING = "submitting"
    PENDING = "pending"
    UNKNOWN = "unknown"
    RETRYING = "retrying"
    REVIEW = "review"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


TERMINAL = frozenset({State.SUCCEEDED, State.FAILED})
READY_TO_SUBMIT = frozenset({State.ACCEPTED, State.RETRYING})
OPEN_ATTEMPT = (State.SUBMITTING, State.PENDING, State.UNKNOWN)
SYSTEM = "system"

# The partner's view (the seed's status codes): 0 已受理, 1 充值中, 2 充值成功, 3 充值失败.
PARTNER_STATUS = {
    State.ACCEPTED: "0",
    State.SUBMITTING: "1",
    State.PENDING: "1",
    State.UNKNOWN: "1",
    State.RETRYING: "1",
    State.REVIEW: "1",
    State.SUCCEEDED: "2",
    State.FAILED: "3",
}
PARTNER_STATUS_TEXT = {"0": "已受理", "1": "充值中", "2": "充值成功", "3": "充值失败"}


class NewOrder(msgspec.Struct, frozen=True):
    order_no: str
    order_id: str
    app_id: str
    cstm_order_no: str
    cstm_order_name: str
    company: str
    supplier: str
    phone_no: str
    product_id: str
    face_value: int
    price: int


class OrderRecord(NewOrder, frozen=True):
    """A stored order: what the partner asked for, and where it stands."""

    state: State
    attempts: int
    fail_code: str | None
    fail_reason: str | None
    created_at: int
    updated_at: int
    finished_at: int | None
    next_run_at: int | None
    lease_owner: str | None
    lease_until: int | None

    @property
    def partner_status(self) -> str:
        return PARTNER_STATUS[self.state]

    def same_request(self, new: NewOrder) -> bool:
        return (self.phone_no, self.product_id, self.supplier) == (
            new.phone_no,
            new.product_id,
            new.supplier,
        )


_ORDER_FIELDS = tuple(name for name in OrderRecord.__struct_fields__ if name != "state")


class AttemptRecord(msgspec.Struct, frozen=True):
    reference: str
    order_no: str
    seq: int
    plugin: str
    state: str
    supplier_ref: str | None
    code: str | None
    message: str | None
    queries: int
    created_at: int
    updated_at: int
    cost: int | None = None
    refused: bool = False


def _order(row) -> OrderRecord:
    columns = row._mapping
    return OrderRecord(**{name: columns[name] for name in _ORDER_FIELDS}, state=State(row.state))


def _attempt(row) -> AttemptRecord:
    columns = row._mapping
    return AttemptRecord(**{name: columns[name] for name in AttemptRecord.__struct_fields__})


class OrderEvent(msgspec.Struct, frozen=True):
    at: int
    kind: str
    actor: str
    detail: str


class Applied(msgspec.Struct, frozen=True):
    """What applying a supplier result did to the order."""

    order_no: str
    state: State
    changed: bool


class OrderStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- acceptance and lookup ------------------------------------------------------

    async def insert_or_get(self, new: NewOrder) -> tuple[OrderRecord, bool]:
        """Store ``new`` durably, or return the order its (appID, cstmOrderNo) already made."""
        now = now_ms()
        values = msgspec.structs.asdict(new) | {
            "state": State.ACCEPTED,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
            "next_run_at": now,
        }
        async with self.db.write() as conn:
            inserted = await conn.execute(
                insert_ignoring_conflicts(self.db, orders, ["app_id", "cstm_order_no"]).values(
                    **values
                )
            )
            if inserted.rowcount == 1:
                # Refusal raises inside the transaction: the order row goes with it.
                await hold(conn, self.db, new.app_id, new.order_no, new.price)
                return _order_from_values(values), True
            row = (
                await conn.execute(
                    select(orders).where(
                        orders.c.app_id == new.app_id,
                        orders.c.cstm_order_no == new.cstm_order_no,
                    )
                )
            ).one()
        return _order(row), False

    async def find(self, app_id: str, cstm_order_no: str) -> OrderRecord | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(orders).where(
                        orders.c.app_id == app_id, orders.c.cstm_order_no == cstm_order_no
                    )
                )
            ).first()
        return None if row is None else _order(row)

    async def get(self, order_no: str) -> OrderRecord | None:
        async with self.db.read() as conn:
            row = (await conn.execute(select(orders).where(orders.c.order_no == order_no))).first()
        return None if row is None else _order(row)

    async def attempts_of(self, order_no: str) -> list[AttemptRecord]:
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(attempts).where(attempts.c.order_no == order_no).order_by(attempts.c.seq)
                )
            ).all()
        return [_attempt(row) for row in rows]

    async def count(self) -> int:
        async with self.db.read() as conn:
            return (await conn.execute(select(func.count()).select_from(orders))).scalar_one()

    # -- the dispatcher's side ------------------------------------------------------

    async def claim_due(self, owner: str, lease_ms: int, limit: int) -> list[OrderRecord]:
        """Lease up to ``limit`` orders whose next step is due and nobody else holds.

        A claimed order falls due again when its lease runs out: if its worker dies
        mid-step, that is when another worker (or this one, restarted) resumes it.
        """
        now = now_ms()
        until = now + lease_ms
        due = (
            select(orders.c.order_no)
            .where(
                orders.c.next_run_at <= now,
                or_(orders.c.lease_until.is_(None), orders.c.lease_until < now),
            )
            .order_by(orders.c.next_run_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        async with self.db.write() as conn:
            rows = (
                await conn.execute(
                    update(orders)
                    .where(orders.c.order_no.in_(due.scalar_subquery()))
                    .values(lease_owner=owner, lease_until=until, next_run_at=until)
                    .returning(*orders.c)
                )
            ).all()
        return [_order(row) for row in rows]

    async def start_attempt(
        self, order_no: str, owner: str, plugin: str, cost: int | None = None
    ) -> UpstreamOrder | None:
        """Record the next attempt before anything is sent; None if the order moved on.

        ``cost``: what the plugin's supplier is expected to charge, for reconciliation.
        """
        now = now_ms()
        async with self.db.write() as conn:
            claimed = (
                await conn.execute(
                    update(orders)
                    .where(_held_and_ready(order_no, owner))
                    .values(
                        state=State.SUBMITTING,
                        attempts=orders.c.attempts + 1,
                        updated_at=now,
                    )
                    .returning(
                        orders.c.attempts,
                        orders.c.phone_no,
                        orders.c.supplier,
                        orders.c.product_id,
                        orders.c.face_value,
                    )
                )
            ).first()
            if claimed is None:
                return None
            reference = attempt_reference(order_no, claimed.attempts)
            await conn.execute(
                attempts.insert().values(
                    reference=reference,
                    order_no=order_no,
                    seq=claimed.attempts,
                    plugin=plugin,
                    state=State.SUBMITTING,
                    queries=0,
                    created_at=now,
                    updated_at=now,
                    cost=cost,
                )
            )
        return UpstreamOrder(
            reference=reference,
            order_no=order_no,
            attempt=claimed.attempts,
            phone_no=claimed.phone_no,
            supplier=claimed.supplier,
            product_id=claimed.product_id,
            face_value=claimed.face_value,
            created_at=now,
        )

    async def open_attempt(self, order_no: str) -> tuple[AttemptRecord, UpstreamOrder] | None:
        """The order's attempt whose outcome is still open, as the plugin should see it."""
        return await self._attempt_view(
            and_(attempts.c.order_no == order_no, attempts.c.state.in_(OPEN_ATTEMPT))
        )

    async def attempt(self, reference: str) -> tuple[AttemptRecord, UpstreamOrder] | None:
        return await self._attempt_view(attempts.c.reference == reference)

    async def _attempt_view(self, condition) -> tuple[AttemptRecord, UpstreamOrder] | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
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
                )
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
        return _attempt(row), upstream

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
        now = now_ms()
        async with self.db.write() as conn:
            attempt_row = (
                await conn.execute(
                    select(attempts).where(attempts.c.reference == reference).with_for_update()
                )
            ).first()
            if attempt_row is None:
                return None
            order_row = (
                await conn.execute(
                    select(orders)
                    .where(orders.c.order_no == attempt_row.order_no)
                    .with_for_update()
                )
            ).one()
            attempt, order = _attempt(attempt_row), _order(order_row)
            attempt_state = _next_attempt_state(State(attempt.state), result.outcome)
            if attempt_state is None:
                return Applied(order.order_no, order.state, changed=False)
            queries = attempt.queries + (1 if counts_as_query else 0)
            await conn.execute(
                update(attempts)
                .where(attempts.c.reference == reference)
                .values(
                    state=attempt_state,
                    supplier_ref=result.supplier_ref or attempt.supplier_ref,
                    code=result.code or attempt.code,
                    message=result.message or attempt.message,
                    queries=queries,
                    updated_at=now,
                    refused=attempt_state is State.FAILED and result.failover,
                )
            )
            if order.state in TERMINAL:
                return Applied(order.order_no, order.state, changed=False)
            order_values = _order_change(attempt_state, result, retry_elsewhere, now)
            if order_values is None:
                order_values = _still_open(order.state, attempt_state, next_query_delay_ms, now)
            await conn.execute(
                update(orders)
                .where(orders.c.order_no == order.order_no)
                .values(**order_values, updated_at=now, lease_owner=None, lease_until=None)
            )
            new_state = State(order_values["state"])
            if new_state in TERMINAL:
                await self._finish(conn, order, new_state)
            if new_state is State.REVIEW and order.state is not State.REVIEW:
                detail = f"{queries} status queries left the outcome open ({result.code})"
                event = event or ("review", SYSTEM, detail)
            if event is not None:
                await self._record_event(conn, order.order_no, *event, now=now)
        return Applied(order.order_no, new_state, changed=new_state != order.state)

    async def in_review(self) -> list[OrderRecord]:
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(orders)
                    .where(orders.c.state == State.REVIEW)
                    .order_by(orders.c.created_at)
                )
            ).all()
        return [_order(row) for row in rows]

    async def events_of(self, order_no: str) -> list[OrderEvent]:
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(order_events)
                    .where(order_events.c.order_no == order_no)
                    .order_by(order_events.c.id)
                )
            ).all()
        return [OrderEvent(r.at, r.kind, r.actor, r.detail) for r in rows]

    async def resolve(self, order_no: str, succeeded: bool, reason: str, actor: str) -> Applied:
        """An operator's verdict on an order whose outcome the supplier never settled."""
        open_attempt = await self.open_attempt(order_no)
        if open_attempt is None:
            raise LookupError(f"order {order_no} has no open attempt to resolve")
        attempt, _upstream = open_attempt
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
        return applied

    async def requery(self, order_no: str, actor: str, reason: str) -> bool:
        """Send an order in review back to automatic status queries, with a fresh count."""
        now = now_ms()
        open_attempt = await self.open_attempt(order_no)
        if open_attempt is None:
            return False
        attempt, _upstream = open_attempt
        async with self.db.write() as conn:
            moved = await conn.execute(
                update(orders)
                .where(orders.c.order_no == order_no, orders.c.state == State.REVIEW)
                .values(state=attempt.state, next_run_at=now, updated_at=now)
            )
            if moved.rowcount != 1:
                return False
            await conn.execute(
                update(attempts)
                .where(attempts.c.reference == attempt.reference)
                .values(queries=0, updated_at=now)
            )
            await self._record_event(conn, order_no, "requeried", actor, reason, now=now)
        return True

    async def _record_event(
        self, conn, order_no: str, kind: str, actor: str, detail: str, now: int
    ) -> None:
        await conn.execute(
            order_events.insert().values(
                order_no=order_no, at=now, kind=kind, actor=actor, detail=detail
            )
        )

    async def fail_unroutable(self, order_no: str, owner: str, reason: str) -> bool:
        """Fail an order that no supplier could take; only before anything is open upstream."""
        now = now_ms()
        async with self.db.write() as conn:
            failed = (
                await conn.execute(
                    update(orders)
                    .where(_held_and_ready(order_no, owner))
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
                    .returning(*orders.c)
                )
            ).first()
            if failed is not None:
                await self._finish(conn, _order(failed), State.FAILED)
        return failed is not None

    async def _finish(self, conn, order: OrderRecord, state: State) -> None:
        """What a final state sets off, in the same commit: the money, the partner's notice."""
        await settle(conn, self.db, order.app_id, order.order_no, state is State.SUCCEEDED)
        await enqueue(conn, self.db, order.app_id, order.order_no)

    async def reschedule(self, order_no: str, owner: str, delay_ms: int) -> None:
        """Give the lease back and look at the order again after ``delay_ms``."""
        now = now_ms()
        async with self.db.write() as conn:
            await conn.execute(
                update(orders)
                .where(
                    and_(orders.c.order_no == order_no, orders.c.lease_owner == owner),
                    orders.c.state.not_in(list(TERMINAL)),
                )
                .values(next_run_at=now + delay_ms, lease_owner=None, lease_until=None)
            )


def _held_and_ready(order_no: str, owner: str):
    """The order, if this worker holds its lease and nothing is open upstream."""
    return and_(
        orders.c.order_no == order_no,
        orders.c.lease_owner == owner,
        orders.c.state.in_(list(READY_TO_SUBMIT)),
    )


def _order_from_values(values: dict) -> OrderRecord:
    return OrderRecord(**(dict.fromkeys(OrderRecord.__struct_fields__) | values))


def _next_attempt_state(current: State, outcome: Outcome) -> State | None:
    """The attempt's new state, or None when the result changes nothing.

    A terminal attempt never changes; an attempt the supplier has acknowledged
    (pending) does not fall back to unknown because a later query went unanswered.
    """
    if current in TERMINAL:
        return None
    if outcome is Outcome.SUCCEEDED:
        return State.SUCCEEDED
    if outcome is Outcome.FAILED:
        return State.FAILED
    if outcome is Outcome.PENDING:
        return State.PENDING
    return State.PENDING if current is State.PENDING else State.UNKNOWN


def _still_open(
    order_state: State, attempt_state: State, next_query_delay_ms: int | None, now: int
) -> dict:
    """Order columns while the supplier has not settled the attempt."""
    if order_state is State.REVIEW:
        return {"state": State.REVIEW}  # only a settled outcome or an operator moves it on
    if next_query_delay_ms is None:
        return {"state": State.REVIEW, "next_run_at": None}
    return {"state": attempt_state, "next_run_at": now + next_query_delay_ms}


def _order_change(
    attempt_state: State, result: SupplierResult, retry_elsewhere: bool, now: int
) -> dict | None:
    """Order columns for a settled attempt; None while its outcome is still open."""
    if attempt_state is State.SUCCEEDED:
        return {
            "state": State.SUCCEEDED,
            "finished_at": now,
            "next_run_at": None,
            "fail_code": None,
            "fail_reason": None,
        }
    if attempt_state is State.FAILED and retry_elsewhere:
        return {
            "state": State.RETRYING,
            "next_run_at": now,
            "fail_code": result.code or None,
            "fail_reason": result.message or None,
        }
    if attempt_state is State.FAILED:
        return {
            "state": State.FAILED,
            "finished_at": now,
            "next_run_at": None,
            "fail_code": result.code or "FAILED",
            "fail_reason": result.message or "供应商充值失败",
        }
    return None
