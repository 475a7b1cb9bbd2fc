"""``make bench-console``: the console's queries on a database of a million orders.

    .venv/bin/python bench/console.py [--sqlite FILE] [--postgres URL] [--runs N]

Seeds the databases with bench/console_seed.py unless they hold a million orders of
which the newest is less than 30 minutes old (SQLite: default bench/.build/console.db,
deleted and written again; PostgreSQL: the bench's own database, dropped and created
again), then times each query function through the service's own read path
(``Database.read_aside``) ``--runs`` times: the order search under each filter and some
combinations, its next page, an order's detail, and the overview. Prints p50 / p95 / max
and writes them to bench/CONSOLE.md, which BENCHMARKS.md carries as its "Console at 1M
orders" section.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from core.clock import now_ms  # noqa: E402
from core.db import Database  # noqa: E402
from core.ids import taken_at  # noqa: E402
from core.overview import (  # noqa: E402
    DAY_MS,
    HOUR_MS,
    notification_backlog,
    overview,
    per_minute,
    plugin_stats,
    read_overview,
    review_queue,
    state_counts,
)
from core.search import SCAN_LIMIT, OrderFilter, order_detail, search_orders  # noqa: E402

DEFAULT_SQLITE = ROOT / "bench" / ".build" / "console.db"
ORDERS = 1_000_000
# Data older than this is seeded again: the overview reads the last hour and day.
STALE_MS = 30 * 60_000
SECTION = "## Console at 1M orders"
LIMIT_MS = 200.0


class Timing:
    def __init__(self, name: str, samples: list[float], note: str = "") -> None:
        self.name, self.samples, self.note = name, sorted(samples), note

    def quantile(self, share: float) -> float:
        return self.samples[min(len(self.samples) - 1, int(len(self.samples) * share))]

    @property
    def p50(self) -> float:
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        return self.quantile(0.95)

    @property
    def max(self) -> float:
        return self.samples[-1]

    def line(self) -> str:
        return f"{self.name:48s} p50 {self.p50:7.1f}  p95 {self.p95:7.1f}  max {self.max:7.1f} ms"


async def timed(name: str, runs: int, call: Callable[[int], Awaitable[object]], note="") -> Timing:
    await call(0)  # the first run warms the page cache; the service runs warm
    samples = []
    for run in range(runs):
        started = time.perf_counter()
        await call(run)
        samples.append((time.perf_counter() - started) * 1000)
    timing = Timing(name, samples, note)
    print("  " + timing.line(), flush=True)
    return timing


async def sample_values(db: Database) -> dict:
    """Real values to search for, from the seeded data."""

    def pick(conn) -> dict:
        rows = conn.execute(
            text(
                "SELECT order_no, cstm_order_no, phone_no FROM orders"
                " ORDER BY order_no DESC LIMIT 200 OFFSET 20000"
            )
        ).all()
        return {
            "order_nos": [r.order_no for r in rows],
            "cstm_order_nos": [r.cstm_order_no for r in rows],
            "phones": [r.phone_no for r in rows],
        }

    return await db.read(pick)


def search_cases(values: dict, now: int) -> list[tuple[str, Callable[[int], OrderFilter]]]:
    week_ago = now - 7 * DAY_MS
    return [
        ("search: no filter (newest first)", lambda i: OrderFilter()),
        ("search: orderNo", lambda i: OrderFilter(order_no=values["order_nos"][i % 200])),
        (
            "search: cstmOrderNo",
            lambda i: OrderFilter(cstm_order_no=values["cstm_order_nos"][i % 200]),
        ),
        ("search: phone", lambda i: OrderFilter(phone_no=values["phones"][i % 200])),
        ("search: partner", lambda i: OrderFilter(app_id="jdlife")),
        ("search: carrier", lambda i: OrderFilter(carrier="中国电信")),
        ("search: plugin", lambda i: OrderFilter(plugin="reloadly")),
        ("search: plugin, a rare one (4%)", lambda i: OrderFilter(plugin="sandbox")),
        ("search: state failed", lambda i: OrderFilter(state="failed")),
        ("search: state review", lambda i: OrderFilter(state="review")),
        (
            "search: time range (one day, a week ago)",
            lambda i: OrderFilter(since=week_ago, until=week_ago + DAY_MS),
        ),
        (
            "search: partner + carrier + time range",
            lambda i: OrderFilter(
                app_id="alipaymini", carrier="中国联通", since=week_ago, until=week_ago + DAY_MS
            ),
        ),
        (
            "search: state failed + carrier + plugin",
            lambda i: OrderFilter(state="failed", carrier="中国电信", plugin="juhe"),
        ),
        (
            "search: partner + plugin, no match (worst case)",
            lambda i: OrderFilter(app_id="jdlife", plugin="sandbox"),
        ),
        (
            "search: carrier + plugin, no match (worst case)",
            lambda i: OrderFilter(carrier="中国移动", plugin="nosuchplugin"),
        ),
    ]


async def bench_queries(db: Database, label: str, runs: int) -> list[Timing]:
    print(f"{label}: queries", flush=True)
    values = await sample_values(db)
    now = now_ms()
    timings = []
    for name, make in search_cases(values, now):
        timings.append(
            await timed(
                name, runs, lambda i, make=make: db.read_aside(lambda c: search_orders(c, make(i)))
            )
        )

    async def second_page(i: int) -> object:
        first = await db.read_aside(lambda c: search_orders(c, OrderFilter(carrier="中国联通")))
        return await db.read_aside(
            lambda c: search_orders(c, OrderFilter(carrier="中国联通"), first.next_after)
        )

    timings.append(await timed("search: carrier, first and next page", runs, second_page))
    timings.append(
        await timed(
            "order detail",
            runs,
            lambda i: db.read_aside(lambda c: order_detail(c, values["order_nos"][(i * 7) % 200])),
        )
    )
    parts = [
        ("overview: orders by state, last hour", lambda c: state_counts(c, now_ms() - HOUR_MS)),
        ("overview: orders by state, last 24 h", lambda c: state_counts(c, now_ms() - DAY_MS)),
        ("overview: per plugin, last hour", lambda c: plugin_stats(c, now_ms() - HOUR_MS)),
        ("overview: per plugin, last 24 h", lambda c: plugin_stats(c, now_ms() - DAY_MS)),
        ("overview: review queue", review_queue),
        ("overview: notification backlog", notification_backlog),
        ("overview: orders per minute", lambda c: per_minute(c, now_ms())),
        ("overview: all of it, on one connection", overview),
    ]
    for name, job in parts:
        timings.append(await timed(name, runs, lambda i, job=job: db.read_aside(job)))
    timings.append(
        await timed("overview: all of it, as the page reads it", runs, lambda i: read_overview(db))
    )
    return timings


# -- seeding -----------------------------------------------------------------------------


def fresh(count: int, newest: str | None) -> bool:
    """A million orders, the newest taken within STALE_MS: the overview's last hour and
    day hold what they would on a live system."""
    return count >= ORDERS and newest is not None and now_ms() - taken_at(newest) < STALE_MS


def prepare_sqlite(path: Path) -> None:
    if path.exists():
        with sqlite3.connect(path) as conn:
            count, newest = conn.execute("SELECT count(*), max(order_no) FROM orders").fetchone()
        if fresh(count, newest):
            return
        print(f"{path}: {count:,} orders, the newest {newest}: reseeding", flush=True)
        for stale in path.parent.glob(path.name + "*"):
            stale.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    seed(str(path))


async def postgres_state(url: str) -> tuple[int, str | None] | None:
    """(orders, newest order number) in the database at ``url``; None without a server."""
    import asyncpg

    try:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"), timeout=5)
    except asyncpg.InvalidCatalogNameError:
        return 0, None
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"no PostgreSQL at {url}: {exc}; measuring SQLite only", flush=True)
        return None
    try:
        row = await conn.fetchrow("SELECT count(*), max(order_no) FROM orders")
        return row[0], row[1]
    except asyncpg.UndefinedTableError:
        return 0, None
    finally:
        await conn.close()


async def recreate_postgres(url: str) -> None:
    """Drop and create the bench's own database."""
    import asyncpg

    dsn = url.replace("postgresql+asyncpg", "postgresql")
    server, name = dsn.rsplit("/", 1)
    admin = await asyncpg.connect(server + "/postgres", timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


def prepare_postgres(url: str, key_file: Path) -> bool:
    found = asyncio.run(postgres_state(url))
    if found is None:
        return False
    if not fresh(*found):
        print(f"{url}: {found[0]:,} orders, the newest {found[1]}: reseeding", flush=True)
        asyncio.run(recreate_postgres(url))
        seed(url, "--key-file", str(key_file))
    return True


def seed(target: str, *extra: str) -> None:
    print(f"seeding {target}", flush=True)
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "console_seed.py"), target, *extra], check=True
    )


