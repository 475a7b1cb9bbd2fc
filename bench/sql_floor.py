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
of a realistic depth. tests/test_bench_floor.py runs the same orders through the
lifecycle and through ``accept`` and ``dispatch`` here and compares SQLite's traces of
the two: each table written as often per order, the same tables read.

    .venv/bin/python bench/sql_floor.py                          # CPU time, ~30 s
    .venv/bin/python bench/sql_floor.py --measure instructions   # valgrind, ~2 minutes
    .venv/bin/python bench/sql_floor.py --write-set smallest     # a schema not built

``--write-set smallest`` runs, for the dispatcher, the smallest write set the money rules
allow instead of today's: the attempt still committed before the send and the capture with
the final state, but the notification due as a column of the order's final UPDATE (a
partial index) instead of an outbox row, the lock read of only the columns a result checks
(the rest never change after acceptance, and the claim read them), and the capture's amount
taken from the order's price instead of a read of its hold. It prices a redesign before
anyone builds it: what fewer rows per dispatched order would buy.

CPU time moves with the machine's load (on one host, two runs minutes apart differed by
a third); instructions do not, and compare with ``bench/lifecycle_cost.py --measure
instructions``. Per order is then the difference between runs of two sizes, as there.
Internally, ``--drive DATABASE N WRITE_SET`` is one measured run (what valgrind executes).
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine  # noqa: E402

from bench.lifecycle_cost import BOUNDARY, boundary, instructions  # noqa: E402
from core.db import _PRAGMAS, metadata  # noqa: E402
from core.orders import ORDER_TABLE_COLUMNS, State  # noqa: E402

EXISTING = 200_000
# Orders per run: (short, long) per measure; per order is their difference's share.
SIZES = {"cpu": (2_000, 20_000), "instructions": (1_000, 5_000)}
REPEATS = {"cpu": 3, "instructions": 1}
BATCH = 64  # the dispatcher's claim_batch; acceptance's groups are of the same order
APP = "bench-app"
NOTIFY_URL = "http://127.0.0.1:9/notify"
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
        "carrier": "中国移动",
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


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in _PRAGMAS:
        conn.execute(f"PRAGMA {pragma}")
    return conn


def new_database(directory: Path) -> Path:
    """The schema, the app, its account and ``EXISTING`` finished orders."""
    path = directory / "floor.db"
    engine = create_engine(f"sqlite:///{path}")
    metadata.create_all(engine)
    engine.dispose()
    conn = connect(path)
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
    conn.close()
    return path


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
    for _ in range(0, count, BATCH):
        apply_results(conn, claim(conn))


def claim(conn: sqlite3.Connection) -> list[str]:
    """Lease a batch of due orders and commit each one's attempt, as the worker's claim."""
    columns = ", ".join(ORDER_TABLE_COLUMNS)
    conn.execute("BEGIN IMMEDIATE")
    due = conn.execute(
        f"SELECT {columns} FROM orders WHERE next_run_at <= ? ORDER BY next_run_at LIMIT ?",
        (10**13, BATCH),
    ).fetchall()
    numbers = [row[0] for row in due]
    # The claimed orders change alike: one UPDATE for all (core/fastsql.py: update_alike).
    conn.execute(
        "UPDATE orders SET state = ?, attempts = ?, updated_at = ?, lease_owner = ?, "
        f"lease_until = ?, next_run_at = ? WHERE order_no IN ({placeholders(len(numbers))})",
        ("submitting", 1, 2, "bench-worker", 10**14, 10**14, *numbers),
    )
    conn.executemany(
        f"INSERT INTO attempts ({ATTEMPT_COLUMNS}) "
        "VALUES (?, ?, 1, 'sandbox', 'submitting', NULL, NULL, NULL, 0, 2, 2, 990, 0, 0)",
        [(f"{no}A1", no) for no in numbers],
    )
    conn.execute("COMMIT")
    return numbers


def apply_results(conn: sqlite3.Connection, numbers: list[str]) -> None:
    listed = placeholders(len(numbers))
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        f"SELECT {', '.join(ORDER_TABLE_COLUMNS)} FROM orders WHERE order_no IN ({listed})",
        numbers,
    ).fetchall()
    conn.execute(
        f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE order_no IN ({listed})", numbers
    ).fetchall()
    conn.execute(
        "UPDATE orders SET state = ?, fail_code = NULL, fail_reason = NULL, updated_at = ?, "
        "finished_at = ?, next_run_at = NULL, lease_owner = NULL, lease_until = NULL "
        f"WHERE order_no IN ({listed})",
        ("succeeded", 3, 3, *numbers),
    )
    finish_attempts(conn, numbers)
    holds = [f"hold:{no}" for no in numbers]
    conn.execute(
        f"SELECT order_no, amount FROM ledger WHERE event_key IN ({listed})", holds
    ).fetchall()
    conn.execute(
        "SELECT app_id, credited, captured, held, credit_limit FROM accounts WHERE app_id = ?",
        (APP,),
    ).fetchall()
    capture(conn, numbers)
    conn.execute("SELECT app_id, notify_url FROM apps WHERE app_id = ?", (APP,)).fetchall()
    conn.executemany(
        "INSERT INTO notifications (order_no, app_id, url, attempts, next_attempt_at, "
        "created_at) VALUES (?, ?, ?, 0, 3, 3) ON CONFLICT (order_no) DO NOTHING",
        [(no, APP, NOTIFY_URL) for no in numbers],
    )
    conn.execute("COMMIT")


def finish_attempts(conn: sqlite3.Connection, numbers: list[str]) -> None:
    conn.executemany(
        "UPDATE attempts SET state = ?, supplier_ref = ?, code = ?, message = ?, queries = 0, "
        "refused = 0, resent = 0, updated_at = 3 WHERE reference = ?",
        [("succeeded", f"SB{no}", "0", "ok", f"{no}A1") for no in numbers],
    )


