"""The order lifecycle: the only code that writes an order's state.

States of an order::

    accepted --> submitting --> pending --> succeeded
        |            |    \\        |  \\-> failed
        |            |     \\-> unknown --> (query) --> pending / succeeded / failed
        |            |            \\-> submitting (re-sent once: resend.py)
        |            \\-> retrying --> submitting (next supplier; only after submit's
        |                              refusal that delivered nothing: failover)
        \\-> failed (no supplier could take it; from retrying too)

    pending / unknown --(max_queries unanswered)--> review --(operator, or a late
    callback or poll)--> succeeded / failed

``succeeded`` and ``failed`` are terminal: nothing ever leaves them. Where each change
happens, by file:

- ``accept.py``: accepted (with the hold on the partner's money);
- ``claim.py``: a worker leases due orders and picks each one's next step: start an
  attempt, or query the open one;
- ``start_attempt.py``: submitting (first attempts and retries elsewhere alike: the
  attempt and its reference are committed before anything is sent), or failed when no
  supplier is left (fail unroutable);
- ``apply_result.py``: what a supplier said: pending, unknown, succeeded, failed,
  retrying (retry elsewhere), review (send to review, when querying gives up);
- ``resend.py``: submitting again, once, for a supplier that never received the attempt
  and refuses a reused reference;
- ``schedule.py``: when the order is looked at next (reschedule, wake);
- ``operator_review.py``: an operator's requery and resolve of an order in review;
- ``rules.py``: the one transition function every file above calls, and its rules;
- ``work.py``: what a lifecycle transaction shares (locks, rows, set-wise writes,
  settlement and the notification outbox).

Each change is a typed item of a ``Batch`` (core/writer.py): many of them share one
transaction and one commit.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection

from core import metrics
from core.db import Database
from core.errors import TopupError
from core.lifecycle.accept import ACCEPT, Accepted
from core.lifecycle.apply_result import Applied, ApplyResult
from core.lifecycle.claim import CLAIM, Claim, Query, Step, make_held_due
from core.lifecycle.operator_review import Requery, Resolve
from core.lifecycle.resend import Resend
from core.lifecycle.schedule import Reschedule, Wake
from core.lifecycle.start_attempt import Send, Unroutable
from core.lifecycle.work import ORDER_CHANGES
from core.orders import TERMINAL, NewOrder
from core.routing import RoutePlan
from core.suppliers import SupplierResult, UpstreamOrder

__all__ = [
    "Applied",
    "Lifecycle",
    "Query",
    "Send",
    "Step",
    "Unroutable",
]


class Lifecycle:
    """Typed entry points to the lifecycle's batches."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def accept(self, new: NewOrder) -> Accepted:
        """Store ``new`` with its hold, durably, or return the order its (appID,
        cstmOrderNo) already made. Raises TopupError when the balance does not cover it."""
        answer = await self.db.batched(ACCEPT, new)
        assert not isinstance(answer, TopupError)  # raised by the writer
        return answer

    async def claim(
        self,
        owner: str,
        lease_ms: int,
        limit: int,
        plan: RoutePlan,
        takeover_ms: int | None = None,
    ) -> list[Step]:
        """Lease up to ``limit`` due orders and decide each one's next step: send a
        just-recorded attempt, query an open one, or (failed here) none left to try.
        ``takeover_ms``: also take orders whose worker's heartbeat is that old."""
        return await self.db.batched(CLAIM, Claim(owner, lease_ms, limit, plan, takeover_ms))

    @staticmethod
    def make_due(conn: Connection, owners: Sequence[str], lease_ms: int) -> int:
        """Make the orders ``owners`` hold due now (they died or stopped): run inside the
        worker loop's reaping or signing-off transaction."""
        return make_held_due(conn, owners, lease_ms)

    async def apply(
        self,
        reference: str,
        result: SupplierResult,
        *,
        from_submit: bool,
        next_query_delay_ms: int | None,
        counts_as_query: bool,
    ) -> Applied | None:
        """Apply what a supplier said about one attempt; None when the reference is not
        ours. ``next_query_delay_ms`` None gives up querying (manual review)."""
        change = ApplyResult(reference, result, from_submit, next_query_delay_ms, counts_as_query)
        return await self.db.batched(ORDER_CHANGES, change)

    async def resend(self, reference: str, owner: str, min_age_ms: int) -> UpstreamOrder | None:
        """Mark an unknown attempt re-sent (once) and return it to send again, if allowed."""
        return await self.db.batched(ORDER_CHANGES, Resend(reference, owner, min_age_ms))

    async def reschedule(self, order_no: str, owner: str, delay_ms: int) -> None:
        await self.db.batched(ORDER_CHANGES, Reschedule(order_no, owner, delay_ms))

    async def wake(self, order_no: str) -> bool:
        return await self.db.batched(ORDER_CHANGES, Wake(order_no))

    async def requery(self, order_no: str, actor: str, reason: str) -> bool:
        return await self.db.batched(ORDER_CHANGES, Requery(order_no, actor, reason))

    async def resolve(self, order_no: str, succeeded: bool, reason: str, actor: str) -> Applied:
        """Raises LookupError when the order has no open attempt to resolve."""
        applied = await self.db.batched(ORDER_CHANGES, Resolve(order_no, succeeded, actor, reason))
        if applied.changed and applied.state in TERMINAL:
            metrics.order_reached(applied.state, applied.carrier, applied.plugin)
        return applied
