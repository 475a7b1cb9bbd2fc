"""The console's overview numbers, against a real database (both backends)."""

from __future__ import annotations

import os
import socket
from datetime import datetime
from functools import partial

import pytest
from sqlalchemy import update

from core.apps import AppStore
from core.clock import BEIJING
from core.db import Database, workers
from core.leases import beat
from core.ledger import Ledger
from core.overview import (
    OverviewReader,
    PluginStats,
    StateCounts,
    overview,
    plugin_stats,
    read_overview,
)
from tests.order_rows import Shop, attempt_row, notification_row, number_at, order_row, write_rows

MINUTE, HOUR = 60_000, 3_600_000
# 12:30:30 Beijing time: the current minute (the sparkline's last) began at 12:30:00.
NOW = int(datetime(2026, 11, 20, 12, 30, 30, tzinfo=BEIJING).timestamp() * 1000)


def order(name: str, ago: int, state: str) -> tuple[str, int, dict]:
    at = NOW - ago
    no = number_at(at, seq=len(name))
    return no, at, order_row(no, at, state=state, cstm_order_no=name)


@pytest.fixture
async def history(db: Database) -> dict[str, str]:
    """Seven orders at known times, with attempts, review events and notifications."""
    o1, t1, r1 = order("o1", 10 * MINUTE, "succeeded")
    o2, t2, r2 = order("o2", 5 * MINUTE, "failed")
    o3, t3, r3 = order("o3", 30_000, "pending")
    o4, t4, r4 = order("o4", 2 * HOUR, "succeeded")
    o5, t5, r5 = order("o5", 23 * HOUR, "review")
    o6, t6, r6 = order("o6", 30 * HOUR, "review")
    o7, t7, r7 = order("o7", 3 * HOUR, "failed")
    await write_rows(
        db,
        orders=[r1, r2, r3, r4, r5, r6, r7],
        attempts=[
            attempt_row(o1, 1, "juhe", "succeeded", t1 + 100, 1000),
            attempt_row(o2, 1, "juhe", "failed", t2 + 100, 50, refused=True),
            attempt_row(o2, 2, "reloadly", "failed", t2 + 200, 5000),
            attempt_row(o3, 1, "reloadly", "pending", t3 + 100, 0),
            attempt_row(o4, 1, "juhe", "succeeded", t4 + 100, 2000),
            attempt_row(o5, 1, "sandbox", "unknown", t5 + 100, 0),
            attempt_row(o6, 1, "sandbox", "unknown", t6 + 100, 0),
        ],
        order_events=[
            {"order_no": o5, "at": t5 + HOUR, "kind": "review", "actor": "system", "detail": ""},
            {"order_no": o6, "at": t6 + HOUR, "kind": "review", "actor": "system", "detail": ""},
        ],
        # In the order they were queued, as the service writes them.
        notifications=[
            notification_row(o4, t4 + 3000, next_attempt_at=NOW + 5_000, attempts=9),
            notification_row(o7, t7 + 1000, attempts=12, last_error="connection refused"),
            notification_row(o1, t1 + 2000, delivered_at=t1 + 2100),
            notification_row(o2, t2 + 6000, next_attempt_at=NOW + 60_000, attempts=3),
        ],
    )
    return {"o1": o1, "o4": o4, "o6": o6, "t4": t4, "t6": t6}


async def test_orders_by_state_over_the_last_hour_and_day(db: Database, history) -> None:
    seen = await db.read(lambda conn: overview(conn, NOW))
    assert seen.at == NOW
    assert seen.last_hour == StateCounts(NOW - HOUR, 3, {"succeeded": 1, "failed": 1, "pending": 1})
    assert seen.last_day == StateCounts(
        NOW - 24 * HOUR, 6, {"succeeded": 2, "failed": 2, "pending": 1, "review": 1}
    )


async def test_per_plugin_attempts_success_and_latency(db: Database, history) -> None:
    seen = await db.read(lambda conn: overview(conn, NOW))
    # A refusal counts as a failure, but its instant answer is no latency figure.
    assert seen.plugins_hour == [
        PluginStats("juhe", 2, 1, 1, 0, 0.5, 1000, 1000, 1),
        PluginStats("reloadly", 2, 0, 1, 1, 0.0, 5000, 5000, 1),
    ]
    assert seen.plugins_day == [
        PluginStats("juhe", 3, 2, 1, 0, 2 / 3, 1000, 2000, 2),
        PluginStats("reloadly", 2, 0, 1, 1, 0.0, 5000, 5000, 1),
        PluginStats("sandbox", 1, 0, 0, 1, None, None, None, 0),
    ]
    # The latency sample is the newest settled attempts: with room for one, o1's.
    newest = await db.read(lambda conn: plugin_stats(conn, NOW - 24 * HOUR, sample=1))
    assert (newest[0].plugin, newest[0].p95_ms, newest[0].latency_sample) == ("juhe", 1000, 1)


