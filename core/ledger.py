"""Partner money: a prepaid account per app, booked on an append-only ledger.

- a credit adds funds (``topup app credit``);
- accepting an order holds its price, in the same transaction that stores the order
  (core/lifecycle/accept.py);
- the order's final state settles the hold once: captured on success, released on failure.

``balance = credited - captured - held``; an order may be held while
``balance + credit_limit >= price``. Ledger rows are never updated or deleted; the
``accounts`` row is their running sum, written in the same transactions, and
``verify`` recomputes it from the ledger.
"""

from __future__ import annotations

import uuid
from operator import attrgetter

import msgspec
from sqlalchemy import Connection, case, func, select, update

from core.audit import record
from core.clock import now_ms
from core.db import Database, accounts, insert_ignoring_conflicts, ledger
from core.errors import ErrorCode, TopupError
from core.fastsql import add_to_columns, fetch_in, insert_rows
from core.money import fen_to_yuan
from core.writer import Batch, Phase, Tx


class Account(msgspec.Struct, frozen=True):
    app_id: str
    credited: int
    captured: int
    held: int
    credit_limit: int

    @property
    def balance(self) -> int:
        return self.credited - self.captured - self.held

    @property
    def available(self) -> int:
        return self.balance + self.credit_limit


class Entry(msgspec.Struct, frozen=True):
    id: int
    kind: str
    amount: int
    order_no: str | None
    reason: str
    actor: str
    created_at: int


class LedgerSums(msgspec.Struct, frozen=True):
    credited: int
    captured: int
    held: int
    duplicate_events: int


def _account(row) -> Account:
    return Account(row.app_id, row.credited, row.captured, row.held, row.credit_limit)


def open_account(conn: Connection, app_id: str) -> None:
    conn.execute(
        insert_ignoring_conflicts(conn, accounts, ["app_id"]).values(
            app_id=app_id, credited=0, captured=0, held=0, credit_limit=0, updated_at=now_ms()
        )
    )


def insufficient(available: int, amount: int) -> TopupError:
    return TopupError(
        ErrorCode.INSUFFICIENT_BALANCE,
        f"余额不足: 可用 {fen_to_yuan(available)} 元, 本单需 {fen_to_yuan(amount)} 元",
    )


# The holds of orders, by their event key (fetch_in: built once).
HOLDS = select(ledger.c.order_no, ledger.c.amount)


def settle_many(tx: Tx, settlements: list[tuple[str, str, bool]]) -> None:
    """Capture or release the holds of orders that just became final, in their transaction.

    ``settlements``: (app_id, order_no, captured). Each order settles once: the entry's
    key ``settle:<orderNo>`` is unique, so a second settlement fails the transaction
    rather than booking twice. Orders without a hold (accepted before accounts existed)
    have nothing to settle. The accounts rows change in the transaction's accounts pass.
    """
    if not settlements:
        return
    conn = tx.conn
    now = now_ms()
    keys = [f"hold:{order_no}" for _, order_no, _ in settlements]
    holds = dict(fetch_in(conn, HOLDS, ledger.c.event_key, keys))
    entries = []
    for app_id, order_no, success in settlements:
        amount = holds.get(order_no)
        if amount is None:
            continue
        kind, reason = ("capture", "充值成功扣款") if success else ("release", "充值失败解冻退回")
        entries.append(_entry(app_id, kind, amount, order_no, f"settle:{order_no}", reason, now))
        change_account(tx, app_id, held=-amount, captured=amount if success else 0)
    insert_rows(conn, ledger, LEDGER_COLUMNS, [tuple(entry.values()) for entry in entries])


def change_account(tx: Tx, app_id: str, *, held: int = 0, captured: int = 0) -> None:
    """Add to an account's held and captured sums in the transaction's accounts pass."""
    tx.accounts_pass = accounts_pass
    change = tx.account_changes.setdefault(app_id, [0, 0])
    change[0] += held
    change[1] += captured


