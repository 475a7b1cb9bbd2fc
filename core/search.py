"""The console's order search and order detail, fast on millions of orders.

Order numbers are time-ordered (core/ids.py), so "newest first" is ``order_no DESC`` and
a time range is an ``order_no`` range. Every search is driven by one index that yields
rows already in that order, chosen from the filters (``plan``):

- ``order_no`` (the primary key) or ``cstm_order_no``: a point lookup, a handful of rows;
- ``phone_no``, ``state``, ``app_id``: their ``(column, order_no)`` indexes;
- otherwise the primary key, newest first, within the time range if one is given.

The other filters are checked on the rows the driving index yields (carrier, and
plugin through the attempts' ``(order_no, seq)`` index). If they are rare, that walk
could cover the whole table, so it is bounded: a page looks at no more than
``SCAN_LIMIT`` rows of its driving index. A page that stops there says so
(``SearchPage.limited``) and how far back it searched; its cursor continues from that
point, so "next page" searches further back, and a narrower filter (a time range, a
partner) gets there faster.

Pages are keyset pages: the cursor is the last order number shown (or the last one
searched), the next page the rows below it. There is no page count and no offset.
"""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy import Connection, Select, select

from core.db import Database, attempts, ledger, notifications, order_events, orders
from core.ids import order_no_floor, taken_at
from core.ledger import Entry
from core.orders import (
    SYSTEM,
    TERMINAL,
    AttemptRecord,
    OrderRecord,
    State,
    attempt_from_row,
    order_from_row,
)

PAGE_SIZE = 50
# Rows of the driving index one page may look at: bounds the time of a search whose
# filters match rarely (measured in BENCHMARKS.md, "Console at 1M orders").
SCAN_LIMIT = 5_000


class OrderFilter(msgspec.Struct, frozen=True, kw_only=True):
    """What the operator searches for; every field given must match (exact values)."""

    order_no: str | None = None
    cstm_order_no: str | None = None
    phone_no: str | None = None
    app_id: str | None = None
    # The order's Supplier (the carrier: 中国移动, ...), orders.carrier.
    carrier: str | None = None
    # Any attempt of the order went to this plugin.
    plugin: str | None = None
    state: str | None = None
    # Accepted at or after ``since`` and before ``until`` (Unix ms).
    since: int | None = None
    until: int | None = None


class OrderSummary(msgspec.Struct, frozen=True):
    """One row of the results table."""

    order_no: str
    cstm_order_no: str
    app_id: str
    company: str
    carrier: str
    phone_no: str
    product_id: str
    face_value: int
    price: int
    state: str
    attempts: int
    fail_code: str | None
    fail_reason: str | None
    created_at: int
    finished_at: int | None
    # The plugins the order's attempts went to, in attempt order.
    plugins: list[str]


class SearchPage(msgspec.Struct, frozen=True):
    orders: list[OrderSummary]
    # The cursor of the next page (pass as ``after``); None: nothing older matches.
    next_after: str | None
    # The index that drove the search: order_no, cstm_order_no, phone_no, state, app_id,
    # or time (the primary key, newest first).
    driver: str
    # True when the page stopped after ``scan_limit`` rows of the driving index before
    # it was full: older matches may exist; ``searched_back_to`` (Unix ms) says how far
    # the page looked.
    limited: bool
    searched_back_to: int | None
    scan_limit: int


class TimelineEntry(msgspec.Struct, frozen=True):
    """One fact in an order's life, and who caused it.

    ``kind``: accepted, hold, attempt_started, attempt_refused, attempt_succeeded,
    attempt_failed, review, resolved, requeried, resent, succeeded, failed, capture, release,
    notify_queued, notify_delivered.
    ``actor_kind``: system, partner, supplier or operator; ``actor`` names them (the
    app, the plugin, the operator).
    """

    at: int
    kind: str
    actor_kind: str
    actor: str
    detail: str = ""
    seq: int | None = None


