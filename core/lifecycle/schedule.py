"""When an order is next looked at: a worker gives its lease back for later, or a
callback that cannot be believed by itself makes the order due now."""

from __future__ import annotations

from core.lifecycle.work import OrderChange, Work
from core.orders import OPEN_ATTEMPT, TERMINAL, State


class Reschedule(OrderChange, frozen=True):
    """Give the lease back and look at the order again after ``delay_ms``."""

    owner: str
    delay_ms: int

    def apply(self, work: Work) -> None:
        order = work.orders.get(self.order_no)
        if order is None or order.lease_owner != self.owner or order.state in TERMINAL:
            return
        work.move(
            order,
            order.state,
            next_run_at=work.now + self.delay_ms,
            lease_owner=None,
            lease_until=None,
        )


class Wake(OrderChange, frozen=True):
    """Make an order whose outcome is open due now, so that a worker queries it.

    An order a worker holds keeps its lease; its next run time, now earlier than the
    lease's end, tells that worker's result to bring the next query forward
    (core/lifecycle/apply_result.py). True if the order was not already due.
    """

    def apply(self, work: Work) -> bool:
        order = work.orders.get(self.order_no)
        if order is None or order.state not in (*OPEN_ATTEMPT, State.REVIEW):
            return False
        if order.next_run_at is not None and order.next_run_at <= work.now:
            return False
        work.move(order, order.state, next_run_at=work.now)
        return True