# -- the report --------------------------------------------------------------------------


def report(results: dict[str, list[Timing]], runs: int) -> str:
    lines = [
        SECTION,
        "",
        f"Run with `make bench-console` on {time.strftime('%Y-%m-%d %H:%M %Z')}: "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}. A database of 1,000,000 orders over 30 days "
        "(bench/console_seed.py: six partners, three carriers, plugins juhe, reloadly and "
        "sandbox, one order in fourteen failed over to a second supplier, ledger, events, "
        f"notifications). Each figure: {runs} runs after one warm-up, through the service's "
        f"read path (`Database.read_aside`), in milliseconds. The console's budget is "
        f"{LIMIT_MS:.0f} ms per page.",
        "",
    ]
    names = list(dict.fromkeys(t.name for timings in results.values() for t in timings))
    header = "| query | " + " | ".join(f"{label} p50 / p95 / max" for label in results) + " |"
    lines += [header, "| --- |" + " --- |" * len(results)]
    by_name = {label: {t.name: t for t in timings} for label, timings in results.items()}
    for name in names:
        cells = []
        for label in results:
            t = by_name[label].get(name)
            cells.append("" if t is None else f"{t.p50:.1f} / {t.p95:.1f} / {t.max:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    over = [
        f"{label}: {t.name} ({t.p95:.1f} ms p95)"
        for label, timings in results.items()
        for t in timings
        if t.p95 > LIMIT_MS
    ]
    lines += ["", f"Over {LIMIT_MS:.0f} ms at p95: " + ("; ".join(over) if over else "none") + "."]
    notes = ROOT / "bench" / "CONSOLE_NOTES.md"
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    lines.append(f"\nA search looks at no more than {SCAN_LIMIT:,} rows of its driving index.")
    return "\n".join(lines) + "\n"