class NotificationRecord(msgspec.Struct, frozen=True):
    id: int
    url: str
    attempts: int
    next_attempt_at: int | None
    delivered_at: int | None
    last_error: str | None
    created_at: int
    # delivered, waiting, or given_up (no further attempt is planned).
    status: str


class OrderDetail(msgspec.Struct, frozen=True):
    order: OrderRecord
    attempts: list[AttemptRecord]
    timeline: list[TimelineEntry]
    ledger: list[Entry]
    notifications: list[NotificationRecord]


# -- search -----------------------------------------------------------------------------


class _Plan(msgspec.Struct, frozen=True):
    driver: str
    # The SQLite index that serves the driver (None: the primary key or a point lookup).
    index: str | None
    conditions: list[Any]
    residual: list[Any]
    bounded: bool


def plan(wanted: OrderFilter) -> _Plan:
    """The driving index for these filters, and the conditions it leaves to check."""
    c = orders.c
    given = {
        "order_no": (wanted.order_no, c.order_no == wanted.order_no),
        "cstm_order_no": (wanted.cstm_order_no, c.cstm_order_no == wanted.cstm_order_no),
        "phone_no": (wanted.phone_no, c.phone_no == wanted.phone_no),
        "state": (wanted.state, c.state == wanted.state),
        "app_id": (wanted.app_id, c.app_id == wanted.app_id),
        "carrier": (wanted.carrier, c.carrier == wanted.carrier),
    }
    given = {name: condition for name, (value, condition) in given.items() if value}
    if wanted.plugin:
        # Checked per order through the attempts' (order_no, seq) index. OFFSET 0 keeps
        # PostgreSQL from turning the EXISTS into a join that starts from the attempts:
        # for a plugin it expects few rows of, that is a scan of the whole attempts table.
        given["plugin"] = (
            select(attempts.c.order_no)
            .where(attempts.c.order_no == c.order_no, attempts.c.plugin == wanted.plugin)
            .offset(0)
            .exists()
        )
    driver = _driver(wanted, given)
    conditions = [given.pop(driver)] if driver in given else []
    if wanted.since is not None:
        conditions.append(c.order_no >= order_no_floor(wanted.since))
    if wanted.until is not None:
        conditions.append(c.order_no < order_no_floor(wanted.until))
    index = _INDEXES.get(driver)
    # A point lookup yields a handful of rows: nothing to bound.
    bounded = bool(given) and driver not in ("order_no", "cstm_order_no")
    return _Plan(driver, index, conditions, list(given.values()), bounded)


_INDEXES = {
    "cstm_order_no": "ix_orders_cstm_order_no",
    "phone_no": "ix_orders_phone_no",
    "state": "ix_orders_state",
    "app_id": "ix_orders_app_id",
}


def _driver(wanted: OrderFilter, given: dict[str, Any]) -> str:
    for name in ("order_no", "cstm_order_no", "phone_no"):
        if name in given:
            return name
    # Most orders succeed: an app narrows more than "succeeded" does; any other state
    # (failed, review, in flight) is rarer than an app's share.
    if "state" in given and (wanted.state != State.SUCCEEDED or "app_id" not in given):
        return "state"
    if "app_id" in given:
        return "app_id"
    return "time"


def _driven(statement: Select, driving: _Plan, conn: Connection) -> Select:
    """``statement`` told to use the driving index on SQLite, which keeps no statistics
    to choose by (PostgreSQL's planner has them: VACUUM ANALYZE keeps them current)."""
    if driving.index and conn.dialect.name == "sqlite":
        return statement.with_hint(orders, f"INDEXED BY {driving.index}", "sqlite")
    return statement


