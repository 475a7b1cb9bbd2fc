"""An operator's hand on an order in manual review: query it again, or resolve it.

Each records the order's own event and the audit log entry in the transaction that
makes the change.
"""

from __future__ import annotations

from core.lifecycle.apply_result import Applied, ApplyResult, apply_result
from core.lifecycle.work import OrderChange, Work
from core.orders import State
from core.suppliers import SupplierResult


class Requery(OrderChange, frozen=True):
    """Send an order in review back to automatic status queries, with a fresh count."""

    actor: str
    reason: str

    def apply(self, work: Work) -> bool:
        order = work.orders.get(self.order_no)
        attempt = work.open_attempt(self.order_no)
        if order is None or attempt is None or order.state is not State.REVIEW:
            return False
        work.move(order, attempt.state, next_run_at=work.now)
        work.change_attempt(attempt, queries=0)
        work.event(self.order_no, "requeried", self.reason, actor=self.actor)
        work.audit(self.actor, "order.requery", self.order_no, self.reason)
        return True


class Resolve(OrderChange, frozen=True):
    """An operator's verdict on an order whose outcome the supplier never settled."""

    succeeded: bool
    actor: str
    reason: str

    def apply(self, work: Work) -> Applied | LookupError:
        attempt = work.open_attempt(self.order_no)
        if attempt is None:
            return LookupError(f"order {self.order_no} has no open attempt to resolve")
        verdict = (
            SupplierResult.succeeded(code="MANUAL", message=self.reason)
            if self.succeeded
            else SupplierResult.failed(code="MANUAL", message=self.reason)
        )
        change = ApplyResult(attempt.reference, verdict, False, None, False)
        outcome = "succeeded" if self.succeeded else "failed"
        applied = apply_result(
            work, attempt, change, event=("resolved", self.actor, f"{outcome}: {self.reason}")
        )
        if applied.changed:
            detail = {"outcome": outcome}
            work.audit(self.actor, "order.resolve", self.order_no, self.reason, **detail)
        return applied