def splice(benchmarks: Path, section: str) -> None:
    """Replace the console section of BENCHMARKS.md (or append it)."""
    current = benchmarks.read_text() if benchmarks.exists() else "# Benchmarks\n"
    start = current.find(SECTION)
    if start < 0:
        updated = current.rstrip() + "\n\n" + section
    else:
        end = current.find("\n## ", start + len(SECTION))
        rest = "" if end < 0 else current[end:]
        updated = current[:start] + section.rstrip() + "\n" + rest
    benchmarks.write_text(updated)


async def run(targets: list[tuple[str, str]], runs: int) -> dict[str, list[Timing]]:
    results: dict[str, list[Timing]] = {}
    for label, url in targets:
        db = Database(url)
        try:
            results[label] = await bench_queries(db, label, runs)
        finally:
            await db.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sqlite", default=str(DEFAULT_SQLITE))
    parser.add_argument("--postgres", help="a PostgreSQL URL (postgresql+asyncpg://...)")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    prepare_sqlite(Path(args.sqlite))
    if args.postgres and not prepare_postgres(args.postgres, Path(args.sqlite + ".pg.key")):
        args.postgres = None
    targets = [("SQLite", f"sqlite+aiosqlite:///{Path(args.sqlite).resolve()}")]
    if args.postgres:
        targets.append(("PostgreSQL", args.postgres))
    results = asyncio.run(run(targets, args.runs))
    section = report(results, args.runs)
    (ROOT / "bench" / "CONSOLE.md").write_text(section)
    splice(ROOT / "BENCHMARKS.md", section)
    print("written to bench/CONSOLE.md and BENCHMARKS.md")


if __name__ == "__main__":
    main()
