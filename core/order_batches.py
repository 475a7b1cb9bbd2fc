"""The hot writes of the order lifecycle, done set-wise for a whole group commit.

The writer (core/writer.py) hands each function every queued item of its kind; each
runs a fixed handful of statements whatever the batch size, and answers per item in
order. They read what they change under the transaction's write lock (SQLite's single
writer, PostgreSQL's ``FOR UPDATE``), so the state they decide on cannot change under
them. Rows travel as tuples through core/fastsql.py.
"""

from __future__ import annotations

from collections import defaultdict

import msgspec
from sqlalchemy import Connection, select

from core.clock import now_ms
from core.db import accounts, attempts, insert_ignoring_conflicts, ledger, order_events, orders
from core.errors import TopupError
from core.fastsql import add_to_columns, insert_rows, update_rows
from core.ids import attempt_reference
from core.ledger import insufficient, settle_many
from core.notify import enqueue_many
from core.orders import (
    READY_TO_SUBMIT,
    SYSTEM,
    TERMINAL,
    Applied,
    NewOrder,
    OrderRecord,
    State,
    new_record,
    next_attempt_state,
    order_change,
    order_from_row,
    still_open,
)
from core.suppliers import SupplierResult, UpstreamOrder

ACCEPT, START, APPLY = "accept", "start", "apply"
# Keeps every IN (...) list well inside SQLite's limit on bound parameters.
CHUNK = 400

ORDER_COLUMNS = tuple(OrderRecord.__struct_fields__)
HOLD_COLUMNS = (
    "app_id",
    "kind",
    "amount",
    "order_no",
    "event_key",
    "reason",
    "actor",
    "created_at",
)
ATTEMPT_COLUMNS = (
    "reference",
    "order_no",
    "seq",
    "plugin",
    "state",
    "queries",
    "created_at",
    "updated_at",
    "cost",
    "refused",
)


class StartAttempt(msgspec.Struct, frozen=True):
    order_no: str
    owner: str
    plugin: str
    cost: int | None


class ApplyResult(msgspec.Struct, frozen=True):
    reference: str
    result: SupplierResult
    retry_elsewhere: bool
    next_query_delay_ms: int | None
    counts_as_query: bool
    event: tuple[str, str, str] | None = None


def _chunks(values: list) -> list[list]:
    return [values[i : i + CHUNK] for i in range(0, len(values), CHUNK)]


def _in_chunks(conn: Connection, query, column, keys) -> list:
    # Rows come (and, FOR UPDATE, are locked) in key order, so that two batches on
    # PostgreSQL touching the same rows take their locks in the same order: no deadlock.
    ordered = query.order_by(column)
    rows = []
    for chunk in _chunks(sorted(keys)):
        rows += conn.execute(ordered.where(column.in_(chunk))).all()
    return rows


# -- acceptance ---------------------------------------------------------------------------

Accepted = tuple[OrderRecord, bool]


def accept_batch(conn: Connection, items: list[NewOrder]) -> list[Accepted | TopupError]:
    """Store new orders with their holds; a repeat of (appID, cstmOrderNo) gets the original."""
    now = now_ms()
    existing = _existing_orders(conn, {(n.app_id, n.cstm_order_no) for n in items})
    available = _available(conn, {n.app_id for n in items})
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
        query = select(orders).where(orders.c.app_id == app_id)
        for row in _in_chunks(conn, query, orders.c.cstm_order_no, numbers):
            found[(row.app_id, row.cstm_order_no)] = order_from_row(row)
    return found


def _available(conn: Connection, app_ids: set[str]) -> dict[str, int]:
    rows = conn.execute(
        select(accounts)
        .where(accounts.c.app_id.in_(list(app_ids)))
        .order_by(accounts.c.app_id)  # one lock order everywhere: see add_to_columns
        .with_for_update()
    )
    return {row.app_id: row.credited - row.captured - row.held + row.credit_limit for row in rows}


def _insert_orders(conn: Connection, records: list[OrderRecord]) -> list[tuple[str, str]]:
    """Insert; returns the keys another writer had already taken."""
    if not records:
        return []
    if conn.dialect.name == "sqlite":
        # The single writer checked the keys under its lock: nothing can collide.
        insert_rows(conn, orders, ORDER_COLUMNS, [_values(r) for r in records])
        return []
    inserted = {
        row.order_no
        for row in conn.execute(
            insert_ignoring_conflicts(conn, orders, ["app_id", "cstm_order_no"]).returning(
                orders.c.order_no
            ),
            [msgspec.structs.asdict(record) for record in records],
        )
    }
    return [(r.app_id, r.cstm_order_no) for r in records if r.order_no not in inserted]


