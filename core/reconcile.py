"""Reconciliation (对账): what partners owe for a day, and whether suppliers agree with us.

Days are Beijing calendar days of acceptance (an order's, or an attempt's).
"""

from __future__ import annotations

import hashlib
from datetime import date, datetime, time, timedelta

import msgspec
from sqlalchemy import Connection, and_, or_, select

from core import audit
from core.clock import BEIJING
from core.db import Database, attempts, orders
from core.orders import OPEN_ATTEMPT, PARTNER_STATUS, PARTNER_STATUS_TEXT, State
from core.suppliers import Outcome, StatementLine, Supplier


def day_bounds(day: date) -> tuple[int, int]:
    """The day in Beijing time, as [start, end) Unix milliseconds."""
    start = datetime.combine(day, time(0), BEIJING)
    return int(start.timestamp() * 1000), int((start + timedelta(days=1)).timestamp() * 1000)


class StatementRow(msgspec.Struct, frozen=True):
    """One order on a partner's daily statement, with our side of the margin."""

    order_no: str
    cstm_order_no: str
    order_id: str
    phone_no: str
    product_id: str
    face_value: int
    price: int
    status: str
    status_text: str
    created_at: int
    finished_at: int | None
    plugin: str | None
    cost: int | None

    @property
    def charged(self) -> int:
        """What the partner pays for it: the price once it succeeded, else nothing."""
        return self.price if self.status == "2" else 0

    @property
    def margin(self) -> int | None:
        if self.status != "2" or self.cost is None:
            return None
        return self.price - self.cost


async def partner_statement(db: Database, day: date, app_id: str | None) -> list[StatementRow]:
    start, end = day_bounds(day)
    succeeded_attempt = and_(
        attempts.c.order_no == orders.c.order_no, attempts.c.state == State.SUCCEEDED
    )
    query = (
        select(orders, attempts.c.plugin, attempts.c.cost)
        .outerjoin(attempts, succeeded_attempt)
        .where(orders.c.created_at >= start, orders.c.created_at < end)
        .order_by(orders.c.app_id, orders.c.created_at, orders.c.order_no)
    )
    if app_id is not None:
        query = query.where(orders.c.app_id == app_id)
    return await db.read_aside(lambda conn: [_statement_row(row) for row in conn.execute(query)])


def _statement_row(row) -> StatementRow:
    status = PARTNER_STATUS[State(row.state)]
    return StatementRow(
        order_no=row.order_no,
        cstm_order_no=row.cstm_order_no,
        order_id=row.order_id,
        phone_no=row.phone_no,
        product_id=row.product_id,
        face_value=row.face_value,
        price=row.price,
        status=status,
        status_text=PARTNER_STATUS_TEXT[status],
        created_at=row.created_at,
        finished_at=row.finished_at,
        plugin=row.plugin,
        cost=row.cost,
    )


# -- against a supplier's statement ------------------------------------------------------------


class OurAttempt(msgspec.Struct, frozen=True):
    reference: str
    order_no: str
    state: State
    cost: int | None
    refused: bool


class Mismatch(msgspec.Struct, frozen=True):
    kind: str
    """MISSING_HERE, MISSING_AT_SUPPLIER, STATUS_MISMATCH, OPEN_HERE, OPEN_AT_SUPPLIER,
    AMOUNT_MISMATCH."""
    reference: str
    ours: str
    theirs: str


class SupplierCheck(msgspec.Struct, frozen=True):
    lines: int
    our_attempts: int
    their_charged: int
    our_expected_cost: int
    mismatches: list[Mismatch]


async def our_attempts(
    db: Database, plugin: str, day: date, references: list[str]
) -> list[OurAttempt]:
    """The plugin's attempts of the day, and any the statement names from another day."""
    start, end = day_bounds(day)
    of_the_day = and_(attempts.c.created_at >= start, attempts.c.created_at < end)
    query = select(attempts).where(
        attempts.c.plugin == plugin, or_(of_the_day, attempts.c.reference.in_(references))
    )
    return await db.read_aside(
        lambda conn: [
            OurAttempt(r.reference, r.order_no, State(r.state), r.cost, r.refused)
            for r in conn.execute(query)
        ]
    )


