"""What the accept path's and the dispatcher's SQL cost with no Python around it.

bench/lifecycle_cost.py measures each path whole, in-process. This script runs the
statements each path runs per order, in the same shape (batches of 64 orders, one
``executemany`` per statement, the same indexes, SQLite with the service's pragmas), from
raw ``sqlite3`` with rows built beforehand, and reports CPU per order. What is left of a
path's cost is its Python: parsing, checks, the lifecycle's rules, the tasks and futures
of the event loop.

Per order, the accept path: the idempotency read, the account's read, the order row, the
hold, the account's update. The dispatcher: the claim (the due orders read whole, the
order written with its lease and next state, the attempt inserted), then the result (the
order and its attempts read again under the lock, both written, the hold read, the
capture inserted, the account updated, the app's notify URL read, the outbox row
inserted). The table holds ``EXISTING`` finished orders first, so that the indexes are
of a realistic depth.

    .venv/bin/python bench/sql_floor.py
"""

from __future__ import annotations

import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine  # noqa: E402

from core.db import _PRAGMAS, metadata  # noqa: E402
from core.orders import ORDER_TABLE_COLUMNS  # noqa: E402

EXISTING = 200_000
ORDERS = 20_000  # per path and repeat
BATCH = 64  # the dispatcher's claim_batch; acceptance's groups are of the same order
REPEATS = 3
APP = "bench-app"
NOTIFY_URL = "http://127.0.0.1:9/notify"
OPEN = ("accepted", "submitting", "pending", "unknown", "retrying")
ATTEMPT_COLUMNS = (
    "reference, order_no, seq, plugin, state, supplier_ref, code, message, queries, "
    "created_at, updated_at, cost, refused, resent"
)


def placeholders(count: int) -> str:
    return ",".join("?" * count)


def order_row(prefix: str, number: int, state: str, next_run_at: int | None) -> tuple:
    values = {
        "order_no": f"{prefix}{number:012d}",
        "order_id": f"I{prefix}{number:012d}",
        "app_id": APP,
        "cstm_order_no": f"{prefix}-c{number}",
        "cstm_order_name": "bench",
        "company": "bench company",
        "supplier": "中国移动",
        "phone_no": f"1380{number % 10_000_000:07d}",
        "product_id": "YD10",
        "face_value": 1000,
        "price": 990,
        "state": state,
        "attempts": 0 if state == "accepted" else 1,
        "fail_code": None,
        "fail_reason": None,
        "created_at": number,
        "updated_at": number,
        "finished_at": None if state == "accepted" else number,
        "next_run_at": next_run_at,
        "lease_owner": None,
        "lease_until": None,
        "segment_carrier": None,
    }
    return tuple(values[name] for name in ORDER_TABLE_COLUMNS)


INSERT_ORDER = (
    f"INSERT INTO orders ({', '.join(ORDER_TABLE_COLUMNS)}) "
    f"VALUES ({placeholders(len(ORDER_TABLE_COLUMNS))})"
)


def new_database(directory: Path) -> sqlite3.Connection:
    path = directory / "floor.db"
    engine = create_engine(f"sqlite:///{path}")
    metadata.create_all(engine)
    engine.dispose()
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in _PRAGMAS:
        conn.execute(f"PRAGMA {pragma}")
    conn.execute(
        "INSERT INTO apps (app_id, company, secret, sign_type, notify_url, created_at) "
        "VALUES (?, 'bench company', 'sealed', 'MD5', ?, 0)",
        (APP, NOTIFY_URL),
    )
    conn.execute(
        "INSERT INTO accounts (app_id, credited, updated_at) VALUES (?, ?, 0)", (APP, 10**15)
    )
    finished = [order_row("S", n, "succeeded", None) for n in range(EXISTING)]
    conn.execute("BEGIN")
    conn.executemany(INSERT_ORDER, finished)
    conn.execute("COMMIT")
    return conn


def accept(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    cstm_at = ORDER_TABLE_COLUMNS.index("cstm_order_no")
    for start in range(0, len(rows), BATCH):
        batch = rows[start : start + BATCH]
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            f"SELECT {', '.join(ORDER_TABLE_COLUMNS)} FROM orders "
            f"WHERE app_id = ? AND cstm_order_no IN ({placeholders(len(batch))})",
            (APP, *(row[cstm_at] for row in batch)),
        ).fetchall()
        conn.execute(
            "SELECT app_id, credited, captured, held, credit_limit FROM accounts WHERE app_id = ?",
            (APP,),
        ).fetchall()
        conn.executemany(INSERT_ORDER, batch)
        conn.executemany(
            "INSERT INTO ledger (app_id, kind, amount, order_no, event_key, reason, actor, "
            "created_at) VALUES (?, 'hold', ?, ?, ?, '', 'system', 1)",
            [(APP, -990, row[0], f"hold:{row[0]}") for row in batch],
        )
        conn.execute(
            "UPDATE accounts SET held = held + ?, updated_at = 1 WHERE app_id = ?",
            (990 * len(batch), APP),
        )
        conn.execute("COMMIT")


