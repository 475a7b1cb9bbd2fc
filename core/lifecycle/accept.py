"""accepted: a partner's order stored with the hold on its price, durably, once.

A repeat of (appID, cstmOrderNo) gets the order it made the first time. Acceptance runs
in its transaction's accounts pass (core/writer.py): the accounts it charges are locked
there, with every other account that transaction changes, in one pass.
"""

from __future__ import annotations

from collections import defaultdict
from operator import attrgetter

import msgspec
from sqlalchemy import Connection, bindparam, select

from core.clock import now_ms
from core.db import accounts, insert_ignoring_conflicts, ledger, orders
from core.errors import TopupError
from core.fastsql import add_to_columns, fetch_in, insert_rows
from core.ledger import LEDGER_COLUMNS, insufficient, lock_accounts
from core.lifecycle.rules import new_record
from core.orders import (
    ORDER_TABLE_COLUMNS,
    SYSTEM,
    NewOrder,
    OrderRecord,
    order_columns,
    order_from_tuple,
)
from core.writer import Batch, Phase, Tx

Accepted = tuple[OrderRecord, bool]


def accept_orders(tx: Tx, items: list[NewOrder]) -> list[Accepted | TopupError]:
    """Store new orders with their holds; a repeat of (appID, cstmOrderNo) gets the original."""
    conn = tx.conn
    now = now_ms()
    existing = _existing_orders(conn, {(n.app_id, n.cstm_order_no) for n in items})
    available = lock_accounts(tx, {n.app_id for n in items})
    created: dict[tuple[str, str], OrderRecord] = {}
    answers: list[tuple[str, object]] = []
    for new in items:
        key = (new.app_id, new.cstm_order_no)
        if key in existing or key in created:
            answers.append(("repeat", key))
        elif available.get(new.app_id, 0) < new.price:
            answers.append(("refused", insufficient(available.get(new.app_id, 0), new.price)))
        else:
            available[new.app_id] -= new.price
            created[key] = new_record(new, now)
            answers.append(("created", key))
    lost = _insert_orders(conn, list(created.values()))
    for key in lost:  # another instance stored the same key first (PostgreSQL only)
        del created[key]
    existing |= _existing_orders(conn, set(lost))
    _hold(conn, list(created.values()), now)
    return [_answer(kind, value, created, existing) for kind, value in answers]


ACCEPT = Batch("accept", Phase.ACCOUNTS, accept_orders, account=attrgetter("app_id"))
# Built once (core/fastsql.fetch_in): a statement built per transaction cost more than
# running it, which a transaction of one order (light load) pays in full.
APP_ORDERS = select(*(orders.c[name] for name in ORDER_TABLE_COLUMNS)).where(
    orders.c.app_id == bindparam("app")
)


def _answer(kind: str, value, created: dict, existing: dict):
    if kind == "refused":
        return value
    if kind == "created" and value in created:
        return created[value], True
    return (created.get(value) or existing[value]), False


def _existing_orders(conn: Connection, keys: set[tuple[str, str]]) -> dict:
    # One query per app: "app_id = ? AND cstm_order_no IN (...)" uses the unique index,
    # where a row-value IN over both columns makes SQLite scan the table.
    by_app: dict[str, list[str]] = defaultdict(list)
    for app_id, cstm_order_no in keys:
        by_app[app_id].append(cstm_order_no)
    found = {}
    for app_id, numbers in by_app.items():
        for row in fetch_in(conn, APP_ORDERS, orders.c.cstm_order_no, numbers, (app_id,)):
            record = order_from_tuple(row)
            found[(record.app_id, record.cstm_order_no)] = record
    return found


def _insert_orders(conn: Connection, records: list[OrderRecord]) -> list[tuple[str, str]]:
    """Insert; returns the keys another writer had already taken."""
    if not records:
        return []
    if conn.dialect.name == "sqlite":
        # The single writer checked the keys under its lock: nothing can collide.
        insert_rows(conn, orders, ORDER_TABLE_COLUMNS, [_values(r) for r in records])
        return []
    inserted = {
        row.order_no
        for row in conn.execute(
            insert_ignoring_conflicts(conn, orders, ["app_id", "cstm_order_no"]).returning(
                orders.c.order_no
            ),
            [order_columns(record) for record in records],
        )
    }
    return [(r.app_id, r.cstm_order_no) for r in records if r.order_no not in inserted]


_STATE_AT = OrderRecord.__struct_fields__.index("state")


def _values(record: OrderRecord) -> list:
    values = list(msgspec.structs.astuple(record))
    # Bound as the plain string: a StrEnum takes sqlite3's slow path for non-exact types.
    values[_STATE_AT] = record.state.value
    return values


def _hold(conn: Connection, records: list[OrderRecord], now: int) -> None:
    if not records:
        return
    insert_rows(
        conn,
        ledger,
        LEDGER_COLUMNS,
        [
            (r.app_id, "hold", r.price, r.order_no, f"hold:{r.order_no}", "下单冻结", SYSTEM, now)
            for r in records
        ],
    )
    per_app: dict[str, int] = defaultdict(int)
    for record in records:
        per_app[record.app_id] += record.price
    # Already locked by lock_accounts above: this waits for nobody.
    add_to_columns(conn, accounts, "app_id", ("held",), [(a, app) for app, a in per_app.items()])