# The accounts pass of a transaction that accepts orders (fetch_in: built once).
LOCK_ACCOUNTS = (
    select(
        accounts.c.app_id,
        accounts.c.credited,
        accounts.c.captured,
        accounts.c.held,
        accounts.c.credit_limit,
    )
    .order_by(accounts.c.app_id)
    .with_for_update()
)


def lock_accounts(tx: Tx, app_ids: set[str]) -> dict[str, int]:
    """The accounts pass: lock every account the transaction changes, once and in key
    order (see core/writer.py), apply the changes waiting in ``tx``, and return what each
    of ``app_ids`` that exists has available now.

    The first batch of the accounts phase to call this locks every account of the phase
    (``tx.phase_accounts``); a later call finds its rows locked already and waits for
    nobody, so the transaction's locks are taken in key order whichever batch runs first.
    """
    wanted = app_ids | tx.phase_accounts | set(tx.account_changes)
    rows = fetch_in(tx.conn, LOCK_ACCOUNTS, accounts.c.app_id, wanted)
    changes, tx.account_changes = tx.account_changes, {}
    available = {}
    for app_id, credited, captured_sum, held_sum, credit_limit in rows:
        held, captured = changes.get(app_id, (0, 0))
        available[app_id] = credited - (captured_sum + captured) - (held_sum + held) + credit_limit
    apply_account_changes(tx.conn, changes)
    return available


def apply_account_changes(conn: Connection, changes: dict[str, list[int]]) -> None:
    if changes:
        rows = [(held, captured, app) for app, (held, captured) in changes.items()]
        add_to_columns(conn, accounts, "app_id", ("held", "captured"), rows)


def accounts_pass(tx: Tx) -> None:
    """The end of a transaction that changed accounts without accepting orders."""
    changes, tx.account_changes = tx.account_changes, {}
    apply_account_changes(tx.conn, changes)


class Credit(msgspec.Struct, frozen=True):
    app_id: str
    amount: int
    event_key: str  # unique in the ledger: a retried credit books once
    reason: str
    actor: str


def credit_accounts(tx: Tx, items: list[Credit]) -> list[Account | Exception]:
    """Credits, in the accounts pass (an account is locked only there: core/writer.py)."""
    conn = tx.conn
    present = lock_accounts(tx, {item.app_id for item in items})
    answers: list[Account | Exception] = []
    for item in items:
        if item.app_id not in present:
            answers.append(LookupError(f"no app {item.app_id!r}"))
            continue
        if book(
            conn, item.app_id, "credit", item.amount, None, item.event_key, item.reason, item.actor
        ):
            conn.execute(
                update(accounts)
                .where(accounts.c.app_id == item.app_id)
                .values(credited=accounts.c.credited + item.amount, updated_at=now_ms())
            )
            record(conn, item.actor, "app.credit", item.app_id, item.reason, amount_fen=item.amount)
        answers.append(account_of(conn, item.app_id))
    return answers


CREDIT = Batch("credit", Phase.ACCOUNTS, credit_accounts, account=attrgetter("app_id"))


class CreditLimit(msgspec.Struct, frozen=True):
    app_id: str
    limit: int
    actor: str
    reason: str


def set_credit_limits(tx: Tx, items: list[CreditLimit]) -> list[bool]:
    """Credit limits, in the accounts pass; False for an app that does not exist."""
    conn = tx.conn
    present = lock_accounts(tx, {item.app_id for item in items})
    answers = []
    for item in items:
        before = account_of(conn, item.app_id) if item.app_id in present else None
        if before is None:
            answers.append(False)
            continue
        conn.execute(
            update(accounts)
            .where(accounts.c.app_id == item.app_id)
            .values(credit_limit=item.limit, updated_at=now_ms())
        )
        record(
            conn,
            item.actor,
            "app.credit_limit",
            item.app_id,
            item.reason,
            before_fen=before.credit_limit,
            after_fen=item.limit,
        )
        answers.append(True)
    return answers