def _values(record: OrderRecord) -> tuple:
    return tuple(str(v) if isinstance(v, State) else v for v in msgspec.structs.astuple(record))


def _hold(conn: Connection, records: list[OrderRecord], now: int) -> None:
    if not records:
        return
    insert_rows(
        conn,
        ledger,
        HOLD_COLUMNS,
        [
            (r.app_id, "hold", r.price, r.order_no, f"hold:{r.order_no}", "下单冻结", SYSTEM, now)
            for r in records
        ],
    )
    per_app: dict[str, int] = defaultdict(int)
    for record in records:
        per_app[record.app_id] += record.price
    add_to_columns(conn, accounts, "app_id", ("held",), [(a, app) for app, a in per_app.items()])


# -- starting attempts ----------------------------------------------------------------------


def start_batch(conn: Connection, items: list[StartAttempt]) -> list[UpstreamOrder | None]:
    """Record each next attempt before anything is sent; None where the order moved on."""
    wanted = {item.order_no: item for item in items}
    query = (
        select(
            orders.c.order_no,
            orders.c.lease_owner,
            orders.c.attempts,
            orders.c.phone_no,
            orders.c.supplier,
            orders.c.product_id,
            orders.c.face_value,
        )
        .where(orders.c.state.in_(list(READY_TO_SUBMIT)))
        .with_for_update()
    )
    ready = [
        (row, wanted[row.order_no].plugin, wanted[row.order_no].cost)
        for row in _in_chunks(conn, query, orders.c.order_no, wanted)
        if row.lease_owner == wanted[row.order_no].owner
    ]
    starts = create_attempts(conn, ready)
    return [starts[item.order_no][0] if item.order_no in starts else None for item in items]


def create_attempts(conn: Connection, ready: list[tuple]) -> dict[str, tuple[UpstreamOrder, str]]:
    """Attempts for orders known to be ready, from (order row, plugin, cost) triples; the
    rows need order_no, attempts, phone_no, supplier, product_id and face_value. Returns
    each order's (upstream order, plugin)."""
    now = now_ms()
    starts = {row.order_no: (_upstream(row, now), plugin, cost) for row, plugin, cost in ready}
    update_rows(
        conn,
        orders,
        "order_no",
        ("state", "attempts", "updated_at"),
        [(State.SUBMITTING.value, up.attempt, now, no) for no, (up, _, _) in starts.items()],
    )
    insert_rows(
        conn,
        attempts,
        ATTEMPT_COLUMNS,
        [
            (up.reference, no, up.attempt, plugin, State.SUBMITTING.value, 0, now, now, cost, False)
            for no, (up, plugin, cost) in starts.items()
        ],
    )
    return {no: (up, plugin) for no, (up, plugin, _) in starts.items()}


def _upstream(row, now: int) -> UpstreamOrder:
    seq = row.attempts + 1
    return UpstreamOrder(
        reference=attempt_reference(row.order_no, seq),
        order_no=row.order_no,
        attempt=seq,
        phone_no=row.phone_no,
        supplier=row.supplier,
        product_id=row.product_id,
        face_value=row.face_value,
        created_at=now,
    )


# -- applying supplier results --------------------------------------------------------------


class _OrderNow(msgspec.Struct):
    """The columns of an order that a supplier result can change."""

    order_no: str
    app_id: str
    state: State
    fail_code: str | None
    fail_reason: str | None
    finished_at: int | None
    next_run_at: int | None
    lease_owner: str | None
    lease_until: int | None


_ORDER_NOW = tuple(_OrderNow.__struct_fields__)
_ATTEMPT_NOW = ("reference", "order_no", "state", "supplier_ref", "code", "message", "queries")
_ATTEMPT_CHANGES = ("state", "supplier_ref", "code", "message", "queries", "refused", "updated_at")
_ORDER_CHANGES = (*_ORDER_NOW[2:], "updated_at")


