"""submitting again, once: an attempt the supplier says it never received is re-sent.

The one exception to "never send an attempt again". A plugin whose supplier refuses a
reused reference (``Supplier.refuses_reused_reference``) said, in a query made well
after the attempt, that it never received it. The same attempt, with the same
reference, goes out once more; the supplier itself guarantees it cannot be taken twice.
For any other plugin such an answer stays unknown and ends in review.
"""

from __future__ import annotations

from core.lifecycle.work import AttemptChange, Work
from core.orders import State
from core.suppliers import UpstreamOrder

# An attempt the supplier never acknowledged: its submit went unanswered (unknown), or a
# crash came between recording it and sending it (submitting).
UNANSWERED = frozenset({State.SUBMITTING, State.UNKNOWN})


class Resend(AttemptChange, frozen=True):
    """Mark an unanswered attempt re-sent and hand it back to send, or None if it may not be."""

    owner: str
    # The attempt must be at least this old: a "no such order" sooner may only mean the
    # first request is still on its way.
    min_age_ms: int

    def apply(self, work: Work) -> UpstreamOrder | None:
        attempt = work.attempts.get(self.reference)
        if attempt is None or attempt.resent or attempt.state not in UNANSWERED:
            return None
        order = work.orders[attempt.order_no]
        if order.state not in UNANSWERED or order.lease_owner != self.owner:
            return None
        if work.now - attempt.created_at < self.min_age_ms:
            return None
        work.change_attempt(attempt, state=State.SUBMITTING, resent=True)
        work.move(order, State.SUBMITTING)  # the lease stays: this worker sends it
        work.event(
            order.order_no,
            "resent",
            f"供应商 {attempt.plugin} 查无此单（参考号 {attempt.reference}），"
            "以同一参考号重新提交一次",
        )
        return work.upstream(attempt)
