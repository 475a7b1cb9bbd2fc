"""The group writer's promise (core/writer.py): jobs queued together share one transaction,
and a job or batch item that fails rolls back alone; its caller gets the exception and
the rest commit. Run on SQLite (savepoints straight through the driver) and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3

import pytest
from sqlalchemy import Connection, select

from core.db import Database, audit_log
from core.fastsql import insert_rows
from core.writer import Batch, Phase, Tx

COLUMNS = ("at", "actor", "action", "target", "reason", "detail")


def _write(conn: Connection, target: str) -> None:
    insert_rows(conn, audit_log, COLUMNS, [(0, "test", "write", target, "", "{}")])


def _written(conn: Connection) -> list[str]:
    return sorted(conn.execute(select(audit_log.c.target)).scalars())


async def test_a_failing_job_rolls_back_alone_and_its_caller_hears_why(db: Database) -> None:
    def failing(conn: Connection) -> None:
        _write(conn, "b")
        raise ValueError("job b failed after writing")

    answers = await asyncio.gather(
        db.write(lambda conn: _write(conn, "a")),
        db.write(failing),
        db.write(lambda conn: _write(conn, "c")),
        return_exceptions=True,
    )

    assert answers[0] is None and answers[2] is None
    assert isinstance(answers[1], ValueError)
    assert await db.read(_written) == ["a", "c"]


def _write_all(tx: Tx, targets: list[str]) -> list[str]:
    for target in targets:
        _write(tx.conn, target)
        if target.startswith("bad"):
            raise LookupError(target)
    return [f"wrote {target}" for target in targets]


WRITE_ALL = Batch("test writes", Phase.JOBS, _write_all)


async def test_a_failing_batch_is_retried_item_by_item(db: Database) -> None:
    answers = await asyncio.gather(
        *(db.batched(WRITE_ALL, target) for target in ("x", "bad-1", "y", "bad-2", "z")),
        return_exceptions=True,
    )

    assert answers[0::2] == ["wrote x", "wrote y", "wrote z"]
    assert [str(answer) for answer in answers[1::2]] == ["bad-1", "bad-2"]
    assert all(isinstance(answer, LookupError) for answer in answers[1::2])
    # The batch's first try wrote x, bad-1 before failing: all of it was rolled back.
    assert await db.read(_written) == ["x", "y", "z"]


# Runs before single jobs in a group transaction (core/writer.py's phases).
WRITE_FIRST = Batch("test writes first", Phase.ORDERS, _write_all)


async def test_what_a_transaction_committed_survives_a_later_failure_in_it(db: Database) -> None:
    """A batch's savepoint, once released, is part of the transaction: a later job's
    rollback to its own savepoint leaves it, and the transaction commits both the batch
    before the failure and the one after."""

    def failing(conn: Connection) -> None:
        _write(conn, "second")
        raise RuntimeError("second failed")

    answers = await asyncio.gather(
        db.batched(WRITE_FIRST, "first"),
        db.write(failing),
        db.batched(WRITE_ALL, "third"),
        return_exceptions=True,
    )

    assert answers[0] == "wrote first" and answers[2] == "wrote third"
    assert isinstance(answers[1], RuntimeError)
    assert await db.read(_written) == ["first", "third"]


async def test_a_write_waits_for_another_connections_write_lock_then_commits(
    db: Database,
) -> None:
    """SQLite: while another process holds the write lock (a `topup` command, a second
    instance), the writer waits for it without blocking the event loop, which serves on
    meanwhile."""
    if not db.is_sqlite:
        pytest.skip("PostgreSQL has no database-wide write lock")
    other = sqlite3.connect(db.url.database, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        waiting = asyncio.ensure_future(db.write(lambda conn: _write(conn, "after the lock")))
        # The loop is free while the writer waits: reads answer, the write does not. Kept
        # as sleeps: a write held up leaves no event to await, and five reads over a quarter
        # of a second show the loop serving while it is held.
        for _ in range(5):
            await asyncio.sleep(0.05)
            assert await db.read(_written) == []
        assert not waiting.done()
        other.execute("ROLLBACK")
        await asyncio.wait_for(waiting, timeout=5)
    finally:
        other.close()
    assert await db.read(_written) == ["after the lock"]
    # With the lock free again, writes go on as before.
    await db.write(lambda conn: _write(conn, "free"))
    assert await db.read(_written) == ["after the lock", "free"]


def _mark(tx: Tx, items: list[str]) -> list[str]:
    # One call per group transaction: what each transaction held, in order.
    TRANSACTIONS.append(items)
    return items


TRANSACTIONS: list[list[str]] = []
MARK = Batch("test marks", Phase.JOBS, _mark)


async def test_a_caller_answered_by_a_commit_gets_into_the_next_transaction(
    db: Database,
) -> None:
    """A caller that writes again as soon as its write committed (the dispatcher's claims)
    has that write in the very next group transaction, even while others keep the writer
    busy; taken straight after the commit, that transaction left it for the one after,
    and the dispatcher claimed in every other transaction only."""
    TRANSACTIONS.clear()
    busy = True
    others: list[asyncio.Future] = []

    async def others_writing() -> None:
        # Something new queued at every turn of the event loop, commits included.
        while busy:
            others.append(asyncio.ensure_future(db.batched(MARK, "other")))
            await asyncio.sleep(0)

    writing = asyncio.ensure_future(others_writing())
    try:
        for n in range(10):
            await db.batched(MARK, f"again-{n}")
    finally:
        busy = False
        await writing
        await asyncio.gather(*others)

    holding = [i for i, items in enumerate(TRANSACTIONS) for item in items if item != "other"]
    assert len(holding) == 10
    assert [later - earlier for earlier, later in itertools.pairwise(holding)] == [1] * 9
