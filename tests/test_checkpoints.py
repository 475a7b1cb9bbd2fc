"""A service on SQLite copies its write-ahead log into the database file itself, on a
thread of its own (core/checkpoints.py), rather than inside the commit that acknowledges
orders. Left to SQLite, a handful of orders would stay in the log until it held 1,000
pages."""

from __future__ import annotations

import sqlite3

from sqlalchemy.engine import make_url

from tests.conftest import new_partner
from tests.support import ServiceProcess, eventually, fresh_order_no


def in_the_database_file(service: ServiceProcess, cstm_order_nos: list[str]) -> int:
    """How many of the orders the database file holds, its log left unread
    (``immutable``: SQLite reads the file alone)."""
    path = make_url(service.database_url).database
    marks = ",".join("?" * len(cstm_order_nos))
    with sqlite3.connect(f"file:{path}?immutable=1", uri=True) as conn:
        query = f"SELECT count(*) FROM orders WHERE cstm_order_no IN ({marks})"
        return conn.execute(query, cstm_order_nos).fetchone()[0]


def test_acknowledged_orders_reach_the_database_file_while_the_service_runs(
    sqlite_service: ServiceProcess,
) -> None:
    partner = new_partner(sqlite_service)
    numbers = [fresh_order_no() for _ in range(5)]
    for number in numbers:
        assert partner.order(number)["code"] == "0"

    def copied() -> int:
        found = in_the_database_file(sqlite_service, numbers)
        assert found == len(numbers), f"{found} of {len(numbers)} in the file"
        return found

    eventually(copied, timeout=10, what="the orders copied from the log into the file")
    partner.close()
