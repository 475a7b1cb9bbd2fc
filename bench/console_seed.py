"""Fill a database with a month of realistic orders, for the console benchmark.

    .venv/bin/python bench/console_seed.py var/console.db [--orders 1000000] [--days 30]
    .venv/bin/python bench/console_seed.py postgresql+asyncpg://postgres@127.0.0.1/console

The schema comes from the real migrations (``core.migrate.upgrade``) and the partner
apps from the real ``AppStore`` (their secrets sealed with the master key in
``TOPUP_MASTER_KEY_FILE``, default ``<database>.master.key`` beside a SQLite file, so
that ``topup serve`` can open them). Everything else is written in bulk: orders over
``--days`` days ending now with a daily rhythm, their attempts (one in fourteen fails over
to a second supplier), review and resolution events, ledger holds and settlements,
credits, and partner notifications (delivered, waiting, given up). The last minutes hold
orders still in flight. Rows are generated in order-number order, so every index but the
random ones (phone numbers, orderIds) is appended to.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import random
import sqlite3
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.apps import AppStore  # noqa: E402
from core.clock import BEIJING, now_ms  # noqa: E402
from core.db import Database  # noqa: E402
from core.migrate import upgrade  # noqa: E402
from core.sealing import MASTER_KEY_FILE_ENV  # noqa: E402

CHUNK = 50_000
DAY_MS = 86_400_000

# (app_id, company, share of orders, notify URL or None, cstmOrderNo prefix)
APPS = [
    ("caishenghuo", "彩生活服务集团", 0.34, "https://api.colourlife.example/topup/notify", "CSH"),
    ("jdlife", "京东生活服务", 0.24, "https://life.jd.example/callback/recharge", "JD"),
    ("meituanpay", "美团支付", 0.16, None, "MT"),
    ("alipaymini", "支付宝小程序商户", 0.12, "https://mini.alipay.example/notify", "ALI"),
    ("wxh5shop", "微信H5商城", 0.10, "https://shop.wx.example/hook/topup", "WX"),
    ("sandboxtest", "测试商户", 0.04, None, "T"),
]
# (carrier, share, phone prefixes, product prefix)
CARRIERS = [
    (
        "中国移动",
        0.55,
        ["134", "135", "136", "137", "138", "139", "150", "151", "152", "187"],
        "YD",
    ),
    ("中国联通", 0.25, ["130", "131", "132", "155", "156", "185", "186"], "LT"),
    ("中国电信", 0.20, ["133", "153", "177", "180", "181", "189"], "DX"),
]
FACE_VALUES = [(10, 0.08), (20, 0.10), (30, 0.17), (50, 0.35), (100, 0.27), (200, 0.03)]
# Each carrier's plugins and their shares of first attempts; the sandbox app uses sandbox.
ROUTES = {
    "中国移动": [("juhe", 0.7), ("reloadly", 0.3)],
    "中国联通": [("juhe", 0.6), ("reloadly", 0.4)],
    "中国电信": [("reloadly", 0.8), ("juhe", 0.2)],
}
# Median seconds from an attempt's start to its settlement, and the spread (log-normal).
LATENCY = {"juhe": (4.0, 0.9), "reloadly": (9.0, 0.8), "sandbox": (0.4, 0.3)}
FAIL_CODES = {
    "juhe": [("10014", "运营商维护中"), ("208509", "手机号码已停机"), ("208517", "充值失败")],
    "reloadly": [("OPERATOR_UNAVAILABLE", "Operator unavailable"), ("FAILED", "Top-up failed")],
    "sandbox": [("4", "沙箱: 号码尾号4失败")],
}
REFUSAL_CODES = {
    "juhe": ("10012", "当前账户余额不足"),
    "reloadly": ("INSUFFICIENT_BALANCE", "Insufficient balance"),
    "sandbox": ("NO_STOCK", "沙箱: 无库存"),
}
OPERATORS = ["zhangwei", "lina", "wangfang"]
# Orders per hour of the Beijing day, relative (top-ups peak at lunch and in the evening).
HOURLY = [3, 2, 1, 1, 1, 2, 4, 7, 9, 10, 11, 12, 12, 10, 10, 10, 10, 11, 12, 14, 15, 13, 9, 5]

ORDER_COLUMNS = [
    "order_no",
    "order_id",
    "app_id",
    "cstm_order_no",
    "cstm_order_name",
    "company",
    "carrier",
    "phone_no",
    "product_id",
    "face_value",
    "price",
    "state",
    "attempts",
    "fail_code",
    "fail_reason",
    "created_at",
    "updated_at",
    "finished_at",
    "next_run_at",
    "lease_owner",
    "lease_until",
]
ATTEMPT_COLUMNS = [
    "reference",
    "order_no",
    "seq",
    "plugin",
    "state",
    "supplier_ref",
    "code",
    "message",
    "queries",
    "created_at",
    "updated_at",
    "cost",
    "refused",
]
EVENT_COLUMNS = ["order_no", "at", "kind", "actor", "detail"]
LEDGER_COLUMNS = [
    "app_id",
    "kind",
    "amount",
    "order_no",
    "event_key",
    "reason",
    "actor",
    "created_at",
]
NOTIFICATION_COLUMNS = [
    "order_no",
    "app_id",
    "url",
    "attempts",
    "next_attempt_at",
    "lease_owner",
    "lease_until",
    "delivered_at",
    "last_error",
    "created_at",
]
TABLES = {
    "orders": ORDER_COLUMNS,
    "attempts": ATTEMPT_COLUMNS,
    "order_events": EVENT_COLUMNS,
    "ledger": LEDGER_COLUMNS,
    "notifications": NOTIFICATION_COLUMNS,
}


@dataclass
class Totals:
    """Per app: what the ledger rows add up to, for the accounts table."""

    credited: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    captured: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    held: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def order_times(count: int, days: float, end: int, rng: random.Random) -> list[int]:
    """``count`` acceptance times (Unix ms, ascending) over ``days`` days before ``end``."""
    start = end - int(days * DAY_MS)
    hours = math.ceil((end - start) / 3_600_000)
    weights = []
    for hour in range(hours):
        at = datetime.fromtimestamp((start + hour * 3_600_000) / 1000, UTC).astimezone(BEIJING)
        weights.append(HOURLY[at.hour] * (1.15 if at.weekday() >= 5 else 1.0))
    scale = count / sum(weights)
    times: list[int] = []
    for hour, weight in enumerate(weights):
        base = start + hour * 3_600_000
        span = min(3_600_000, end - base)
        times += [base + rng.randrange(span) for _ in range(round(weight * scale))]
    while len(times) < count:
        times.append(end - rng.randrange(60_000))
    times = sorted(times[:count])
    return times


class Numbers:
    """Order numbers in the shape of core/ids.py for given times, from two nodes."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""
        self._last: dict[tuple[int, int], int] = {}

    def at(self, ms: int, node: int) -> str:
        second = ms // 1000
        if second != self._second:
            stamp = datetime.fromtimestamp(second, UTC).astimezone(BEIJING)
            self._second, self._text = second, f"{stamp:%Y%m%d%H%M%S}"
        key = (ms, node)
        seq = self._last.get(key, -1) + 1
        self._last[key] = seq
        if len(self._last) > 10_000:
            self._last.clear()
            self._last[key] = seq
        return f"TP{self._text}{ms % 1000:03d}{node:04d}{seq:04d}"


