"""The console's overview numbers, each read from an index over a bounded range.

Order numbers are time-ordered (core/ids.py), and an attempt's reference is its order
number followed by ``A<seq>``, so "the last hour" is a key range of the orders' state
index and of the attempts' primary key; nothing here reads the whole of a table:

- orders by state: ``ix_orders_state (state, order_no)`` for every state, the window's
  range of each (read from the index alone);
- per plugin: the attempts of the orders accepted in the window (primary key range);
  latency percentiles from at most ``LATENCY_SAMPLE`` of the newest settled ones;
- the review queue: its ``ix_orders_state`` range; the oldest's review event;
- the notification backlog: ``ix_notifications_next_attempt_at`` (delivered and given-up
  notifications have no next attempt); the oldest is the lowest id, as notifications
  are numbered in the order they are queued;
- orders per minute: the primary key range of the last hour, grouped by the minute
  written in the order number;
- the background workers: the workers table, a few rows per instance.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import msgspec
from sqlalchemy import Connection, func, select

from core.clock import now_ms
from core.db import Database, attempts, notifications, order_events, orders, workers
from core.ids import order_no_floor, taken_at
from core.leases import database_now_ms
from core.orders import TERMINAL, State

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
MINUTE_MS = 60_000
# Settled attempts per plugin whose latency makes the percentiles.
LATENCY_SAMPLE = 1000
SPARK_MINUTES = 60
# Rows of the workers table on the overview: a few per instance.
WORKERS_SHOWN = 100


class StateCounts(msgspec.Struct, frozen=True):
    """Orders accepted since ``since`` (Unix ms), by their state now."""

    since: int
    total: int
    by_state: dict[str, int]


class PluginStats(msgspec.Struct, frozen=True):
    """A plugin's attempts for the orders accepted in a window.

    ``success_rate``: succeeded / settled (refusals count as failures), None before any
    attempt settled. Latency: from an attempt's start to its settlement
    (``updated_at - created_at``; refusals, answered at once, left out), over the newest
    ``latency_sample`` settled attempts.
    """

    plugin: str
    attempts: int
    succeeded: int
    failed: int
    open: int
    success_rate: float | None
    p50_ms: int | None
    p95_ms: int | None
    latency_sample: int


class ReviewQueue(msgspec.Struct, frozen=True):
    size: int
    oldest_order_no: str | None
    # When the oldest order in review was accepted, and when it went to review.
    oldest_accepted_at: int | None
    oldest_review_at: int | None


class NotificationBacklog(msgspec.Struct, frozen=True):
    """Notifications neither delivered nor given up."""

    waiting: int
    oldest_created_at: int | None


class WorkerBeat(msgspec.Struct, frozen=True):
    """A background worker (dispatcher or notifier) as its heartbeat row shows it."""

    kind: str
    host: str
    pid: int
    started_at: int
    # How long ago its last heartbeat was, by the database's clock (which wrote it).
    silent_ms: int


class Overview(msgspec.Struct, frozen=True):
    at: int
    last_hour: StateCounts
    last_day: StateCounts
    plugins_hour: list[PluginStats]
    plugins_day: list[PluginStats]
    review: ReviewQueue
    notifications: NotificationBacklog
    # Orders accepted in each of the last SPARK_MINUTES minutes, oldest first; the
    # first minute starts at ``per_minute_from`` (Unix ms); the last is the current one.
    per_minute: list[int]
    per_minute_from: int
    # When plugins_day was read (OverviewReader reuses it for a minute).
    plugins_day_at: int
    # Every instance's background workers (core/leases.py), at most WORKERS_SHOWN.
    workers: list[WorkerBeat]


def state_counts(conn: Connection, since: int) -> StateCounts:
    index = orders.c.state.in_([str(state) for state in State])
    query = (
        select(orders.c.state, func.count())
        .where(index, orders.c.order_no >= order_no_floor(since))
        .group_by(orders.c.state)
    )
    if conn.dialect.name == "sqlite":
        query = query.with_hint(orders, "INDEXED BY ix_orders_state", "sqlite")
    counts = {state: count for state, count in conn.execute(query)}
    return StateCounts(since, sum(counts.values()), counts)


def plugin_stats(conn: Connection, since: int, sample: int = LATENCY_SAMPLE) -> list[PluginStats]:
    floor = order_no_floor(since)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for plugin, state, count in conn.execute(
        select(attempts.c.plugin, attempts.c.state, func.count())
        .where(attempts.c.reference >= floor)
        .group_by(attempts.c.plugin, attempts.c.state)
    ):
        counts[plugin][state] += count
    stats = []
    for plugin in sorted(counts):
        by_state = counts[plugin]
        succeeded, failed = by_state[State.SUCCEEDED], by_state[State.FAILED]
        settled = succeeded + failed
        latencies = _latencies(conn, plugin, floor, sample)
        stats.append(
            PluginStats(
                plugin=plugin,
                attempts=sum(by_state.values()),
                succeeded=succeeded,
                failed=failed,
                open=sum(by_state.values()) - settled,
                success_rate=succeeded / settled if settled else None,
                p50_ms=_percentile(latencies, 0.50),
                p95_ms=_percentile(latencies, 0.95),
                latency_sample=len(latencies),
            )
        )
    return stats


def _latencies(conn: Connection, plugin: str, floor: str, sample: int) -> list[int]:
    rows = conn.execute(
        select(attempts.c.updated_at - attempts.c.created_at)
        .where(
            attempts.c.reference >= floor,
            attempts.c.plugin == plugin,
            attempts.c.state.in_([str(state) for state in TERMINAL]),
            attempts.c.refused.is_(False),
        )
        .order_by(attempts.c.reference.desc())
        .limit(sample)
    )
    return sorted(latency for (latency,) in rows)


def _percentile(ordered: list[int], share: float) -> int | None:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * share // 1))  # ceil(n * share)
    return int(ordered[int(rank) - 1])


def review_queue(conn: Connection) -> ReviewQueue:
    query = select(func.count(), func.min(orders.c.order_no)).where(orders.c.state == State.REVIEW)
    size, oldest = conn.execute(query).one()
    if oldest is None:
        return ReviewQueue(0, None, None, None)
    review_at = conn.execute(
        select(func.max(order_events.c.at)).where(
            order_events.c.order_no == oldest, order_events.c.kind == "review"
        )
    ).scalar()
    return ReviewQueue(size, oldest, taken_at(oldest), review_at)


def notification_backlog(conn: Connection) -> NotificationBacklog:
    waiting, oldest_id = conn.execute(
        select(func.count(), func.min(notifications.c.id)).where(
            notifications.c.next_attempt_at.is_not(None)
        )
    ).one()
    if oldest_id is None:
        return NotificationBacklog(0, None)
    created = conn.execute(
        select(notifications.c.created_at).where(notifications.c.id == oldest_id)
    ).scalar()
    return NotificationBacklog(waiting, created)


def per_minute(conn: Connection, now: int) -> tuple[list[int], int]:
    """Orders accepted per minute over the last SPARK_MINUTES minutes, and the first
    minute's start."""
    first = (now // MINUTE_MS - (SPARK_MINUTES - 1)) * MINUTE_MS
    # "TP" + yyyyMMddHHmm: the minute an order number was taken in, Beijing time.
    minutes = [order_no_floor(first + i * MINUTE_MS)[:14] for i in range(SPARK_MINUTES)]
    minute = func.substr(orders.c.order_no, 1, 14)
    counts = dict(
        conn.execute(
            select(minute, func.count())
            .where(orders.c.order_no >= order_no_floor(first))
            .group_by(minute)
        ).all()
    )
    return [counts.get(m, 0) for m in minutes], first


def worker_beats(conn: Connection) -> list[WorkerBeat]:
    """The workers' rows: a worker stopped cleanly has none, one taken for dead loses its
    row at the takeover, so a row silent for longer than ``takeover_seconds`` is a worker
    that died and whose work nobody has taken over yet."""
    silent = database_now_ms(conn) - workers.c.heartbeat_at
    rows = conn.execute(
        select(workers.c.kind, workers.c.host, workers.c.pid, workers.c.started_at, silent)
        .order_by(workers.c.kind, workers.c.host, workers.c.pid)
        .limit(WORKERS_SHOWN)
    )
    return [WorkerBeat(*row) for row in rows]


def overview(conn: Connection, now: int | None = None) -> Overview:
    now = now_ms() if now is None else now
    return _assemble(now, plugin_stats(conn, now - DAY_MS), now, _all_but_the_day(conn, now))


def _all_but_the_day(conn: Connection, now: int) -> dict:
    sparkline, spark_from = per_minute(conn, now)
    return {
        "last_hour": state_counts(conn, now - HOUR_MS),
        "last_day": state_counts(conn, now - DAY_MS),
        "plugins_hour": plugin_stats(conn, now - HOUR_MS),
        "review": review_queue(conn),
        "notifications": notification_backlog(conn),
        "per_minute": sparkline,
        "per_minute_from": spark_from,
        "workers": worker_beats(conn),
    }


def _assemble(now: int, plugins_day: list[PluginStats], day_at: int, rest: dict) -> Overview:
    return Overview(at=now, plugins_day=plugins_day, plugins_day_at=day_at, **rest)


async def read_overview(db: Database, now: int | None = None) -> Overview:
    """The overview, its costliest part (the day's attempts per plugin) read beside the
    rest on a second connection."""
    now = now_ms() if now is None else now
    plugins_day, rest = await asyncio.gather(
        db.read_aside(lambda conn: plugin_stats(conn, now - DAY_MS)),
        db.read_aside(lambda conn: _all_but_the_day(conn, now)),
    )
    return _assemble(now, plugins_day, now, rest)


class OverviewReader:
    """The overview for a page that refreshes itself every few seconds.

    The day's per-plugin figures (a day of attempts: the costliest read) are read at most
    once per ``day_every_ms`` and reused in between; a day's figures move little in a
    minute. Everything else is read each time.
    """

    def __init__(self, db: Database, day_every_ms: int = MINUTE_MS) -> None:
        self.db = db
        self.day_every_ms = day_every_ms
        self._day: tuple[int, list[PluginStats]] | None = None

    async def read(self, now: int | None = None) -> Overview:
        now = now_ms() if now is None else now
        day = self._day
        if day is not None and 0 <= now - day[0] < self.day_every_ms:
            rest = await self.db.read_aside(lambda conn: _all_but_the_day(conn, now))
            return _assemble(now, day[1], day[0], rest)
        seen = await read_overview(self.db, now)
        self._day = (now, seen.plugins_day)
        return seen
