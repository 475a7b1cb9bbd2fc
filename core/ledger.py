"""Partner money: a prepaid account per app, booked on an append-only ledger.

- a credit adds funds (``topup app credit``);
- accepting an order holds its price, in the same transaction that stores the order;
- the order's final state settles the hold once: captured on success, released on failure.

``balance = credited - captured - held``; an order may be held while
``balance + credit_limit >= price``. Ledger rows are never updated or deleted; the
``accounts`` row is their running sum, written in the same transactions, and
``verify`` recomputes it from the ledger.
"""

from __future__ import annotations

import uuid

import msgspec
from sqlalchemy import case, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from core.clock import now_ms
from core.db import Database, accounts, insert_ignoring_conflicts, ledger
from core.errors import ErrorCode, TopupError
from core.money import fen_to_yuan


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


async def open_account(conn: AsyncConnection, db: Database, app_id: str) -> None:
    await conn.execute(
        insert_ignoring_conflicts(db, accounts, ["app_id"]).values(
            app_id=app_id, credited=0, captured=0, held=0, credit_limit=0, updated_at=now_ms()
        )
    )


async def hold(
    conn: AsyncConnection, db: Database, app_id: str, order_no: str, amount: int
) -> None:
    """Hold an order's price, or refuse the order; call inside the transaction storing it."""
    now = now_ms()
    remaining = accounts.c.credited - accounts.c.captured - accounts.c.held
    held = await conn.execute(
        update(accounts)
        .where(accounts.c.app_id == app_id, remaining + accounts.c.credit_limit >= amount)
        .values(held=accounts.c.held + amount, updated_at=now)
    )
    if held.rowcount != 1:
        account = await _account_in(conn, app_id)
        available = 0 if account is None else account.available
        raise TopupError(
            ErrorCode.INSUFFICIENT_BALANCE,
            f"余额不足: 可用 {fen_to_yuan(available)} 元, 本单需 {fen_to_yuan(amount)} 元",
        )
    await _book(conn, db, app_id, "hold", amount, order_no, f"hold:{order_no}", "下单冻结")


async def settle(
    conn: AsyncConnection, db: Database, app_id: str, order_no: str, captured: bool
) -> None:
    """Capture (success) or release (failure) the order's hold, once, in the caller's transaction.

    Orders without a hold (accepted before accounts existed) have nothing to settle.
    """
    amount = (
        await conn.execute(select(ledger.c.amount).where(ledger.c.event_key == f"hold:{order_no}"))
    ).scalar()
    if amount is None:
        return
    kind, reason = ("capture", "充值成功扣款") if captured else ("release", "充值失败解冻退回")
    booked = await _book(conn, db, app_id, kind, amount, order_no, f"settle:{order_no}", reason)
    if not booked:
        return
    await conn.execute(
        update(accounts)
        .where(accounts.c.app_id == app_id)
        .values(
            held=accounts.c.held - amount,
            captured=accounts.c.captured + (amount if captured else 0),
            updated_at=now_ms(),
        )
    )


async def _book(
    conn: AsyncConnection,
    db: Database,
    app_id: str,
    kind: str,
    amount: int,
    order_no: str | None,
    event_key: str,
    reason: str,
    actor: str = "system",
) -> bool:
    """Append one entry; False when its event was booked already."""
    inserted = await conn.execute(
        insert_ignoring_conflicts(db, ledger, ["event_key"]).values(
            app_id=app_id,
            kind=kind,
            amount=amount,
            order_no=order_no,
            event_key=event_key,
            reason=reason,
            actor=actor,
            created_at=now_ms(),
        )
    )
    return inserted.rowcount == 1


async def _account_in(conn: AsyncConnection, app_id: str) -> Account | None:
    row = (await conn.execute(select(accounts).where(accounts.c.app_id == app_id))).first()
    return None if row is None else _account(row)


class Ledger:
    """The operator's and the partner's view of accounts."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def account(self, app_id: str) -> Account | None:
        async with self.db.read() as conn:
            return await _account_in(conn, app_id)

    async def credit(
        self, app_id: str, amount: int, reason: str, actor: str, event_id: str | None = None
    ) -> Account:
        """Add funds. ``event_id`` makes a retried credit book once (default: a new event)."""
        if amount <= 0:
            raise ValueError("a credit must be a positive amount")
        key = f"credit:{event_id or uuid.uuid4().hex}"
        async with self.db.write() as conn:
            account = await _account_in(conn, app_id)
            if account is None:
                raise LookupError(f"no app {app_id!r}")
            if await _book(conn, self.db, app_id, "credit", amount, None, key, reason, actor):
                await conn.execute(
                    update(accounts)
                    .where(accounts.c.app_id == app_id)
                    .values(credited=accounts.c.credited + amount, updated_at=now_ms())
                )
            return await _account_in(conn, app_id)

    async def set_credit_limit(self, app_id: str, limit: int) -> None:
        if limit < 0:
            raise ValueError("a credit limit cannot be negative")
        async with self.db.write() as conn:
            await conn.execute(
                update(accounts)
                .where(accounts.c.app_id == app_id)
                .values(credit_limit=limit, updated_at=now_ms())
            )

    async def entries(self, app_id: str, limit: int = 20) -> list[Entry]:
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(ledger)
                    .where(ledger.c.app_id == app_id)
                    .order_by(ledger.c.id.desc())
                    .limit(limit)
                )
            ).all()
        return [
            Entry(r.id, r.kind, r.amount, r.order_no, r.reason, r.actor, r.created_at) for r in rows
        ]

    async def sums(self, app_id: str) -> LedgerSums:
        """The account recomputed from the ledger alone."""

        def total(kind: str):
            return func.coalesce(func.sum(case((ledger.c.kind == kind, ledger.c.amount))), 0)

        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(
                        total("credit").label("credit"),
                        total("hold").label("hold"),
                        total("capture").label("capture"),
                        total("release").label("release"),
                        (func.count() - func.count(func.distinct(ledger.c.event_key))).label(
                            "duplicates"
                        ),
                    ).where(ledger.c.app_id == app_id)
                )
            ).one()
        held = row.hold - row.capture - row.release
        return LedgerSums(row.credit, row.capture, held, row.duplicates)

    async def verify(self, app_id: str) -> bool:
        account, sums = await self.account(app_id), await self.sums(app_id)
        return account is not None and (
            (account.credited, account.captured, account.held, sums.duplicate_events)
            == (sums.credited, sums.captured, sums.held, 0)
        )