CREDIT_LIMIT = Batch(
    "credit limit", Phase.ACCOUNTS, set_credit_limits, account=attrgetter("app_id")
)


# A ledger entry's columns, in the order its rows are written (every INSERT into ledger).
LEDGER_COLUMNS = (
    "app_id",
    "kind",
    "amount",
    "order_no",
    "event_key",
    "reason",
    "actor",
    "created_at",
)


def _entry(
    app_id: str,
    kind: str,
    amount: int,
    order_no: str | None,
    event_key: str,
    reason: str,
    now: int,
    actor: str = "system",
) -> dict:
    values = (app_id, kind, amount, order_no, event_key, reason, actor, now)
    return dict(zip(LEDGER_COLUMNS, values, strict=True))


def book(
    conn: Connection,
    app_id: str,
    kind: str,
    amount: int,
    order_no: str | None,
    event_key: str,
    reason: str,
    actor: str = "system",
) -> bool:
    """Append one entry; False when its event was booked already."""
    entry = _entry(app_id, kind, amount, order_no, event_key, reason, now_ms(), actor)
    inserted = conn.execute(insert_ignoring_conflicts(conn, ledger, ["event_key"]).values(entry))
    return inserted.rowcount == 1


def account_of(conn: Connection, app_id: str) -> Account | None:
    row = conn.execute(select(accounts).where(accounts.c.app_id == app_id)).first()
    return None if row is None else _account(row)


class Ledger:
    """The operator's and the partner's view of accounts."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def account(self, app_id: str) -> Account | None:
        return await self.db.read(lambda conn: account_of(conn, app_id))

    async def credit(
        self, app_id: str, amount: int, reason: str, actor: str, event_id: str | None = None
    ) -> Account:
        """Add funds. ``event_id`` makes a retried credit book once (default: a new event)."""
        if amount <= 0:
            raise ValueError("a credit must be a positive amount")
        key = f"credit:{event_id or uuid.uuid4().hex}"
        return await self.db.batched(CREDIT, Credit(app_id, amount, key, reason, actor))

    async def set_credit_limit(
        self, app_id: str, limit: int, *, actor: str, reason: str = ""
    ) -> bool:
        """Set how far below zero the app's balance may go; False if there is no such app."""
        if limit < 0:
            raise ValueError("a credit limit cannot be negative")
        return await self.db.batched(CREDIT_LIMIT, CreditLimit(app_id, limit, actor, reason))

    async def entries(self, app_id: str, limit: int = 20) -> list[Entry]:
        def latest(conn: Connection) -> list[Entry]:
            rows = conn.execute(
                select(ledger)
                .where(ledger.c.app_id == app_id)
                .order_by(ledger.c.id.desc())
                .limit(limit)
            )
            return [
                Entry(r.id, r.kind, r.amount, r.order_no, r.reason, r.actor, r.created_at)
                for r in rows
            ]

        return await self.db.read(latest)

    async def sums(self, app_id: str) -> LedgerSums:
        """The account recomputed from the ledger alone."""

        def total(kind: str):
            return func.coalesce(func.sum(case((ledger.c.kind == kind, ledger.c.amount))), 0)

        def sums(conn: Connection) -> LedgerSums:
            row = conn.execute(
                select(
                    total("credit").label("credit"),
                    total("hold").label("hold"),
                    total("capture").label("capture"),
                    total("release").label("release"),
                    (func.count() - func.count(func.distinct(ledger.c.event_key))).label(
                        "duplicates"
                    ),
                ).where(ledger.c.app_id == app_id)
            ).one()
            held = row.hold - row.capture - row.release
            return LedgerSums(row.credit, row.capture, held, row.duplicates)

        return await self.db.read(sums)

    async def verify(self, app_id: str) -> bool:
        account, sums = await self.account(app_id), await self.sums(app_id)
        return account is not None and (
            (account.credited, account.captured, account.held, sums.duplicate_events)
            == (sums.credited, sums.captured, sums.held, 0)
        )
