"""bench/sql_floor.py prices the lifecycle's SQL with the statements written out by hand;
this holds that copy to what the lifecycle runs.

The same orders go through both: accepted through the partner API and dispatched by the
app's own dispatcher (the sandbox succeeds at once, the app has a notify URL, as in
``make bench``), and through the script's ``accept`` and ``dispatch``. SQLite's trace of
each connection says which statements ran. Per order, each table must be written the same
number of times the same way, and the same tables read. A lifecycle change that adds,
drops or moves a write fails here until the script follows it, so that its figures keep
pricing the lifecycle that ships.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from bench import sql_floor
from tests.conftest import new_partner
from tests.inprocess import InProcessService
from tests.support import SQLITE, Backend, sandbox_config
from topup.testing import eventually

ORDERS = 64  # one of the script's batches
WRITE = re.compile(r"\s*(INSERT INTO|UPDATE|DELETE FROM)\s+(\w+)")
KEYS_IN = re.compile(r"WHERE [\w.]+ IN \(([^)]*)\)\s*$")
READ = re.compile(r"\s*SELECT\b.*?\bFROM\s+(\w+)", re.S)
# Written per transaction, not per order: the script groups 64 orders in one acceptance,
# the partner API here sends them one by one.
PER_TRANSACTION = {"accounts"}


def shape(statements: list[str]) -> dict[str, object]:
    """Rows written per order, by statement kind and table, and the tables read."""
    writes, reads = Counter(), set()
    for sql in statements:
        if written := WRITE.match(sql):
            writes[(written[1], written[2])] += rows_named(sql)
        elif read := READ.match(sql):
            reads.add(read[1])
    # Rounding drops what is not per order: the worker's one heartbeat row, a wake-up.
    per_order = {
        f"{verb} {table}": 1 if table in PER_TRANSACTION else round(count / ORDERS)
        for (verb, table), count in writes.items()
    }
    return {"writes per order": {k: v for k, v in per_order.items() if v}, "reads": reads}


def rows_named(sql: str) -> int:
    """How many rows a write names: the distinct keys of a ``WHERE key IN (...)`` (rows
    that change alike go in one statement), else one."""
    listed = KEYS_IN.search(sql)
    return len(set(re.findall(r"'[^']*'|[^,\s]+", listed[1]))) if listed else 1


def lifecycle_statements(workdir: Path, backend: Backend) -> list[str]:
    service = InProcessService(workdir, sandbox_config(), backend=backend).start()
    traced: list[str] = []
    try:
        partner = new_partner(service)
        service.cli(
            "app", "set", partner.app_id, "--notify-url", "http://127.0.0.1:9/n", "--allow-private"
        )
        partner.token()  # issued before the trace starts: not part of an order
        services = service.services
        # The writer's one connection (SQLite): every write of the lifecycle goes through it.
        writer = services.db._transactions._connection().connection.dbapi_connection
        service.on_loop(writer.set_trace_callback, traced.append)
        for n in range(ORDERS):
            reply = partner.order(f"floor-{n}", phone=f"1380{n:06d}0")
            assert reply["code"] == "0", reply
        service.on_loop(services.dispatcher.start)
        eventually(
            lambda: (
                service.sql("SELECT count(*) FROM orders WHERE state = 'succeeded'") == [(ORDERS,)]
            ),
            timeout=30,
            what=f"all {ORDERS} orders succeeded",
        )
        service.on_loop(services.dispatcher.stop)
        service.on_loop(writer.set_trace_callback, None)
    finally:
        service.stop()
        service.drop_database()
    return traced


def floor_statements(directory: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setattr(sql_floor, "EXISTING", 10)  # the indexes' depth is not the question
    conn = sql_floor.connect(sql_floor.new_database(directory))
    traced: list[str] = []
    conn.set_trace_callback(traced.append)
    sql_floor.accept(conn, [sql_floor.order_row("F", n, "accepted", 1) for n in range(ORDERS)])
    sql_floor.dispatch(conn, ORDERS)
    conn.close()
    return traced


def test_the_sql_floor_runs_the_statements_the_lifecycle_runs(
    tmp_path: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend is not SQLITE:
        pytest.skip("bench/sql_floor.py measures SQLite")
    (tmp_path / "app").mkdir()
    lifecycle = shape(lifecycle_statements(tmp_path / "app", backend))
    floor = shape(floor_statements(tmp_path, monkeypatch))
    assert floor == lifecycle, "bench/sql_floor.py no longer runs what the lifecycle runs"
