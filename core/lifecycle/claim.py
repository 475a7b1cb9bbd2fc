"""A worker claims due orders: it leases them and, in the same transaction, decides
each one's next step.

- an order ready to submit (accepted, or retrying) starts its next attempt
  (core/lifecycle/start_attempt.py: submitting, or failed when no plugin is left), so
  the attempt is on disk before anything is sent;
- an order with an open attempt is queried about that attempt, read in this same
  transaction, so a callback that settles it meanwhile changes nothing but the answer.

The claim changes no state of its own beyond the lease (core/leases.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import msgspec
from sqlalchemy import Connection

from core.clock import now_ms
from core.db import orders
from core.leases import lease, lock_due, make_due
from core.lifecycle.rules import OrderRow
from core.lifecycle.start_attempt import Send, Unroutable, start_attempt
from core.lifecycle.work import ORDER_ROW_COLUMNS, Work, order_row
from core.orders import READY_TO_SUBMIT, AttemptRecord
from core.routing import RoutePlan
from core.suppliers import UpstreamOrder
from core.writer import Batch, Phase, Tx

log = logging.getLogger("topup.lifecycle")


class Claim(msgspec.Struct, frozen=True):
    owner: str
    lease_ms: int
    limit: int
    plan: RoutePlan
    # Also take orders whose worker's heartbeat is this old (core/leases.py).
    takeover_ms: int | None = None


class Query(msgspec.Struct, frozen=True):
    """Ask the supplier about this open attempt."""

    attempt: AttemptRecord
    upstream: UpstreamOrder


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


def _next_step(work: Work, order: OrderRow, plan: RoutePlan) -> Step | None:
    if order.state in READY_TO_SUBMIT:
        return start_attempt(work, order, plan)
    attempt = work.open_attempt(order.order_no)
    if attempt is None:
        # Every state but these two has an open attempt, read in this transaction: a bug.
        log.error("order %s is %s with no open attempt", order.order_no, order.state)
        return None
    return Query(attempt.record(), work.upstream(attempt))