class StatementUnreadable(ValueError):
    """The file is not a statement the plugin can read; the message says why."""


def read_statement(supplier: Supplier, content: bytes) -> list[StatementLine]:
    """A supplier's daily statement, read by its plugin (``topup reconcile supplier`` and the
    console's 对账 page)."""
    try:
        return supplier.parse_statement(content)
    except (ValueError, KeyError, NotImplementedError, UnicodeDecodeError) as exc:
        raise StatementUnreadable(f"not a {supplier.name} statement: {exc}") from exc


async def check_statement(
    db: Database, plugin: str, day: date, lines: list[StatementLine]
) -> SupplierCheck:
    """Compare a statement's lines with our attempts through ``plugin`` on ``day``."""
    ours = await our_attempts(db, plugin, day, [line.reference for line in lines])
    return compare(lines, ours)


async def record_statement_check(
    db: Database,
    actor: str,
    plugin: str,
    day: date,
    filename: str,
    content: bytes,
    check: SupplierCheck,
) -> None:
    """The audit entry of a statement an operator uploaded and checked."""

    def write(conn: Connection) -> None:
        audit.record(
            conn,
            actor,
            "reconcile.upload",
            plugin,
            f"{plugin} {day} 对账单",
            day=day.isoformat(),
            filename=filename,
            sha256=hashlib.sha256(content).hexdigest(),
            lines=check.lines,
            mismatches=len(check.mismatches),
        )

    await db.write(write)


_OUTCOME_OF = {State.SUCCEEDED: Outcome.SUCCEEDED, State.FAILED: Outcome.FAILED}


def compare(lines: list[StatementLine], ours: list[OurAttempt]) -> SupplierCheck:
    theirs = {line.reference: line for line in lines}
    mine = {attempt.reference: attempt for attempt in ours}
    found = [m for line in lines if (m := _check_line(line, mine.get(line.reference)))]
    found += [
        Mismatch("MISSING_AT_SUPPLIER", a.reference, a.state, "-")
        for a in ours
        if a.reference not in theirs and not a.refused and a.state is not State.SUBMITTING
    ]
    expected = sum(
        a.cost or 0 for a in ours if a.state is State.SUCCEEDED and a.reference in theirs
    )
    return SupplierCheck(
        lines=len(lines),
        our_attempts=len(ours),
        their_charged=sum(line.charged for line in lines),
        our_expected_cost=expected,
        mismatches=found,
    )


def _check_line(line: StatementLine, attempt: OurAttempt | None) -> Mismatch | None:
    theirs = f"{line.outcome} {line.charged}"
    if attempt is None:
        return Mismatch("MISSING_HERE", line.reference, "-", theirs)
    ours = f"{attempt.state} {attempt.cost if attempt.cost is not None else '?'}"
    our_outcome = _OUTCOME_OF.get(attempt.state)
    if our_outcome is None and attempt.state in OPEN_ATTEMPT:
        if line.outcome is not Outcome.PENDING:
            return Mismatch("OPEN_HERE", line.reference, ours, theirs)
        return None
    if line.outcome is Outcome.PENDING:
        return Mismatch("OPEN_AT_SUPPLIER", line.reference, ours, theirs)
    if our_outcome is not line.outcome or attempt.refused:
        return Mismatch("STATUS_MISMATCH", line.reference, ours, theirs)
    charged_otherwise = attempt.cost is not None and attempt.cost != line.charged
    if line.outcome is Outcome.SUCCEEDED and charged_otherwise:
        return Mismatch("AMOUNT_MISMATCH", line.reference, ours, theirs)
    return None
