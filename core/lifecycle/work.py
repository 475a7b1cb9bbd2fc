"""What every lifecycle transaction shares: the rows it locked, the changes it made,
and writing them set-wise at its end.

A lifecycle batch locks the orders it changes first, in key order, in one statement
(PostgreSQL ``FOR UPDATE``; SQLite has one writer), and reads their attempts after:
every attempt row changes only under its order's lock, so that lock is enough. Money
and the notification outbox follow an order into a terminal state in the same
transaction (core/ledger.py settles in the transaction's accounts pass).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from operator import attrgetter

import msgspec
from sqlalchemy import Connection, select

from core.audit import record
from core.clock import now_ms
from core.db import attempts, order_events, orders
from core.fastsql import fetch_in, insert_rows, update_alike, update_rows
from core.ledger import settle_many
from core.lifecycle.rules import MUTABLE_COLUMNS, OrderRow, move
from core.notify import enqueue_many
from core.orders import (
    OPEN_ATTEMPT,
    ORDER_TABLE_COLUMNS,
    STATE_OF,
    SYSTEM,
    TERMINAL,
    AttemptRecord,
    State,
)
from core.suppliers import UpstreamOrder
from core.writer import Batch, Phase, Tx


class AttemptRow(msgspec.Struct):
    """An attempt row being changed inside a lifecycle transaction."""

    reference: str
    order_no: str
    seq: int
    plugin: str
    state: State
    supplier_ref: str | None
    code: str | None
    message: str | None
    queries: int
    created_at: int
    updated_at: int
    cost: int | None
    refused: bool
    resent: bool

    def record(self) -> AttemptRecord:
        return AttemptRecord(**msgspec.structs.asdict(self))


ATTEMPT_COLUMNS = tuple(AttemptRow.__struct_fields__)
# The orders table's columns in OrderRow's order, for reading rows positionally.
ORDER_ROW_COLUMNS = tuple(orders.c[name] for name in ORDER_TABLE_COLUMNS)
# Built once: fetch_in compiles each once per dialect and IN-list size.
LOCK_ORDERS = select(*ORDER_ROW_COLUMNS).order_by(orders.c.order_no).with_for_update()
ATTEMPTS = select(*(attempts.c[name] for name in ATTEMPT_COLUMNS))
ATTEMPT_CHANGES = ("state", "supplier_ref", "code", "message", "queries", "refused", "resent")


def order_row(values: tuple) -> OrderRow:
    """An orders row read in ``ORDER_ROW_COLUMNS`` order."""
    order = OrderRow(*values)
    order.state = STATE_OF[order.state]
    return order


class Work:
    """The orders and attempts of one lifecycle batch, and what it changed."""

    def __init__(self, tx: Tx, orders_by_no: dict[str, OrderRow], now: int | None = None) -> None:
        self.tx = tx
        self.now = now_ms() if now is None else now
        self.orders = orders_by_no
        self.attempts: dict[str, AttemptRow] = {}
        self._by_order: dict[str, list[AttemptRow]] = {}
        # order_no -> the columns changed: only those are written (an indexed column
        # written unchanged still costs its index an update).
        self._changed_orders: dict[str, set[str]] = {}
        self._changed_attempts: set[str] = set()
        self._new_attempts: list[AttemptRow] = []
        self._events: list[tuple] = []
        self._finished: list[OrderRow] = []
        self._audit: list[tuple] = []

    @property
    def conn(self) -> Connection:
        return self.tx.conn

    # -- reading ------------------------------------------------------------------------

    @classmethod
    def locking(cls, tx: Tx, order_nos: set[str]) -> Work:
        """Lock ``order_nos`` (in key order, so two transactions cannot deadlock) and load
        them with their attempts."""
        rows = fetch_in(tx.conn, LOCK_ORDERS, orders.c.order_no, order_nos)
        work = cls(tx, {row[0]: order_row(row) for row in rows})
        work.load_attempts()
        return work

    def load_attempts(self) -> None:
        # An order's attempts count is kept with its attempts: none to read for new ones.
        tried = [no for no, order in self.orders.items() if order.attempts]
        for row in fetch_in(self.conn, ATTEMPTS, attempts.c.order_no, tried):
            self._keep(AttemptRow(*row))

    def _keep(self, attempt: AttemptRow) -> None:
        attempt.state = STATE_OF[attempt.state]
        self.attempts[attempt.reference] = attempt
        self._by_order.setdefault(attempt.order_no, []).append(attempt)

    def attempts_of(self, order_no: str) -> list[AttemptRow]:
        return sorted(self._by_order.get(order_no, ()), key=lambda a: a.seq)

    def open_attempt(self, order_no: str) -> AttemptRow | None:
        candidates = [a for a in self.attempts_of(order_no) if a.state in OPEN_ATTEMPT]
        return candidates[-1] if candidates else None

    def upstream(self, attempt: AttemptRow) -> UpstreamOrder:
        """The attempt as its supplier plugin sees it."""
        order = self.orders[attempt.order_no]
        return UpstreamOrder(
            reference=attempt.reference,
            order_no=order.order_no,
            attempt=attempt.seq,
            phone_no=order.phone_no,
            carrier=order.carrier,
            product_id=order.product_id,
            face_value=order.face_value,
            created_at=attempt.created_at,
            supplier_ref=attempt.supplier_ref,
        )

    # -- changing -----------------------------------------------------------------------

    def move(self, order: OrderRow, to: State, **columns: object) -> None:
        """``core.lifecycle.rules.move``, remembered for writing (and for settling)."""
        was_terminal = order.state in TERMINAL
        changed = move(order, to, self.now, **columns)
        self._changed_orders.setdefault(order.order_no, set()).update(changed)
        if to in TERMINAL and not was_terminal:
            self._finished.append(order)

    def hold(self, order: OrderRow, lease: dict[str, object]) -> None:
        """Set the lease columns (core/leases.py) of an order this transaction claimed."""
        for name, value in lease.items():
            setattr(order, name, value)
        self._changed_orders.setdefault(order.order_no, set()).update(lease)

    def change_attempt(self, attempt: AttemptRow, **columns: object) -> None:
        for name, value in columns.items():
            setattr(attempt, name, value)
        attempt.updated_at = self.now
        self._changed_attempts.add(attempt.reference)

    def add_attempt(self, attempt: AttemptRow) -> None:
        self._keep(attempt)
        self._new_attempts.append(attempt)

    def event(self, order_no: str, kind: str, detail: str, actor: str = SYSTEM) -> None:
        """A line of the order's timeline (the console, `topup orders show`)."""
        self._events.append((order_no, self.now, kind, actor, detail))

    def audit(self, actor: str, action: str, target: str, reason: str, **detail: object) -> None:
        self._audit.append((actor, action, target, reason, detail))

    # -- writing ------------------------------------------------------------------------

    def write(self) -> None:
        conn = self.conn
        self._write_orders()
        new = {a.reference for a in self._new_attempts}
        added = [_attempt_values(attempt) for attempt in self._new_attempts]
        insert_rows(conn, attempts, ATTEMPT_COLUMNS, added)
        changed = sorted(self._changed_attempts - new)
        update_rows(
            conn,
            attempts,
            "reference",
            (*ATTEMPT_CHANGES, "updated_at"),
            [(*_attempt_changes(self.attempts[ref]), self.now, ref) for ref in changed],
        )
        if self._events:
            columns = ("order_no", "at", "kind", "actor", "detail")
            insert_rows(conn, order_events, columns, self._events)
        for actor, action, target, reason, detail in self._audit:
            record(conn, actor, action, target, reason, **detail)
        finished = self._finished
        settle_many(self.tx, [(o.app_id, o.order_no, o.state is State.SUCCEEDED) for o in finished])
        enqueue_many(conn, [(o.app_id, o.order_no) for o in finished])

    def _write_orders(self) -> None:
        """The changed orders: those that change alike (a claim's, a batch of results') in
        one UPDATE each, the rest one UPDATE per set of changed columns. Every row was
        locked in key order when it was read (``locking``, the claim's ``lock_due``), so
        the order of the statements cannot deadlock."""
        alike: dict[tuple[str, ...], dict[tuple, list[str]]] = {}
        for no in sorted(self._changed_orders):
            names, values = _order_changes(frozenset(self._changed_orders[no]))
            alike.setdefault(names, {}).setdefault(tuple(values(self.orders[no])), []).append(no)
        for names, groups in alike.items():
            single = []
            for values, keys in groups.items():
                if len(keys) > 1:
                    update_alike(self.conn, orders, "order_no", names, values, keys)
                else:
                    single.append((*values, keys[0]))
            update_rows(self.conn, orders, "order_no", names, single)