def search_orders(
    conn: Connection,
    wanted: OrderFilter,
    after: str | None = None,
    page_size: int = PAGE_SIZE,
    scan_limit: int = SCAN_LIMIT,
) -> SearchPage:
    """One page of matching orders, newest first, older than the cursor ``after``."""
    driving = plan(wanted)
    conditions = list(driving.conditions)
    if after:
        conditions.append(orders.c.order_no < after)
    floor = None
    if driving.bounded:
        floor = _scan_floor(conn, driving, conditions, scan_limit)
        if floor is not None:
            conditions.append(orders.c.order_no >= floor)
    query = (
        select(orders)
        .where(*conditions, *driving.residual)
        .order_by(orders.c.order_no.desc())
        .limit(page_size + 1)
    )
    rows = conn.execute(_driven(query, driving, conn)).all()
    found = rows[:page_size]
    plugins = _plugins_of(conn, [row.order_no for row in found])
    page = [_summary(row, plugins.get(row.order_no, [])) for row in found]
    if len(rows) > page_size:
        return SearchPage(page, found[-1].order_no, driving.driver, False, None, scan_limit)
    if floor is not None:
        return SearchPage(page, floor, driving.driver, True, taken_at(floor), scan_limit)
    return SearchPage(page, None, driving.driver, False, None, scan_limit)


def _scan_floor(conn: Connection, driving: _Plan, conditions: list, scan_limit: int) -> str | None:
    """The oldest order number among the next ``scan_limit`` rows of the driving index
    (read from the index alone); None when fewer rows are left."""
    query = (
        select(orders.c.order_no)
        .where(*conditions)
        .order_by(orders.c.order_no.desc())
        .offset(scan_limit - 1)
        .limit(1)
    )
    return conn.execute(_driven(query, driving, conn)).scalar()


def _plugins_of(conn: Connection, order_nos: list[str]) -> dict[str, list[str]]:
    if not order_nos:
        return {}
    found: dict[str, list[str]] = {}
    rows = conn.execute(
        select(attempts.c.order_no, attempts.c.plugin)
        .where(attempts.c.order_no.in_(order_nos))
        .order_by(attempts.c.order_no, attempts.c.seq)
    )
    for order_no, plugin in rows:
        found.setdefault(order_no, []).append(plugin)
    return found


def _summary(row: Any, plugins: list[str]) -> OrderSummary:
    return OrderSummary(
        order_no=row.order_no,
        cstm_order_no=row.cstm_order_no,
        app_id=row.app_id,
        company=row.company,
        carrier=row.carrier,
        phone_no=row.phone_no,
        product_id=row.product_id,
        face_value=row.face_value,
        price=row.price,
        state=row.state,
        attempts=row.attempts,
        fail_code=row.fail_code,
        fail_reason=row.fail_reason,
        created_at=row.created_at,
        finished_at=row.finished_at,
        plugins=plugins,
    )


# -- one order --------------------------------------------------------------------------


def order_detail(conn: Connection, order_no: str) -> OrderDetail | None:
    """Everything known about one order; None if there is no such order."""
    row = conn.execute(select(orders).where(orders.c.order_no == order_no)).first()
    if row is None:
        return None
    order = order_from_row(row)
    tries = [
        attempt_from_row(r)
        for r in conn.execute(
            select(attempts).where(attempts.c.order_no == order_no).order_by(attempts.c.seq)
        )
    ]
    events = conn.execute(
        select(order_events).where(order_events.c.order_no == order_no).order_by(order_events.c.id)
    ).all()
    # The ledger has no index on order_no: an order's entries are its hold and its
    # settlement, found by their unique event keys (core/ledger.py).
    entries = [
        Entry(r.id, r.kind, r.amount, r.order_no, r.reason, r.actor, r.created_at)
        for r in conn.execute(
            select(ledger)
            .where(ledger.c.event_key.in_([f"hold:{order_no}", f"settle:{order_no}"]))
            .order_by(ledger.c.id)
        )
    ]
    notes = [
        _notification(r)
        for r in conn.execute(select(notifications).where(notifications.c.order_no == order_no))
    ]
    timeline = _timeline(order, tries, events, entries, notes)
    return OrderDetail(order, tries, timeline, entries, notes)


def _notification(row: Any) -> NotificationRecord:
    if row.delivered_at is not None:
        status = "delivered"
    elif row.next_attempt_at is not None:
        status = "waiting"
    else:
        status = "given_up"
    return NotificationRecord(
        row.id,
        row.url,
        row.attempts,
        row.next_attempt_at,
        row.delivered_at,
        row.last_error,
        row.created_at,
        status,
    )