def capture(conn: sqlite3.Connection, numbers: list[str]) -> None:
    """The captures' ledger rows and the account's one update."""
    conn.executemany(
        "INSERT INTO ledger (app_id, kind, amount, order_no, event_key, reason, actor, "
        "created_at) VALUES (?, 'capture', 990, ?, ?, '', 'system', 3)",
        [(APP, no, f"settle:{no}") for no in numbers],
    )
    conn.execute(
        "UPDATE accounts SET held = held - ?, captured = captured + ?, updated_at = 3 "
        "WHERE app_id = ?",
        (990 * len(numbers), 990 * len(numbers), APP),
    )


# -- the smallest write set (--write-set smallest) --------------------------------------------


def add_notify_column(conn: sqlite3.Connection) -> None:
    """The outbox as a column of the order: set with the final state, cleared on delivery."""
    conn.execute("ALTER TABLE orders ADD COLUMN notify_due BIGINT")
    conn.execute(
        "CREATE INDEX ix_orders_notify_due ON orders (notify_due) WHERE notify_due IS NOT NULL"
    )


def dispatch_smallest(conn: sqlite3.Connection, count: int) -> None:
    for _ in range(0, count, BATCH):
        numbers = claim(conn)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "SELECT order_no, state, lease_owner FROM orders "
            f"WHERE order_no IN ({placeholders(len(numbers))})",
            numbers,
        ).fetchall()
        conn.execute(
            "UPDATE orders SET state = ?, updated_at = ?, finished_at = ?, lease_owner = NULL, "
            "lease_until = NULL, next_run_at = NULL, notify_due = ? "
            f"WHERE order_no IN ({placeholders(len(numbers))})",
            ("succeeded", 3, 3, 3, *numbers),
        )
        finish_attempts(conn, numbers)
        capture(conn, numbers)
        conn.execute("COMMIT")


WRITE_SETS = {"today": dispatch, "smallest": dispatch_smallest}


def measured_run(path: Path, count: int, write_set: str) -> dict[str, float]:
    """Accept ``count`` orders, then dispatch them; each segment's CPU seconds."""
    conn = connect(path)
    try:
        if write_set == "smallest":
            add_notify_column(conn)
        rows = [order_row("T", n, "accepted", n) for n in range(count)]
        started = boundary()
        accept(conn, rows)
        accepted = boundary()
        WRITE_SETS[write_set](conn, count)
        dispatched = boundary()
        # Every order, the finished ones loaded first included, must end succeeded.
        left = conn.execute(
            "SELECT count(*) FROM orders WHERE state != ?", (State.SUCCEEDED.value,)
        ).fetchone()[0]
        if left:
            raise SystemExit(
                f"{left} orders not succeeded: the dispatcher's statements missed them"
            )
    finally:
        conn.close()
    return {"accept": accepted - started, "dispatch": dispatched - accepted}


def one_run(template: Path, count: int, measure: str, write_set: str) -> tuple[float, float]:
    """Both segments of one run on a copy of ``template``: CPU seconds or instructions."""
    with tempfile.TemporaryDirectory(prefix="topup-sql-floor-") as tmp:
        path = Path(tmp) / "floor.db"
        shutil.copy(template, path)
        if measure == "cpu":
            segments = measured_run(path, count, write_set)
            return segments["accept"], segments["dispatch"]
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                f"--dump-before={BOUNDARY}",
                sys.executable,
                __file__,
                "--drive",
                str(path),
                str(count),
                write_set,
            ],
            check=True,
            capture_output=True,
        )
        # Dumps: .1 start-up, .2 accept, .3 dispatch (callgrind numbers them).
        accept_count, dispatch_count = (instructions(Path(f"{out}.{n}")) for n in (2, 3))
        return accept_count, dispatch_count


def measure_floor(measure: str, write_set: str) -> list[tuple[float, float]]:
    """(accept, dispatch) per order, each repeat: µs of CPU or instructions."""
    short, long = SIZES[measure]
    scale = 1e6 if measure == "cpu" else 1.0
    repeats = []
    with tempfile.TemporaryDirectory(prefix="topup-sql-floor-") as tmp:
        template = new_database(Path(tmp))
        for _ in range(REPEATS[measure]):
            a = one_run(template, short, measure, write_set)
            b = one_run(template, long, measure, write_set)
            repeats.append(
                ((b[0] - a[0]) / (long - short) * scale, (b[1] - a[1]) / (long - short) * scale)
            )
    return repeats


def main() -> None:
    if sys.argv[1:2] == ["--drive"]:
        # Counted by valgrind, segment by segment.
        measured_run(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", choices=("cpu", "instructions"), default="cpu")
    parser.add_argument(
        "--write-set",
        choices=tuple(WRITE_SETS),
        default="today",
        help="the dispatcher's statements: today's, or the smallest the money rules allow",
    )
    args = parser.parse_args()
    measure = args.measure
    repeats = measure_floor(measure, args.write_set)
    unit = "µs CPU" if measure == "cpu" else "instructions"
    accept_cost = statistics.median(run[0] for run in repeats)
    dispatch_cost = statistics.median(run[1] for run in repeats)
    print(f"accept path's statements:     {accept_cost:,.0f} {unit} per order")
    print(f"dispatcher path's statements ({args.write_set}): {dispatch_cost:,.0f} {unit} per order")
    for accept_run, dispatch_run in repeats if len(repeats) > 1 else ():
        print(f"  one repeat: accept {accept_run:,.0f}, dispatch {dispatch_run:,.0f}")


if __name__ == "__main__":
    main()
