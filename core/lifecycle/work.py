"""What every lifecycle transaction shares: the rows it locked, the changes it made,
and writing them set-wise at its end.

A lifecycle batch locks the orders it changes first, in key order, in one statement
(PostgreSQL ``FOR UPDATE``; SQLite has one writer), and reads their attempts after:
every attempt row changes only under its order's lock, so that lock is enough. Money
and the notification outbox follow an order into a terminal state in the same
transaction (core/ledger.py settles in the transaction's accounts pass).
"""

from __future__ import annotations

import msgspec
from sqlalchemy import Connection, select

from core.audit import record
from core.clock import now_ms
from core.db import attempts, order_events, orders
from core.fastsql import insert_rows, update_rows
from core.ledger import settle_many
from core.lifecycle.rules import MUTABLE_COLUMNS, OrderRow, move
from core.notify import enqueue_many
from core.orders import OPEN_ATTEMPT, ORDER_TABLE_COLUMNS, SYSTEM, TERMINAL, AttemptRecord, State
from core.suppliers import UpstreamOrder
from core.writer import Batch, Phase, Tx

# Keeps every IN (...) list well inside SQLite's limit on bound parameters.
CHUNK = 400


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
ATTEMPT_CHANGES = ("state", "supplier_ref", "code", "message", "queries", "refused", "resent")


def chunks(values: list) -> list[list]:
    return [values[i : i + CHUNK] for i in range(0, len(values), CHUNK)]


def order_row(row) -> OrderRow:
    columns = row._mapping
    values = [columns[name] for name in ORDER_TABLE_COLUMNS]
    values[ORDER_TABLE_COLUMNS.index("state")] = State(columns["state"])
    return OrderRow(*values)


class Work:
    """The orders and attempts of one lifecycle batch, and what it changed."""

    def __init__(self, tx: Tx, orders_by_no: dict[str, OrderRow], now: int | None = None) -> None:
        self.tx = tx
        self.now = now_ms() if now is None else now
        self.orders = orders_by_no
        self.attempts: dict[str, AttemptRow] = {}
        self._changed_orders: set[str] = set()
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
        query = select(orders).order_by(orders.c.order_no).with_for_update()
        found = {}
        for chunk in chunks(sorted(order_nos)):
            for row in tx.conn.execute(query.where(orders.c.order_no.in_(chunk))):
                found[row.order_no] = order_row(row)
        work = cls(tx, found)
        work.load_attempts()
        return work

    def load_attempts(self) -> None:
        query = select(*(attempts.c[name] for name in ATTEMPT_COLUMNS))
        for chunk in chunks(sorted(self.orders)):
            for row in self.conn.execute(query.where(attempts.c.order_no.in_(chunk))):
                attempt = AttemptRow(*row)
                attempt.state = State(attempt.state)
                self.attempts[attempt.reference] = attempt

    def attempts_of(self, order_no: str) -> list[AttemptRow]:
        return sorted(
            (a for a in self.attempts.values() if a.order_no == order_no), key=lambda a: a.seq
        )

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
        move(order, to, self.now, **columns)
        self._changed_orders.add(order.order_no)
        if to in TERMINAL and not was_terminal:
            self._finished.append(order)

    def change_attempt(self, attempt: AttemptRow, **columns: object) -> None:
        for name, value in columns.items():
            setattr(attempt, name, value)
        attempt.updated_at = self.now
        self._changed_attempts.add(attempt.reference)

    def add_attempt(self, attempt: AttemptRow) -> None:
        self.attempts[attempt.reference] = attempt
        self._new_attempts.append(attempt)

    def event(self, order_no: str, kind: str, detail: str, actor: str = SYSTEM) -> None:
        """A line of the order's timeline (the console, `topup orders show`)."""
        self._events.append((order_no, self.now, kind, actor, detail))

    def audit(self, actor: str, action: str, target: str, reason: str, **detail: object) -> None:
        self._audit.append((actor, action, target, reason, detail))

    # -- writing ------------------------------------------------------------------------

    def write(self) -> None:
        conn = self.conn
        update_rows(
            conn,
            orders,
            "order_no",
            MUTABLE_COLUMNS,
            [
                (*(_plain(getattr(self.orders[no], name)) for name in MUTABLE_COLUMNS), no)
                for no in sorted(self._changed_orders)
            ],
        )
        new = {a.reference for a in self._new_attempts}
        insert_rows(
            conn,
            attempts,
            ATTEMPT_COLUMNS,
            [tuple(_plain(v) for v in msgspec.structs.astuple(a)) for a in self._new_attempts],
        )
        update_rows(
            conn,
            attempts,
            "reference",
            (*ATTEMPT_CHANGES, "updated_at"),
            [
                (*(_plain(getattr(self.attempts[ref], n)) for n in ATTEMPT_CHANGES), self.now, ref)
                for ref in sorted(self._changed_attempts - new)
            ],
        )
        if self._events:
            columns = ("order_no", "at", "kind", "actor", "detail")
            insert_rows(conn, order_events, columns, self._events)
        for actor, action, target, reason, detail in self._audit:
            record(conn, actor, action, target, reason, **detail)
        finished = self._finished
        settle_many(self.tx, [(o.app_id, o.order_no, o.state is State.SUCCEEDED) for o in finished])
        enqueue_many(conn, [(o.app_id, o.order_no) for o in finished])

    @property
    def finished(self) -> list[OrderRow]:
        return list(self._finished)


def _plain(value):
    return value.value if isinstance(value, State) else value


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
    order_nos = {item.order_no for item in items if isinstance(item, OrderChange)}
    references = [item.reference for item in items if isinstance(item, AttemptChange)]
    order_nos |= _orders_of(tx.conn, references)
    work = Work.locking(tx, order_nos)
    answers = [item.apply(work) for item in items]
    work.write()
    return answers


def _orders_of(conn: Connection, references: list[str]) -> set[str]:
    # An attempt's order never changes, so this read needs no lock.
    found: set[str] = set()
    query = select(attempts.c.order_no)
    for chunk in chunks(sorted(set(references))):
        found |= set(conn.execute(query.where(attempts.c.reference.in_(chunk))).scalars())
    return found


ORDER_CHANGES = Batch("order changes", Phase.ORDERS, change_orders)