# Facts recorded in the same millisecond read in the order they happen: an attempt's
# facts by its number; events (review, resolution) belong to the last attempt.
_RANK = {
    kind: rank
    for rank, kind in enumerate(
        (
            "accepted",
            "hold",
            "attempt_started",
            "review",
            "requeried",
            "resent",
            "attempt_refused",
            "attempt_succeeded",
            "attempt_failed",
            "resolved",
            "succeeded",
            "failed",
            "capture",
            "release",
            "notify_queued",
            "notify_delivered",
        )
    )
}


def _timeline(
    order: OrderRecord,
    tries: list[AttemptRecord],
    events: list[Any],
    entries: list[Entry],
    notes: list[NotificationRecord],
) -> list[TimelineEntry]:
    """The order's recorded events, and the facts its rows' timestamps tell."""
    line = [
        TimelineEntry(order.created_at, "accepted", "partner", order.app_id, order.cstm_order_no)
    ]
    resolver = next((e.actor for e in reversed(events) if e.kind == "resolved"), None)
    for attempt in tries:
        line.append(
            TimelineEntry(
                attempt.created_at,
                "attempt_started",
                "system",
                SYSTEM,
                attempt.plugin,
                attempt.seq,
            )
        )
        if attempt.state in TERMINAL:
            line.append(_answer(attempt, resolver))
    for event in events:
        kind = "system" if event.actor == SYSTEM else "operator"
        line.append(TimelineEntry(event.at, event.kind, kind, event.actor, event.detail))
    if order.state in TERMINAL and order.finished_at is not None:
        line.append(_final(order, tries, resolver))
    for entry in entries:
        line.append(
            TimelineEntry(entry.created_at, entry.kind, "system", entry.actor, str(entry.amount))
        )
    for note in notes:
        line.append(TimelineEntry(note.created_at, "notify_queued", "system", SYSTEM, note.url))
        if note.delivered_at is not None:
            line.append(
                TimelineEntry(note.delivered_at, "notify_delivered", "partner", order.app_id)
            )
    last = len(tries)

    def order(entry: TimelineEntry) -> tuple[int, int, int]:
        seq = entry.seq if entry.seq is not None else 0 if entry.kind in _BEFORE else last
        return entry.at, seq, _RANK.get(entry.kind, len(_RANK))

    return sorted(line, key=order)


_BEFORE = frozenset({"accepted", "hold"})


def _answer(attempt: AttemptRecord, resolver: str | None) -> TimelineEntry:
    """A settled attempt: the supplier's answer, or the operator's verdict (code MANUAL)."""
    kind = "attempt_refused" if attempt.refused else f"attempt_{attempt.state}"
    detail = " ".join(part for part in (attempt.code, attempt.message) if part)
    if attempt.code == "MANUAL" and resolver is not None:
        return TimelineEntry(attempt.updated_at, kind, "operator", resolver, detail, attempt.seq)
    return TimelineEntry(attempt.updated_at, kind, "supplier", attempt.plugin, detail, attempt.seq)


def _final(order: OrderRecord, tries: list[AttemptRecord], resolver: str | None) -> TimelineEntry:
    detail = " ".join(part for part in (order.fail_code, order.fail_reason) if part)
    at, state = order.finished_at or order.updated_at, str(order.state)
    if resolver is not None:
        return TimelineEntry(at, state, "operator", resolver, detail)
    if not tries or tries[-1].state not in TERMINAL:
        return TimelineEntry(at, state, "system", SYSTEM, detail)  # no supplier could take it
    return TimelineEntry(at, state, "supplier", tries[-1].plugin, detail)


# -- the service's handle -----------------------------------------------------------------


class OrderSearch:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def search(self, wanted: OrderFilter, after: str | None = None) -> SearchPage:
        return await self.db.read_aside(lambda conn: search_orders(conn, wanted, after))

    async def detail(self, order_no: str) -> OrderDetail | None:
        return await self.db.read_aside(lambda conn: order_detail(conn, order_no))
