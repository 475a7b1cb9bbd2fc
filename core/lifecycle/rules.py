"""The one transition function of an order, and the rules that pick its next state.

Every change of an order's state in the lifecycle goes through ``move``, which refuses
any move the state diagram (core/lifecycle/__init__.py) does not draw: above all, a
terminal order never moves again.
"""

from __future__ import annotations

import msgspec

from core.ids import taken_at
from core.orders import TERMINAL, NewOrder, OrderRecord, State
from core.suppliers import Outcome, SupplierResult

_OPEN = frozenset({State.PENDING, State.UNKNOWN, State.SUCCEEDED, State.FAILED, State.REVIEW})
ALLOWED: dict[State, frozenset[State]] = {
    State.ACCEPTED: frozenset({State.SUBMITTING, State.FAILED}),
    State.RETRYING: frozenset({State.SUBMITTING, State.FAILED}),
    State.SUBMITTING: _OPEN | {State.RETRYING},
    State.PENDING: _OPEN,
    # SUBMITTING again: the same attempt re-sent, once, to a supplier that said it never
    # received it and refuses a reused reference (core/lifecycle/resend.py).
    State.UNKNOWN: _OPEN | {State.SUBMITTING},
    State.REVIEW: _OPEN,
    State.SUCCEEDED: frozenset(),
    State.FAILED: frozenset(),
}


class IllegalMove(Exception):
    """A bug: something asked for a move the state diagram does not allow."""


class OrderRow(msgspec.Struct):
    """An order row being changed inside a lifecycle transaction."""

    order_no: str
    order_id: str
    app_id: str
    cstm_order_no: str
    cstm_order_name: str
    company: str
    carrier: str
    phone_no: str
    product_id: str
    face_value: int
    price: int
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
    segment_carrier: str | None = None

    def record(self) -> OrderRecord:
        return OrderRecord(**msgspec.structs.asdict(self))


# Rows are read positionally in the table's column order, which is OrderRecord's.
assert OrderRow.__struct_fields__ == OrderRecord.__struct_fields__, "OrderRow drifted"

MUTABLE_COLUMNS = (
    "state",
    "attempts",
    "fail_code",
    "fail_reason",
    "updated_at",
    "finished_at",
    "next_run_at",
    "lease_owner",
    "lease_until",
)


def can_move(order: OrderRow, to: State) -> bool:
    return (to is order.state and to not in TERMINAL) or to in ALLOWED[order.state]


ALWAYS_SET = ("state", "updated_at")
SET_WHEN_FINISHED = ("finished_at", "next_run_at", "lease_owner", "lease_until")


def move(order: OrderRow, to: State, now: int, **columns: object) -> tuple[str, ...]:
    """Move ``order`` to ``to`` (staying put is a move too, unless terminal), setting
    ``columns`` with it. A terminal state records when the order finished and ends both
    its schedule and its lease. Returns the names of the columns it set."""
    if not can_move(order, to):
        raise IllegalMove(f"order {order.order_no}: {order.state} -> {to} is not allowed")
    order.state = to
    order.updated_at = now
    changed = ALWAYS_SET
    if to in TERMINAL:
        order.finished_at = now
        order.next_run_at = order.lease_owner = order.lease_until = None
        changed += SET_WHEN_FINISHED
    for name, value in columns.items():
        setattr(order, name, value)
    return changed + tuple(columns)


def new_record(new: NewOrder, now: int) -> OrderRecord:
    """The stored form of a just-accepted order, created when its number was taken."""
    return OrderRecord(
        **msgspec.structs.asdict(new),
        state=State.ACCEPTED,
        attempts=0,
        fail_code=None,
        fail_reason=None,
        created_at=taken_at(new.order_no),
        updated_at=now,
        finished_at=None,
        next_run_at=now,
        lease_owner=None,
        lease_until=None,
    )


def as_applied(result: SupplierResult, *, from_submit: bool) -> SupplierResult:
    """The result as the lifecycle applies it: a failover outside ``submit`` is unknown.

    "Refused before acceptance, nothing delivered" can only be said of a submit. Said by
    a status query (often one that never left: ``not_sent``) or a callback, it proves
    nothing about the top-up, and reading it as a failure would give the partner its
    money back for a phone that may have been credited: so the order is queried on.
    """
    if from_submit or not result.failover:
        return result
    return SupplierResult.unknown(
        supplier_ref=result.supplier_ref, code=result.code, message=result.message
    )


def next_attempt_state(current: State, outcome: Outcome) -> State | None:
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


def order_state_after(
    order: State, attempt: State, result: SupplierResult, *, may_fail_over: bool, give_up: bool
) -> State:
    """The order's state once its attempt is in ``attempt``.

    A failure moves the order to another supplier only when it came from ``submit``
    (``may_fail_over``), the order was still submitting, and the supplier's own code
    says nothing was delivered: never from a query or a callback, whatever the plugin
    says (``as_applied`` has made such a result unknown). An outcome still open after
    the last query (``give_up``) goes to review.
    """
    if attempt is State.SUCCEEDED:
        return State.SUCCEEDED
    if attempt is State.FAILED:
        fail_over = may_fail_over and result.failover and order is State.SUBMITTING
        return State.RETRYING if fail_over else State.FAILED
    if order is State.REVIEW or give_up:
        # Only a settled outcome or an operator moves an order out of review.
        return State.REVIEW
    return attempt