# Rows are bound as plain values: sqlite3 binds a str subclass (State) only after a
# failed adapter lookup (core/db.py), which costs more than the rest of the row.
_ATTEMPT_STATE = ATTEMPT_COLUMNS.index("state")
_attempt_changes_of = attrgetter(*ATTEMPT_CHANGES)


def _attempt_values(attempt: AttemptRow) -> tuple:
    values = list(msgspec.structs.astuple(attempt))
    values[_ATTEMPT_STATE] = attempt.state.value
    return tuple(values)


def _attempt_changes(attempt: AttemptRow) -> list:
    values = list(_attempt_changes_of(attempt))
    values[0] = attempt.state.value  # ATTEMPT_CHANGES begins with the state
    return values


@cache
def _order_changes(changed: frozenset[str]) -> tuple[tuple[str, ...], Callable[[OrderRow], list]]:
    """The changed columns in the table's order, and how to read their values off a row."""
    names = tuple(c for c in MUTABLE_COLUMNS if c in changed)
    get = attrgetter(*names)
    state_at = names.index("state") if "state" in names else None

    def values(order: OrderRow) -> list:
        row = list(get(order)) if len(names) > 1 else [get(order)]
        if state_at is not None:
            row[state_at] = order.state.value
        return row

    return names, values


# -- the batch of every order change but claims and acceptance ---------------------------


class OrderChange(msgspec.Struct, frozen=True):
    """A change to one order, named by its order number."""

    order_no: str

    def apply(self, work: Work) -> object:
        raise NotImplementedError


class AttemptChange(msgspec.Struct, frozen=True):
    """A change to one attempt (and so to its order), named by the attempt's reference."""

    reference: str

    def apply(self, work: Work) -> object:
        raise NotImplementedError


def change_orders(tx: Tx, items: list[OrderChange | AttemptChange]) -> list[object]:
    """Lock every order the items touch, once, apply each item in turn, write it all."""
    order_nos = {
        item.order_no if isinstance(item, OrderChange) else order_of(item.reference)
        for item in items
    }
    work = Work.locking(tx, order_nos)
    answers = [item.apply(work) for item in items]
    work.write()
    return answers


def order_of(reference: str) -> str:
    """The order an attempt reference belongs to (core/ids.py: ``{orderNo}A{seq}``). A
    reference that is not ours names no order, or one whose attempts do not include it:
    either way the change finds no attempt and answers None."""
    return reference.rpartition("A")[0]


ORDER_CHANGES = Batch("order changes", Phase.ORDERS, change_orders)
