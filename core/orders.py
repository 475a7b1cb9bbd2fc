"""Orders and their upstream attempts: the states, and the rules that move them.

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

from core.ids import taken_at
from core.suppliers import Outcome, SupplierResult


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


def order_from_row(row) -> OrderRecord:
    columns = row._mapping
    return OrderRecord(**{name: columns[name] for name in _ORDER_FIELDS}, state=State(row.state))


def order_from_tuple(row: tuple) -> OrderRecord:
    """From the orders table's columns in table order (which is OrderRecord's order)."""
    return OrderRecord(*row[:11], State(row[11]), *row[12:])


def attempt_from_row(row) -> AttemptRecord:
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


def still_open(
    order_state: State, attempt_state: State, next_query_delay_ms: int | None, now: int
) -> dict:
    """Order columns while the supplier has not settled the attempt."""
    if order_state is State.REVIEW:
        # Only a settled outcome or an operator moves it on; nothing queries it again
        # (a callback may have had it queried once: core.order_store.OrderStore.wake).
        return {"state": State.REVIEW, "next_run_at": None}
    if next_query_delay_ms is None:
        return {"state": State.REVIEW, "next_run_at": None}
    return {"state": attempt_state, "next_run_at": now + next_query_delay_ms}


def order_change(
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
