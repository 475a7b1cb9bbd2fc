"""submitting, or failed for want of a supplier: a worker claims due orders and, in the
same transaction, records each next attempt before anything is sent.

The claim leases due orders (core/leases.py) and, for each, decides its next step:

- an order ready to submit (accepted, or retrying after a definitive failure that
  delivered nothing) gets its next attempt, with a new reference, through the plugin
  the route plan chooses among those it has not tried; first attempts and retries
  start by this one path. If no plugin is left, the order fails and its hold is released;
- an order with an open attempt is queried about that attempt, read in this same
  transaction, so a callback that settles it meanwhile changes nothing but the answer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import msgspec
from sqlalchemy import Connection

from core.clock import now_ms
from core.db import orders
from core.ids import attempt_reference
from core.leases import lease, lock_due, make_due
from core.lifecycle.work import ORDER_ROW_COLUMNS, AttemptRow, Work, order_row
from core.orders import READY_TO_SUBMIT, AttemptRecord, OrderRecord, State
from core.routing import RoutePlan
from core.suppliers import FailReason, UpstreamOrder
from core.writer import Batch, Phase, Tx

log = logging.getLogger("topup.lifecycle")


class Claim(msgspec.Struct, frozen=True):
    owner: str
    lease_ms: int
    limit: int
    plan: RoutePlan
    # Also take orders whose worker's heartbeat is this old (core/leases.py).
    takeover_ms: int | None = None


class Send(msgspec.Struct, frozen=True):
    """Submit this just-recorded attempt, once."""

    upstream: UpstreamOrder
    plugin: str


class Query(msgspec.Struct, frozen=True):
    """Ask the supplier about this open attempt."""

    attempt: AttemptRecord
    upstream: UpstreamOrder


class Unroutable(msgspec.Struct, frozen=True):
    """Failed here: no plugin was left to try."""

    order: OrderRecord
    tried: list[str]


Step = Send | Query | Unroutable


def claim_work(tx: Tx, items: list[Claim]) -> list[list[Step]]:
    return [_claim(tx, claim) for claim in items]


CLAIM = Batch("claim", Phase.CLAIMS, claim_work)


def _claim(tx: Tx, claim: Claim) -> list[Step]:
    now = now_ms()
    due = orders.c.next_run_at
    rows = lock_due(tx.conn, orders, due, claim.limit, ORDER_ROW_COLUMNS, now, claim.takeover_ms)
    work = Work(tx, {row[0]: order_row(row) for row in rows}, now)
    # Written with each order's next step, in one UPDATE.
    held = lease(claim.owner, claim.lease_ms, now)
    for order in work.orders.values():
        work.hold(order, held)
    work.load_attempts()
    steps = [_next_step(work, order, claim.plan) for order in work.orders.values()]
    work.write()
    return [step for step in steps if step is not None]


def make_held_due(conn: Connection, owners: Sequence[str], lease_ms: int) -> int:
    """Make the orders ``owners`` hold due now (they died or stopped), for a claim to take."""
    return make_due(conn, orders, orders.c.next_run_at, owners, lease_ms)


def _next_step(work: Work, order, plan: RoutePlan) -> Step | None:
    if order.state in READY_TO_SUBMIT:
        return _start_attempt(work, order, plan)
    attempt = work.open_attempt(order.order_no)
    if attempt is None:
        # Every state but these two has an open attempt, read in this transaction: a bug.
        log.error("order %s is %s with no open attempt", order.order_no, order.state)
        return None
    return Query(attempt.record(), work.upstream(attempt))


def _start_attempt(work: Work, order, plan: RoutePlan) -> Step:
    tried = [attempt.plugin for attempt in work.attempts_of(order.order_no)]
    choice = plan.choose(order.carrier, order.order_no, order.product_id, tried)
    if choice is None:
        work.move(
            order,
            State.FAILED,
            # A failover's own code and message say more than "no supplier" does.
            fail_code=order.fail_code or "NO_SUPPLIER",
            fail_reason=order.fail_reason or str(FailReason.NO_SUPPLIER),
        )
        return Unroutable(order.record(), tried)
    seq = order.attempts + 1
    attempt = AttemptRow(
        reference=attempt_reference(order.order_no, seq),
        order_no=order.order_no,
        seq=seq,
        plugin=choice.plugin,
        state=State.SUBMITTING,
        supplier_ref=None,
        code=None,
        message=None,
        queries=0,
        created_at=work.now,
        updated_at=work.now,
        cost=choice.cost,
        refused=False,
        resent=False,
    )
    work.add_attempt(attempt)
    # The lease stays: this worker sends the attempt, and nobody else may meanwhile.
    work.move(order, State.SUBMITTING, attempts=seq)
    return Send(work.upstream(attempt), choice.plugin)
