"""``make bench-console``: the console's queries and pages on a million orders.

    .venv/bin/python bench/console.py [--sqlite FILE] [--postgres URL] [--runs N]

Seeds the databases with bench/console_seed.py unless they hold a million orders of
which the newest is less than 30 minutes old (SQLite: default bench/.build/console.db,
deleted and written again; PostgreSQL: the bench's own database, dropped and created
again). Then, ``--runs`` times each after one warm-up:

- each query function through the service's own read path (``Database.read_aside``):
  the order search under each filter and some combinations, its next page, an order's
  detail, and the overview;
- each console page through a real ``topup serve --no-background`` on that database,
  signed in as an admin made with ``topup operator add`` (over HTTP from this process).

Prints p50 / p95 / max and writes them to bench/CONSOLE.md, which BENCHMARKS.md carries
as its "Console at 1M orders" section.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import text  # noqa: E402

from bench.console_seed import default_key_file  # noqa: E402
from core.clock import beijing_time, now_ms  # noqa: E402
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
from topup.testing import free_port, wait_until_healthy  # noqa: E402

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


def report(results: dict[str, list[Timing]], runs: int, load: tuple[float, float]) -> str:
    lines = [
        SECTION,
        "",
        f"Run with `make bench-console` on {time.strftime('%Y-%m-%d %H:%M %Z')}: "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}. A database of 1,000,000 orders over 30 days "
        "(bench/console_seed.py: six partners, three carriers, plugins juhe, reloadly and "
        "sandbox, one order in fourteen failed over to a second supplier, ledger, events, "
        f"notifications). Each figure: {runs} runs after one warm-up, in milliseconds. "
        "The query rows run through the service's read path (`Database.read_aside`); the "
        "page rows are HTTP GETs, timed by the client, of a `topup serve --no-background` "
        "on the same database, signed in as an admin. The console's budget is "
        f"{LIMIT_MS:.0f} ms per page. The machine's load average (1 min) was {load[0]:.1f} "
        f"when the run began and {load[1]:.1f} when it ended, on {os.cpu_count()} cores "
        "(other work shares them: the figures vary from run to run with it).",
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


async def queries(url: str, label: str, runs: int) -> tuple[list[Timing], dict]:
    db = Database(url)
    try:
        return await bench_queries(db, label, runs), await sample_values(db)
    finally:
        await db.dispose()


# -- the pages, through a real `topup serve` ----------------------------------------------


def page_cases(values: dict, now: int) -> list[tuple[str, Callable[[int], str]]]:
    week_ago = beijing_time(now - 7 * DAY_MS).replace(" ", "T")[:16]
    day_later = beijing_time(now - 6 * DAY_MS).replace(" ", "T")[:16]
    return [
        ("page: overview (/console)", lambda i: "/console"),
        ("page: overview, its live part (every 10 s)", lambda i: "/console/overview/live"),
        ("page: orders, no filter", lambda i: "/console/orders"),
        (
            "page: orders by phone",
            lambda i: f"/console/orders?phone_no={values['phones'][i % 200]}",
        ),
        (
            "page: orders by orderNo",
            lambda i: f"/console/orders?order_no={values['order_nos'][i % 200]}",
        ),
        ("page: orders by partner + state", lambda i: "/console/orders?app_id=jdlife&state=failed"),
        (
            "page: orders by time range (one day)",
            lambda i: f"/console/orders?since={week_ago}&until={day_later}",
        ),
        (
            "page: orders, no match (worst case)",
            lambda i: "/console/orders?app_id=jdlife&plugin=sandbox",
        ),
        ("page: order detail", lambda i: f"/console/orders/{values['order_nos'][(i * 7) % 200]}"),
        ("page: review queue", lambda i: "/console/review"),
        ("page: partners", lambda i: "/console/partners"),
        ("page: one partner and its ledger", lambda i: "/console/partners/jdlife"),
        ("page: audit log", lambda i: "/console/audit"),
        ("page: operators", lambda i: "/console/operators"),
        ("page: suppliers and routes", lambda i: "/console/suppliers"),
        ("page: reconciliation", lambda i: "/console/reconcile"),
        (
            "page: a partner's statement of yesterday (CSV)",
            lambda i: f"/console/partners/jdlife/statement?day={beijing_time(now - DAY_MS)[:10]}",
        ),
    ]


@contextlib.contextmanager
def console_service(url: str, key_file: Path) -> Iterator[tuple[str, str]]:
    """A real `topup serve` on the seeded database (no background worker: the data stays
    as seeded), and an admin made with `topup operator add`; yields (URL, name)."""
    port = free_port()
    env = {
        **os.environ,
        "TOPUP_DATABASE_URL": url,
        "TOPUP_MASTER_KEY_FILE": str(key_file),
        "TOPUP_PORT": str(port),
        "TOPUP_CONFIG": str(ROOT / "plugins.toml"),
    }
    topup = str(Path(sys.executable).parent / "topup")
    subprocess.run([topup, "db", "upgrade"], env=env, check=True, capture_output=True)
    name = f"bench{time.time_ns() % 10**9}"
    subprocess.run(
        [topup, "operator", "add", name, "--role", "admin", "--password-stdin"],
        env=env,
        input=PASSWORD,
        text=True,
        check=True,
        capture_output=True,
    )
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            [topup, "serve", "--no-background"], env=env, cwd=ROOT, stdout=log, stderr=log
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_healthy(f"{base}/healthz", server, lambda: _tail(log))
            yield base, name
        finally:
            server.terminate()
            server.wait(timeout=30)


def _tail(log) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-3000:]


async def bench_pages(base: str, name: str, label: str, values: dict, runs: int) -> list[Timing]:
    print(f"{label}: pages", flush=True)
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        form = (await http.get("/console/login")).text
        token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
        signed_in = await http.post(
            "/console/login", data={"name": name, "password": PASSWORD, "csrf_token": token}
        )
        assert signed_in.status_code == 303, signed_in.text
        timings = []
        for case, path in page_cases(values, now_ms()):

            async def get(i: int, path=path) -> None:
                reply = await http.get(path(i))
                assert reply.status_code == 200, (path(i), reply.status_code)

            timings.append(await timed(case, runs, get))
        return timings


PASSWORD = "bench console password"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sqlite", default=str(DEFAULT_SQLITE))
    parser.add_argument("--postgres", help="a PostgreSQL URL (postgresql+asyncpg://...)")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    prepare_sqlite(Path(args.sqlite))
    if args.postgres and not prepare_postgres(args.postgres, Path(args.sqlite + ".pg.key")):
        args.postgres = None
    sqlite_file = Path(args.sqlite).resolve()
    targets = [
        ("SQLite", f"sqlite+aiosqlite:///{sqlite_file}", Path(default_key_file(args.sqlite)))
    ]
    if args.postgres:
        targets.append(("PostgreSQL", args.postgres, Path(args.sqlite + ".pg.key")))
    results: dict[str, list[Timing]] = {}
    load_before = os.getloadavg()[0]
    for label, url, key_file in targets:
        timings, values = asyncio.run(queries(url, label, args.runs))
        with console_service(url, key_file) as (base, name):
            timings += asyncio.run(bench_pages(base, name, label, values, args.runs))
        results[label] = timings
    section = report(results, args.runs, (load_before, os.getloadavg()[0]))
    (ROOT / "bench" / "CONSOLE.md").write_text(section)
    splice(ROOT / "BENCHMARKS.md", section)
    print("written to bench/CONSOLE.md and BENCHMARKS.md")


if __name__ == "__main__":
    main()
