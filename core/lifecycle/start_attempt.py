"""submitting, or failed for want of a supplier: an order's next attempt starts here.

First attempts and retries elsewhere start by this one path. An order ready to submit
(accepted, or retrying after a refusal that delivered nothing) gets its next attempt,
with a new reference, through the plugin the route plan chooses among those it has not
tried. The attempt is recorded in the claim's transaction (core/lifecycle/claim.py),
so it is durable before anything is sent. If no plugin is left, the order fails here
and its hold is released with it.
"""

from __future__ import annotations

import msgspec

from core.ids import attempt_reference
from core.lifecycle.rules import OrderRow
from core.lifecycle.work import AttemptRow, Work
from core.orders import OrderRecord, State
from core.routing import RoutePlan
from core.suppliers import FailReason, UpstreamOrder


class Send(msgspec.Struct, frozen=True):
    """Submit this just-recorded attempt, once."""

    upstream: UpstreamOrder
    plugin: str


class Unroutable(msgspec.Struct, frozen=True):
    """Failed here: no plugin was left to try."""

    order: OrderRecord
    tried: list[str]


def start_attempt(work: Work, order: OrderRow, plan: RoutePlan) -> Send | Unroutable:
    """Record ``order``'s next attempt (the order is then submitting), or fail the order
    when the plan has no plugin left that it has not tried."""
    tried = [attempt.plugin for attempt in work.attempts_of(order.order_no)]
    choice = plan.choose(order.carrier, order.order_no, order.product_id, tried)
    if choice is None:
        return fail_unroutable(work, order, tried)
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


def fail_unroutable(work: Work, order: OrderRow, tried: list[str]) -> Unroutable:
    work.move(
        order,
        State.FAILED,
        # A failover's own code and message say more than "no supplier" does.
        fail_code=order.fail_code or "NO_SUPPLIER",
        fail_reason=order.fail_reason or str(FailReason.NO_SUPPLIER),
    )
    return Unroutable(order.record(), tried)
