"""pending, unknown, succeeded, failed, retrying (retry elsewhere), review (send to
review): what a supplier's answer (to a submit, a status query or a callback) does to
an attempt and its order.

Applied idempotently and monotonically: a terminal attempt or order never changes, an
acknowledged (pending) attempt never falls back to unknown, and a query or callback
never moves an order to another supplier, whatever the plugin reports (only ``submit``'s
refusal that allows failover can, and such a refusal from anything else is read as
unknown: core/lifecycle/rules.py).

``retrying`` is the retry elsewhere: the next claim starts the order's next attempt with
another plugin (core/lifecycle/start_attempt.py). ``review`` is the send to review, when
the caller gives up querying (``next_query_delay_ms`` None); an operator takes it from
there (core/lifecycle/operator_review.py).
"""

from __future__ import annotations

import msgspec

from core.lifecycle.rules import as_applied, next_attempt_state, order_state_after
from core.lifecycle.work import AttemptChange, AttemptRow, Work
from core.orders import TERMINAL, State
from core.suppliers import FailReason, SupplierResult


class Applied(msgspec.Struct, frozen=True):
    """What applying a supplier result did to the order."""

    order_no: str
    state: State
    changed: bool
    carrier: str = ""
    plugin: str = ""


class ApplyResult(AttemptChange, frozen=True):
    result: SupplierResult
    # From submit: only then may a refusal move the order to another supplier.
    from_submit: bool
    # When to query an outcome still open; None gives up and sends the order to review.
    next_query_delay_ms: int | None
    counts_as_query: bool

    def apply(self, work: Work) -> Applied | None:
        attempt = work.attempts.get(self.reference)
        if attempt is None:
            return None
        return apply_result(work, attempt, self)


def apply_result(
    work: Work,
    attempt: AttemptRow,
    change: ApplyResult,
    event: tuple[str, str, str] | None = None,
) -> Applied:
    """One result against the attempt and its order. ``event``: (kind, actor, detail)."""
    order = work.orders[attempt.order_no]
    result = as_applied(change.result, from_submit=change.from_submit)
    new_state = next_attempt_state(attempt.state, result.outcome)
    if new_state is None:
        return Applied(order.order_no, order.state, False, order.carrier, attempt.plugin)
    work.change_attempt(
        attempt,
        state=new_state,
        supplier_ref=result.supplier_ref or attempt.supplier_ref,
        code=result.code or attempt.code,
        message=result.message or attempt.message,
        queries=attempt.queries + (1 if change.counts_as_query else 0),
        refused=new_state is State.FAILED and result.failover,
    )
    if order.state in TERMINAL:
        return Applied(order.order_no, order.state, False, order.carrier, attempt.plugin)
    before = order.state
    delay = _query_delay(order, change.next_query_delay_ms)
    to = order_state_after(
        before, new_state, result, may_fail_over=change.from_submit, give_up=delay is None
    )
    work.move(order, to, **_columns(to, result, delay, work.now))
    if event is not None:
        work.event(order.order_no, event[0], event[2], actor=event[1])
    elif to is State.REVIEW and before is not State.REVIEW:
        work.event(order.order_no, "review", _review_detail(attempt, result))
    return Applied(order.order_no, to, to is not before, order.carrier, attempt.plugin)


def _review_detail(attempt: AttemptRow, result: SupplierResult) -> str:
    """Why the order waits for an operator; read in the console's timeline and `topup
    orders show`, so in Chinese."""
    last_code = f"，最后一次返回 {result.code}" if result.code else ""
    detail = f"向供应商查询 {attempt.queries} 次仍无最终结果{last_code}，转人工审核"
    if result.no_such_order and attempt.resent:
        # The one case the operator can settle from the supplier's word alone: neither
        # request reached it. Said plainly so that nobody has to reconstruct it.
        detail += f"；参考号 {attempt.reference} 已原样重发一次，供应商仍答查无此单"
    return detail


def _columns(to: State, result: SupplierResult, delay: int | None, now: int) -> dict:
    released = {"lease_owner": None, "lease_until": None}
    if to is State.SUCCEEDED:
        return {"fail_code": None, "fail_reason": None}
    # fail_reason is the partner's failReason: the curated text the plugin chose, never
    # the supplier's own message (kept on the attempt, for operators, with its code).
    reason = str(result.reason or FailReason.FAILED)
    if to is State.FAILED:
        return {"fail_code": result.code or "FAILED", "fail_reason": reason}
    if to is State.RETRYING:
        # Kept in case no supplier is left to try: the last refusal says most.
        fail = {"fail_code": result.code or None, "fail_reason": reason}
        return {**released, **fail, "next_run_at": now}
    if to is State.REVIEW or delay is None:
        return {**released, "next_run_at": None}
    return {**released, "next_run_at": now + delay}


def _query_delay(order, delay: int | None) -> int | None:
    """When to query an outcome still open: at once if a callback woke the order while a
    worker held it (core/lifecycle/schedule.py moved its next run before the lease's end)."""
    woken = (
        order.lease_until is not None
        and order.next_run_at is not None
        and order.next_run_at < order.lease_until
    )
    return 0 if woken and delay is not None else delay