async def test_review_queue_and_notification_backlog(db: Database, history) -> None:
    seen = await db.read(lambda conn: overview(conn, NOW))
    assert (seen.review.size, seen.review.oldest_order_no) == (2, history["o6"])
    assert seen.review.oldest_accepted_at == history["t6"]
    assert seen.review.oldest_review_at == history["t6"] + HOUR
    # o2's and o4's are waiting; o1's was delivered, o7's given up.
    assert seen.notifications.waiting == 2
    assert seen.notifications.oldest_created_at == history["t4"] + 3000


async def test_orders_per_minute_for_the_sparkline(db: Database, history) -> None:
    seen = await db.read(lambda conn: overview(conn, NOW))
    assert len(seen.per_minute) == 60
    assert seen.per_minute_from == NOW - 30_000 - 59 * MINUTE
    # o1 at 12:20:30, o2 at 12:25:30, o3 at 12:30:00 (the current minute).
    assert {i: n for i, n in enumerate(seen.per_minute) if n} == {49: 1, 54: 1, 59: 1}


async def test_an_empty_database(db: Database) -> None:
    seen = await read_overview(db)
    assert (seen.last_hour.total, seen.last_day.by_state, seen.plugins_day) == (0, {}, [])
    assert (seen.review.size, seen.review.oldest_order_no) == (0, None)
    assert (seen.notifications.waiting, seen.notifications.oldest_created_at) == (0, None)
    assert seen.per_minute == [0] * 60


async def test_orders_placed_through_the_store_show_at_once(db: Database) -> None:
    await AppStore(db).add("shop", "商户")
    await Ledger(db).credit("shop", 100_000, "test funds", "test")
    shop = Shop(db)
    await shop.order("shop", "a", plugins=("sandbox",), outcome="succeeded")
    await shop.order("shop", "b", plugins=("juhe", "sandbox"), outcome="failed")
    await shop.order("shop", "c", plugins=("sandbox",), outcome="review")
    seen = await read_overview(db)
    assert seen.last_hour.by_state == {"succeeded": 1, "failed": 1, "review": 1}
    assert sum(seen.per_minute[-2:]) == 3  # this minute, or the one before if it just turned
    by_plugin = {stats.plugin: stats for stats in seen.plugins_hour}
    assert (by_plugin["juhe"].attempts, by_plugin["juhe"].failed) == (1, 1)
    sandbox = by_plugin["sandbox"]
    assert (sandbox.attempts, sandbox.succeeded, sandbox.failed, sandbox.open) == (3, 1, 1, 1)
    assert sandbox.success_rate == 0.5 and sandbox.latency_sample == 2
    assert seen.review.size == 1


async def test_a_refreshing_page_reads_the_days_plugin_figures_once_a_minute(
    db: Database, history
) -> None:
    reader = OverviewReader(db)
    first = await reader.read(NOW)
    assert first.plugins_day_at == NOW and first.plugins_hour[0].attempts == 2
    late, at = number_at(NOW + 5_000, seq=9), NOW + 5_000
    await write_rows(
        db,
        orders=[order_row(late, at, state="succeeded")],
        attempts=[attempt_row(late, 1, "juhe", "succeeded", at + 100, 700)],
    )
    # Ten seconds on: everything but the day's plugin figures is read again.
    soon = await reader.read(NOW + 10_000)
    assert soon.plugins_hour[0].attempts == 3 and soon.last_hour.total == 4
    assert soon.plugins_day == first.plugins_day and soon.plugins_day_at == NOW
    # A minute on, the day's figures are read afresh.
    later = await reader.read(NOW + 61_000)
    assert later.plugins_day_at == NOW + 61_000 and later.plugins_day[0].attempts == 4


async def test_background_workers_by_their_heartbeat(db: Database) -> None:
    await db.write(partial(beat, owner="notifier-b", kind="notifier"))
    await db.write(partial(beat, owner="dispatcher-a", kind="dispatcher"))
    # The notifier's heartbeat stopped a minute and a half ago.
    await db.write(
        lambda conn: conn.execute(
            update(workers)
            .where(workers.c.owner == "notifier-b")
            .values(heartbeat_at=workers.c.heartbeat_at - 90_000)
        )
    )
    dispatcher, notifier = (await read_overview(db)).workers
    assert (dispatcher.kind, notifier.kind) == ("dispatcher", "notifier")
    assert dispatcher.pid == notifier.pid == os.getpid()
    assert dispatcher.host == socket.gethostname()
    assert 0 <= dispatcher.silent_ms < 5_000
    assert 90_000 <= notifier.silent_ms < 95_000