def dispatch(conn: sqlite3.Connection, count: int) -> None:
    columns = ", ".join(ORDER_TABLE_COLUMNS)
    for _ in range(0, count, BATCH):
        conn.execute("BEGIN IMMEDIATE")
        due = conn.execute(
            f"SELECT {columns} FROM orders WHERE next_run_at <= ? ORDER BY next_run_at LIMIT ?",
            (10**13, BATCH),
        ).fetchall()
        numbers = [row[0] for row in due]
        conn.executemany(
            "UPDATE orders SET state = ?, attempts = ?, updated_at = ?, lease_owner = ?, "
            "lease_until = ?, next_run_at = ? WHERE order_no = ?",
            [("submitting", 1, 2, "bench-worker", 10**14, 10**14, no) for no in numbers],
        )
        conn.executemany(
            f"INSERT INTO attempts ({ATTEMPT_COLUMNS}) "
            "VALUES (?, ?, 1, 'sandbox', 'submitting', NULL, NULL, NULL, 0, 2, 2, 990, 0, 0)",
            [(f"{no}A1", no) for no in numbers],
        )
        conn.execute("COMMIT")
        apply_results(conn, numbers)


def apply_results(conn: sqlite3.Connection, numbers: list[str]) -> None:
    listed = placeholders(len(numbers))
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        f"SELECT {', '.join(ORDER_TABLE_COLUMNS)} FROM orders WHERE order_no IN ({listed})",
        numbers,
    ).fetchall()
    conn.execute(f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE order_no IN ({listed})", numbers)
    conn.executemany(
        "UPDATE orders SET state = ?, updated_at = ?, finished_at = ?, lease_owner = NULL, "
        "lease_until = NULL, next_run_at = NULL WHERE order_no = ?",
        [("succeeded", 3, 3, no) for no in numbers],
    )
    conn.executemany(
        "UPDATE attempts SET state = ?, supplier_ref = ?, code = ?, message = ?, queries = 0, "
        "refused = 0, resent = 0, updated_at = 3 WHERE reference = ?",
        [("succeeded", f"SB{no}", "0", "ok", f"{no}A1") for no in numbers],
    )
    holds = [f"hold:{no}" for no in numbers]
    conn.execute(
        f"SELECT order_no, amount FROM ledger WHERE event_key IN ({listed})", holds
    ).fetchall()
    conn.executemany(
        "INSERT INTO ledger (app_id, kind, amount, order_no, event_key, reason, actor, "
        "created_at) VALUES (?, 'capture', 990, ?, ?, '', 'system', 3)",
        [(APP, no, f"settle:{no}") for no in numbers],
    )
    conn.execute(
        "SELECT app_id, credited, captured, held, credit_limit FROM accounts WHERE app_id = ?",
        (APP,),
    ).fetchall()
    conn.execute(
        "UPDATE accounts SET held = held - ?, captured = captured + ?, updated_at = 3 "
        "WHERE app_id = ?",
        (990 * len(numbers), 990 * len(numbers), APP),
    )
    conn.execute("SELECT app_id, notify_url FROM apps WHERE app_id = ?", (APP,)).fetchall()
    conn.executemany(
        "INSERT INTO notifications (order_no, app_id, url, attempts, next_attempt_at, "
        "created_at) VALUES (?, ?, ?, 0, 3, 3) ON CONFLICT (order_no) DO NOTHING",
        [(no, APP, NOTIFY_URL) for no in numbers],
    )
    conn.execute("COMMIT")


def one_repeat(directory: Path) -> tuple[float, float]:
    """CPU µs per order of the accept path's statements, then of the dispatcher's."""
    conn = new_database(directory)
    try:
        rows = [order_row("T", n, "accepted", n) for n in range(ORDERS)]
        started = time.process_time()
        accept(conn, rows)
        accepted = time.process_time()
        dispatch(conn, ORDERS)
        dispatched = time.process_time()
        left = conn.execute(
            f"SELECT count(*) FROM orders WHERE state IN ({placeholders(len(OPEN))})", OPEN
        ).fetchone()[0]
        if left:
            raise SystemExit(f"{left} orders left open: the dispatcher's statements missed them")
    finally:
        conn.close()
    per_order = 1e6 / ORDERS
    return (accepted - started) * per_order, (dispatched - accepted) * per_order


def main() -> None:
    runs = []
    for _ in range(REPEATS):
        with tempfile.TemporaryDirectory(prefix="topup-sql-floor-") as tmp:
            runs.append(one_repeat(Path(tmp)))
    accept_us = statistics.median(run[0] for run in runs)
    dispatch_us = statistics.median(run[1] for run in runs)
    print(f"accept path's statements:     {accept_us:.0f} µs CPU per order")
    print(f"dispatcher path's statements: {dispatch_us:.0f} µs CPU per order")
    for accept_run, dispatch_run in runs:
        print(f"  one repeat: accept {accept_run:.0f}, dispatch {dispatch_run:.0f}")


if __name__ == "__main__":
    main()
