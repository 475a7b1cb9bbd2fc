"""A partner's account as the console shows it: the ledger, newest first, with the
balance and the held amount after each entry."""

from __future__ import annotations

import msgspec
from sqlalchemy import Connection, case, func, select

from core.db import Database, ledger
from core.ledger import Account, Entry, account_of

# How each kind of entry moves the balance (credited - captured - held) and the held sum.
BALANCE_EFFECT = {"credit": 1, "hold": -1, "capture": 0, "release": 1}
HELD_EFFECT = {"credit": 0, "hold": 1, "capture": -1, "release": -1}


class RunningEntry(msgspec.Struct, frozen=True):
    entry: Entry
    balance_after: int
    held_after: int


class LedgerPage(msgspec.Struct, frozen=True):
    account: Account
    entries: list[RunningEntry]
    # Pass as ``before`` for the next (older) page; None on the last page.
    next_before: int | None


def _effect_sum(effects: dict[str, int]):
    return func.coalesce(
        func.sum(
            case(
                *((ledger.c.kind == kind, ledger.c.amount * sign) for kind, sign in effects.items())
            )
        ),
        0,
    )


async def ledger_page(
    db: Database, app_id: str, before: int | None = None, limit: int = 50
) -> LedgerPage | None:
    """A page of the app's ledger, newest first; each entry with what followed it.

    The running figures are computed back from the account, which the ledger adds up to
    (``topup app show`` checks that), so a page deep in the past needs the sum of the
    entries after it, never a walk from the first entry.
    """

    def read(conn: Connection) -> LedgerPage | None:
        account = account_of(conn, app_id)
        if account is None:
            return None
        balance, held = account.balance, account.held
        if before is not None:
            later = conn.execute(
                select(_effect_sum(BALANCE_EFFECT), _effect_sum(HELD_EFFECT)).where(
                    ledger.c.app_id == app_id, ledger.c.id >= before
                )
            ).one()
            balance, held = balance - later[0], held - later[1]
        query = select(ledger).where(ledger.c.app_id == app_id)
        if before is not None:
            query = query.where(ledger.c.id < before)
        rows = conn.execute(query.order_by(ledger.c.id.desc()).limit(limit + 1)).all()
        entries = []
        for row in rows[:limit]:
            entry = Entry(
                row.id, row.kind, row.amount, row.order_no, row.reason, row.actor, row.created_at
            )
            entries.append(RunningEntry(entry, balance, held))
            balance -= BALANCE_EFFECT.get(row.kind, 0) * row.amount
            held -= HELD_EFFECT.get(row.kind, 0) * row.amount
        next_before = entries[-1].entry.id if len(rows) > limit else None
        return LedgerPage(account, entries, next_before)

    return await db.read_aside(read)