def phone_pool(rng: random.Random, size: int) -> dict[str, list[str]]:
    pool = {}
    for carrier, share, prefixes, _ in CARRIERS:
        pool[carrier] = [
            f"{rng.choice(prefixes)}{rng.randrange(10**8):08d}" for _ in range(int(size * share))
        ]
    return pool


class Weighted:
    """Picks one of ``choices``, each with the weight at position ``at`` of its tuple."""

    def __init__(self, choices: list[tuple], at: int = 1) -> None:
        self.choices = choices
        self.cumulative = list(itertools.accumulate(choice[at] for choice in choices))

    def pick(self, rng: random.Random) -> tuple:
        return rng.choices(self.choices, cum_weights=self.cumulative)[0]


PICK_APP = Weighted(APPS, at=2)
PICK_CARRIER = Weighted(CARRIERS)
PICK_FACE = Weighted(FACE_VALUES)
PICK_ROUTE = {carrier: Weighted(route) for carrier, route in ROUTES.items()}


class Generator:
    def __init__(self, count: int, days: float, seed: int = 10) -> None:
        self.rng = random.Random(seed)
        self.end = now_ms() - 1000
        self.times = order_times(count, days, self.end, self.rng)
        self.numbers = Numbers()
        self.phones = phone_pool(self.rng, max(1000, count // 3))
        self.app_counters: dict[str, int] = defaultdict(int)
        self.totals = Totals()
        # A partner whose notify endpoint has failed for the last 40 minutes: a backlog.
        self.broken_app, self.broken_since = "wxh5shop", self.end - 40 * 60_000

    def chunks(self) -> Iterator[dict[str, list[tuple]]]:
        for start in range(0, len(self.times), CHUNK):
            rows: dict[str, list[tuple]] = {name: [] for name in TABLES}
            for at in self.times[start : start + CHUNK]:
                self.order(at, rows)
            yield rows

    def order(self, at: int, rows: dict[str, list[tuple]]) -> None:
        rng = self.rng
        app_id, company, _share, notify_url, prefix = PICK_APP.pick(rng)
        carrier, _share, _prefixes, product_prefix = PICK_CARRIER.pick(rng)
        face, _ = PICK_FACE.pick(rng)
        face_fen = face * 100
        price = face_fen - face_fen // 200
        phone = rng.choice(self.phones[carrier])
        order_no = self.numbers.at(at, rng.choice((17, 42)))
        self.app_counters[app_id] += 1
        stamp = order_no[2:10]
        cstm = f"{prefix}{stamp}{self.app_counters[app_id]:08d}"
        age = self.end - at
        plan = self.plan(app_id, carrier, age)
        attempts, final, finished = self.attempts(order_no, at, face_fen, plan, age, rows)
        fail_code = fail_reason = None
        if final == "failed":
            fail_code, fail_reason = attempts[-1][6], attempts[-1][7]
        updated = finished or (attempts[-1][10] if attempts else at)
        next_run = None if final in ("succeeded", "failed", "review") else self.end + 5_000
        rows["orders"].append(
            (
                order_no,
                f"Y{rng.getrandbits(116):029x}",
                app_id,
                cstm,
                f"{carrier}话费{face}元",
                company,
                carrier,
                phone,
                f"{product_prefix}{face}",
                face_fen,
                price,
                final,
                len(attempts),
                fail_code,
                fail_reason,
                at,
                updated,
                finished,
                next_run,
                None,
                None,
            )
        )
        rows["attempts"] += attempts
        self.money(app_id, order_no, price, at, final, finished, rows)
        if final in ("succeeded", "failed") and notify_url:
            rows["notifications"].append(self.notification(app_id, order_no, notify_url, finished))

    def plan(self, app_id: str, carrier: str, age: int) -> dict:
        """What happens to the order: its plugins, and how it ends."""
        rng = self.rng
        first = "sandbox" if app_id == "sandboxtest" else PICK_ROUTE[carrier].pick(rng)[0]
        others = [p for p, _ in ROUTES[carrier] if p != first] or ["juhe"]
        plugins = [first]
        if rng.random() < 0.07:
            plugins.append(others[0])  # the first supplier refused: failover
        roll = rng.random()
        if age < 20_000:
            end = "open"  # still in flight
        elif age < 3 * DAY_MS and roll < 0.0015:
            end = "review"
        elif roll < 0.05:
            end = "failed"
        else:
            end = "succeeded"
        resolved = end != "review" and age > 3_600_000 and rng.random() < 0.0004
        return {"plugins": plugins, "end": end, "resolved": resolved}

    def attempts(self, order_no: str, at: int, face_fen: int, plan: dict, age: int, rows):
        rng = self.rng
        made, start = [], at + rng.randrange(20, 400)
        final, finished = plan["end"], None
        for seq, plugin in enumerate(plan["plugins"], start=1):
            last = seq == len(plan["plugins"])
            median, spread = LATENCY[plugin]
            took = int(1000 * median * math.exp(rng.gauss(0, spread)))
            ref = f"{order_no}A{seq}"
            supplier_ref = f"JH{rng.randrange(10**12):012d}" if plugin == "juhe" else None
            if plugin == "reloadly":
                supplier_ref = str(rng.randrange(10**9))
            cost = face_fen - face_fen // 100
            if not last:  # refused at once: failover to the next plugin
                code, message = REFUSAL_CODES[plugin]
                updated = start + rng.randrange(80, 600)
                made.append(
                    (
                        ref,
                        order_no,
                        seq,
                        plugin,
                        "failed",
                        None,
                        code,
                        message,
                        0,
                        start,
                        updated,
                        cost,
                        True,
                    )
                )
                start = updated + rng.randrange(5, 50)
                continue
            if final == "open" or start + took > self.end:
                state = rng.choice(("submitting", "pending", "pending", "unknown"))
                made.append(
                    (
                        ref,
                        order_no,
                        seq,
                        plugin,
                        state,
                        supplier_ref,
                        None,
                        None,
                        0,
                        start,
                        start,
                        cost,
                        False,
                    )
                )
                final = "pending" if state == "submitting" else state
                return made, final, None
            if final == "review":
                made.append(
                    (
                        ref,
                        order_no,
                        seq,
                        plugin,
                        "unknown",
                        supplier_ref,
                        "TIMEOUT",
                        None,
                        30,
                        start,
                        start + took,
                        cost,
                        False,
                    )
                )
                detail = "30 status queries left the outcome open (TIMEOUT)"
                rows["order_events"].append((order_no, start + took, "review", "system", detail))
                return made, "review", None
            if final == "failed":
                code, message = rng.choice(FAIL_CODES[plugin])
            else:
                code, message = ("1", "充值成功") if plugin == "juhe" else ("SUCCESSFUL", None)
            queries = min(8, int(took / 5000))
            finished = start + took
            if plan["resolved"]:
                code, message, queries = "MANUAL", "供应商后台确认", 30
                operator = rng.choice(OPERATORS)
                review_at = start + took
                finished = review_at + rng.randrange(600_000, 3 * 3_600_000)
                finished = min(finished, self.end)
                events = rows["order_events"]
                detail = "30 status queries left the outcome open (TIMEOUT)"
                events.append((order_no, review_at, "review", "system", detail))
                events.append(
                    (order_no, finished, "resolved", operator, f"{final}: 供应商后台确认")
                )
            made.append(
                (
                    ref,
                    order_no,
                    seq,
                    plugin,
                    final,
                    supplier_ref,
                    code,
                    message,
                    queries,
                    start,
                    finished,
                    cost,
                    False,
                )
            )
        return made, final, finished

    def money(self, app_id, order_no, price, at, final, finished, rows) -> None:
        ledger = rows["ledger"]
        ledger.append(
            (app_id, "hold", price, order_no, f"hold:{order_no}", "下单冻结", "system", at)
        )
        if final == "succeeded":
            ledger.append(
                (
                    app_id,
                    "capture",
                    price,
                    order_no,
                    f"settle:{order_no}",
                    "充值成功扣款",
                    "system",
                    finished,
                )
            )
            self.totals.captured[app_id] += price
        elif final == "failed":
            ledger.append(
                (
                    app_id,
                    "release",
                    price,
                    order_no,
                    f"settle:{order_no}",
                    "充值失败解冻退回",
                    "system",
                    finished,
                )
            )
        else:
            self.totals.held[app_id] += price
        spent = self.totals.captured[app_id] + self.totals.held[app_id]
        # Partners top their account up before it runs dry, a few times a week.
        while self.totals.credited[app_id] < spent + 2_000_000:
            amount = self.rng.choice((5_000_000, 10_000_000, 20_000_000))
            key = f"credit:{uuid.UUID(int=self.rng.getrandbits(128)).hex}"
            ledger.append((app_id, "credit", amount, None, key, "预付款充值", "lina", at - 1))
            self.totals.credited[app_id] += amount

    def notification(self, app_id: str, order_no: str, url: str, finished: int) -> tuple:
        rng = self.rng
        if app_id == self.broken_app and finished > self.broken_since:
            tries = 1 + (self.end - finished) // 300_000
            error = "HTTP 502 from the partner"
            next_at = self.end + rng.randrange(1000, 60_000)
            return (order_no, app_id, url, tries, next_at, None, None, None, error, finished)
        if rng.random() < 0.0002:  # given up after a day of retries
            error = "connection refused"
            return (order_no, app_id, url, 12, None, None, None, None, error, finished)
        tries = 1 if rng.random() < 0.97 else rng.randrange(2, 5)
        delivered = min(self.end, finished + rng.randrange(30, 400) + (tries - 1) * 60_000)
        return (order_no, app_id, url, tries, None, None, None, delivered, None, finished)


# -- writers ---------------------------------------------------------------------------------


async def prepare(url: str, key_file: Path) -> Database:
    """The schema through the real migrations, the apps through the real AppStore."""
    os.environ[MASTER_KEY_FILE_ENV] = str(key_file)
    db = Database(url)
    await upgrade(db)
    store = AppStore(db)
    for app_id, company, _share, notify_url, _prefix in APPS:
        await store.add(app_id, company)
        if notify_url:
            await store.set_notify_url(app_id, notify_url, actor="bench", reason="console seed")
    return db


def insert_sql(table: str, columns: list[str]) -> str:
    marks = ",".join("?" * len(columns))
    return f"INSERT INTO {table} ({','.join(columns)}) VALUES ({marks})"


def seed_sqlite(path: str, generator: Generator) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1000000")
    # Indexes built once over the loaded rows cost a fraction of keeping them up to date
    # row by row; they are the migrations' own, recreated from their stored definitions.
    indexes = [
        (name, sql)
        for name, sql in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        )
    ]
    for name, _sql in indexes:
        conn.execute(f"DROP INDEX {name}")
    for chunk in generator.chunks():
        conn.execute("BEGIN")
        for table, rows in chunk.items():
            conn.executemany(insert_sql(table, TABLES[table]), rows)
        conn.execute("COMMIT")
        count_rows(generator.totals, chunk)
    for _name, sql in indexes:
        conn.execute(sql)
    write_accounts_sqlite(conn, generator.totals)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def write_accounts_sqlite(conn: sqlite3.Connection, totals: Totals) -> None:
    conn.executemany(
        "UPDATE accounts SET credited = ?, captured = ?, held = ?, updated_at = ? WHERE app_id = ?",
        [
            (totals.credited[app], totals.captured[app], totals.held[app], now_ms(), app)
            for app, *_ in APPS
        ],
    )


async def seed_postgres(url: str, generator: Generator) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        for chunk in generator.chunks():
            async with conn.transaction():
                for table, rows in chunk.items():
                    if rows:
                        await conn.copy_records_to_table(table, records=rows, columns=TABLES[table])
            count_rows(generator.totals, chunk)
        totals = generator.totals
        await conn.executemany(
            "UPDATE accounts SET credited = $1, captured = $2, held = $3, updated_at = $4"
            " WHERE app_id = $5",
            [
                (totals.credited[app], totals.captured[app], totals.held[app], now_ms(), app)
                for app, *_ in APPS
            ],
        )
        # A database that has been running for a month has been vacuumed and analysed.
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def count_rows(totals: Totals, chunk: dict[str, list[tuple]]) -> None:
    for table, rows in chunk.items():
        totals.rows[table] += len(rows)
    print(
        "  " + ", ".join(f"{table} {count:,}" for table, count in totals.rows.items()),
        flush=True,
    )


async def seed(url: str, orders: int, days: float, key_file: Path) -> Totals:
    db = await prepare(url, key_file)
    await db.dispose()
    generator = Generator(orders, days)
    if url.startswith("sqlite"):
        seed_sqlite(url.split("///", 1)[1], generator)
    else:
        await seed_postgres(url, generator)
    return generator.totals


def database_url(target: str) -> str:
    return target if "://" in target else f"sqlite+aiosqlite:///{Path(target).resolve()}"


def default_key_file(target: str) -> str:
    if "://" in target:
        return os.environ.get(MASTER_KEY_FILE_ENV) or "var/master.key"
    return f"{target}.master.key"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="a SQLite file (must not exist) or a PostgreSQL URL")
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--key-file", help="the master key file (default: <file>.master.key)")
    args = parser.parse_args()
    url = database_url(args.target)
    if url.startswith("sqlite") and Path(args.target).exists():
        sys.exit(f"{args.target} exists: the seed writes a new database")
    key_file = Path(args.key_file or default_key_file(args.target))
    started = time.perf_counter()
    asyncio.run(seed(url, args.orders, args.days, key_file))
    print(f"seeded {args.orders:,} orders in {time.perf_counter() - started:.1f} s: {url}")


if __name__ == "__main__":
    main()
