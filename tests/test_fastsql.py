"""core/fastsql.py's ``update_alike``: the lifecycle writes the orders of a claim, or of a
batch of results, that change alike in one UPDATE. Each named row must get exactly the
values, NULLs included, and no other row may change. Run on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import Connection, insert, select

from core.db import Database, orders
from core.fastsql import IN_CHUNK, update_alike
from tests.order_rows import order_row

CHANGED = ("lease_until", "state", "fail_code", "updated_at")  # not in table order


def _number(n: int) -> str:
    return f"TP{n:023d}"


async def _seed(db: Database, count: int) -> None:
    rows = [
        order_row(_number(n), 1, state="pending", fail_code="X", lease_until=50)
        for n in range(count)
    ]
    await db.write(lambda conn: conn.execute(insert(orders), rows))


def _read(conn: Connection) -> dict[str, tuple]:
    query = select(orders.c.order_no, *(orders.c[name] for name in CHANGED))
    return {row[0]: tuple(row[1:]) for row in conn.execute(query)}


async def test_the_named_rows_get_the_values_and_the_rest_keep_theirs(db: Database) -> None:
    await _seed(db, 10)
    named = [_number(n) for n in (7, 2, 5)]  # out of order: the helper sorts them

    await db.write(
        lambda conn: update_alike(
            conn, orders, "order_no", CHANGED, (None, "failed", None, 9), named
        )
    )

    rows = await db.read(_read)
    for n in range(10):
        expected = (None, "failed", None, 9) if _number(n) in named else (50, "pending", "X", 1)
        assert rows[_number(n)] == expected, n


async def test_more_rows_than_one_statement_takes_are_all_written(db: Database) -> None:
    count = IN_CHUNK + 3
    await _seed(db, count)

    await db.write(
        lambda conn: update_alike(
            conn,
            orders,
            "order_no",
            CHANGED,
            (70, "succeeded", "OK", 8),
            [_number(n) for n in range(count)],
        )
    )

    rows = await db.read(_read)
    assert set(rows.values()) == {(70, "succeeded", "OK", 8)}
    assert len(rows) == count