def apply_batch(conn: Connection, items: list[ApplyResult]) -> list[Applied | None]:
    """Apply supplier results in order, idempotently and monotonically."""
    now = now_ms()
    attempt_query = select(*(attempts.c[name] for name in _ATTEMPT_NOW)).with_for_update()
    current = {
        row.reference: dict(row._mapping)
        for row in _in_chunks(
            conn, attempt_query, attempts.c.reference, {i.reference for i in items}
        )
    }
    order_query = select(*(orders.c[name] for name in _ORDER_NOW)).with_for_update()
    states = {
        row.order_no: _OrderNow(*row[:2], State(row.state), *row[3:])
        for row in _in_chunks(
            conn, order_query, orders.c.order_no, {a["order_no"] for a in current.values()}
        )
    }
    touched_attempts: set[str] = set()
    touched_orders: dict[str, State] = {}  # order_no -> its state before this batch
    events, answers = [], []
    for item in items:
        attempt = current.get(item.reference)
        if attempt is None:
            answers.append(None)
            continue
        order = states[attempt["order_no"]]
        before = order.state
        answer, event, order_touched = _apply_one(item, attempt, order, now)
        answers.append(answer)
        if attempt.pop("_touched", False):
            touched_attempts.add(item.reference)
        if order_touched:
            touched_orders.setdefault(order.order_no, before)
        if event:
            events.append(event)
    _write(conn, current, touched_attempts, states, touched_orders, now)
    if events:
        insert_rows(conn, order_events, ("order_no", "at", "kind", "actor", "detail"), events)
    finished = [
        states[no]
        for no, before in touched_orders.items()
        if states[no].state in TERMINAL and before not in TERMINAL
    ]
    settle_many(conn, [(o.app_id, o.order_no, o.state is State.SUCCEEDED) for o in finished])
    enqueue_many(conn, [(o.app_id, o.order_no) for o in finished])
    return answers


def _apply_one(item: ApplyResult, attempt: dict, order: _OrderNow, now: int):
    """One result against the attempt and its order, both updated in place.

    Returns the answer, an event row or None, and whether the order row changed.
    """
    result = item.result
    new_state = next_attempt_state(State(attempt["state"]), result.outcome)
    if new_state is None:
        return Applied(order.order_no, order.state, changed=False), None, False
    attempt.update(
        state=new_state,
        supplier_ref=result.supplier_ref or attempt["supplier_ref"],
        code=result.code or attempt["code"],
        message=result.message or attempt["message"],
        queries=attempt["queries"] + (1 if item.counts_as_query else 0),
        refused=new_state is State.FAILED and result.failover,
        _touched=True,
    )
    if order.state in TERMINAL:
        return Applied(order.order_no, order.state, changed=False), None, False
    before = order.state
    values = order_change(new_state, result, item.retry_elsewhere, now) or still_open(
        order.state, new_state, _query_delay(item, order), now
    )
    for name, value in values.items():
        setattr(order, name, State(value) if name == "state" else value)
    order.lease_owner = order.lease_until = None
    event = item.event
    if order.state is State.REVIEW and before is not State.REVIEW:
        # Read by operators (the console's timeline, `topup orders show`): in Chinese.
        last_code = f"，最后一次返回 {result.code}" if result.code else ""
        detail = f"向供应商查询 {attempt['queries']} 次仍无最终结果{last_code}，转人工审核"
        event = event or ("review", SYSTEM, detail)
    row = None if event is None else (order.order_no, now, *event)
    return Applied(order.order_no, order.state, order.state is not before), row, True


def _query_delay(item: ApplyResult, order: _OrderNow) -> int | None:
    """When to query an outcome still open: at once if a callback woke the order while a
    worker held it (OrderStore.wake moved its next run before the lease's end)."""
    woken = (
        order.lease_until is not None
        and order.next_run_at is not None
        and order.next_run_at < order.lease_until
    )
    if woken and item.next_query_delay_ms is not None:
        return 0
    return item.next_query_delay_ms


def _write(conn, current: dict, touched_attempts, states: dict, touched_orders, now: int) -> None:
    update_rows(
        conn,
        attempts,
        "reference",
        _ATTEMPT_CHANGES,
        [
            (*(_plain(current[ref].get(name)) for name in _ATTEMPT_CHANGES[:-1]), now, ref)
            for ref in touched_attempts
        ],
    )
    update_rows(
        conn,
        orders,
        "order_no",
        _ORDER_CHANGES,
        [
            (*(_plain(getattr(states[no], name)) for name in _ORDER_CHANGES[:-1]), now, no)
            for no in touched_orders
        ],
    )


def _plain(value):
    return value.value if isinstance(value, State) else value
