"""Leases and heartbeats, directly against a real database: a held row is taken over only
from a dead owner (no worker row, or a stale heartbeat), and a dead or stopping worker's
rows are brought forward so that they are taken over at once rather than when their
leases end."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sqlalchemy import Connection, insert, select, update

from core.clock import now_ms
from core.config import Config, DispatchConfig, NotifyConfig
from core.db import Database, notifications, workers
from core.leases import beat, lease_due, make_due, reap_workers, sign_off, stale_workers
from core.notifier import Notifier
from core.notify import Notification, Outbox

TAKEOVER_MS = 5_000
LEASE_MS = 60_000
KIND = "notifier"


def worker(conn: Connection, owner: str, silent_for_ms: int = 0) -> None:
    """A worker whose last heartbeat was ``silent_for_ms`` ago."""
    beat(conn, owner, KIND)
    conn.execute(
        update(workers)
        .where(workers.c.owner == owner)
        .values(heartbeat_at=workers.c.heartbeat_at - silent_for_ms)
    )


def held(conn: Connection, owner: str, due_in_ms: int, lease_ms: int = LEASE_MS) -> int:
    """A notification ``owner`` holds, due again in ``due_in_ms``."""
    now = now_ms()
    return conn.execute(
        insert(notifications)
        .values(
            order_no=f"o{now}{owner}{due_in_ms}",
            app_id="app",
            url="http://partner.example/notify",
            attempts=0,
            next_attempt_at=now + due_in_ms,
            lease_owner=owner,
            lease_until=now + lease_ms,
            created_at=now,
        )
        .returning(notifications.c.id)
    ).scalar_one()


def release(conn: Connection, owners: Sequence[str]) -> int:
    return make_due(conn, notifications, notifications.c.next_attempt_at, owners, LEASE_MS)


async def claim(db: Database, takeover_ms: int | None = TAKEOVER_MS) -> set[int]:
    rows = await db.write(
        lambda conn: lease_due(
            conn,
            notifications,
            notifications.c.next_attempt_at,
            "taker",
            LEASE_MS,
            100,
            (notifications.c.id,),
            takeover_ms=takeover_ms,
        )
    )
    return {id_ for (id_,) in rows}


async def owners(db: Database) -> set[str]:
    return set(await db.read(lambda conn: conn.execute(select(workers.c.owner)).scalars()))


async def test_a_due_row_still_held_is_taken_only_from_a_dead_owner(db: Database) -> None:
    def setup(conn: Connection) -> dict[str, int]:
        worker(conn, "alive")
        worker(conn, "stale", silent_for_ms=TAKEOVER_MS + 1_000)
        # Due (as a callback's wake makes a held order), lease far from its end.
        return {owner: held(conn, owner, due_in_ms=-1) for owner in ("alive", "stale", "gone")}

    ids = await db.write(setup)
    # The rule without heartbeats: a lease is free only once it has run out.
    assert await claim(db, takeover_ms=None) == set()
    assert await claim(db) == {ids["stale"], ids["gone"]}
    assert await claim(db) == set()


async def test_reaping_a_dead_worker_makes_what_it_held_due_now(db: Database) -> None:
    def setup(conn: Connection) -> dict[str, int]:
        worker(conn, "alive")
        worker(conn, "dead", silent_for_ms=TAKEOVER_MS + 1_000)
        return {
            "dead": held(conn, "dead", due_in_ms=LEASE_MS - 1_000),
            "alive": held(conn, "alive", due_in_ms=LEASE_MS - 1_000),
        }

    ids = await db.write(setup)
    assert await claim(db) == set(), "nothing is due yet"
    stale = await db.read(lambda conn: stale_workers(conn, KIND, "alive", TAKEOVER_MS))
    assert stale == ["dead"]
    assert await db.read(lambda conn: stale_workers(conn, "dispatcher", "x", TAKEOVER_MS)) == []
    assert await db.read(lambda conn: stale_workers(conn, KIND, "dead", TAKEOVER_MS)) == []

    reaped = await db.write(lambda conn: reap_workers(conn, stale, TAKEOVER_MS, release))
    assert reaped == ["dead"]
    assert await owners(db) == {"alive"}
    assert await claim(db) == {ids["dead"]}


async def test_a_worker_that_beat_since_it_looked_stale_is_not_reaped(db: Database) -> None:
    await db.write(lambda conn: worker(conn, "slow", silent_for_ms=TAKEOVER_MS + 1_000))
    stale = await db.read(lambda conn: stale_workers(conn, KIND, "me", TAKEOVER_MS))
    assert stale == ["slow"]
    assert await db.write(lambda conn: beat(conn, "slow", KIND)) is False  # beats again
    assert await db.write(lambda conn: reap_workers(conn, stale, TAKEOVER_MS, release)) == []
    assert await owners(db) == {"slow"}


async def test_a_worker_signing_off_hands_over_what_it_held(db: Database) -> None:
    def setup(conn: Connection) -> int:
        worker(conn, "leaving")
        return held(conn, "leaving", due_in_ms=LEASE_MS - 1_000)

    row = await db.write(setup)
    await db.write(lambda conn: sign_off(conn, "leaving", release))
    assert await owners(db) == set()
    assert await claim(db) == {row}


async def test_a_stopped_notifier_hands_its_delivery_to_another_at_once(db: Database) -> None:
    """Two notifiers on one database (as two processes would be): the first holds a
    delivery when it stops; the second delivers it long before the lease would end."""
    # Stopping hands the delivery over (sign-off), not a takeover, which would come only
    # after takeover_seconds, later than the 5 s waited for below. Short takeovers fenced
    # the first notifier on a loaded machine: a heartbeat write late by 0.45 s on
    # PostgreSQL left its claim to the 60 s lease, and it never had the delivery in hand.
    config = Config(
        dispatch=DispatchConfig(heartbeat_seconds=0.1, takeover_seconds=10.0),
        notify=NotifyConfig(timeout=60.0, scan_interval=0.05),
    )
    await db.write(lambda conn: held(conn, "nobody", due_in_ms=-1))
    outbox = Outbox(db)
    in_hand: asyncio.Future[Notification] = asyncio.get_running_loop().create_future()
    delivered: asyncio.Future[Notification] = asyncio.get_running_loop().create_future()

    async def hold(notification: Notification) -> str | None:
        in_hand.set_result(notification)
        await asyncio.Event().wait()  # a partner that never answers
        return None

    async def accept(notification: Notification) -> str | None:
        delivered.set_result(notification)
        return None

    first = Notifier(outbox, hold, lambda: config)
    first.start()
    taken = await asyncio.wait_for(in_hand, timeout=5)
    second = Notifier(outbox, accept, lambda: config)
    second.start()
    try:
        await first.stop()
        assert (await asyncio.wait_for(delivered, timeout=5)).id == taken.id
    finally:
        await second.stop()
    assert await owners(db) == set()


async def test_a_late_failure_from_a_worker_taken_for_dead_leaves_the_new_owner_be(
    db: Database,
) -> None:
    """A notifier taken for dead may still finish its delivery. Its failure is not
    recorded over the worker that took the notification over (which holds it and will
    record its own outcome); an acknowledged delivery is recorded whoever holds it."""
    # Due, its last lease over: free for anyone.
    notification_id = await db.write(lambda conn: held(conn, "nobody", -1, lease_ms=-1))
    outbox = Outbox(db)
    [first] = await outbox.claim_due("first", LEASE_MS, 10)
    await db.write(lambda conn: Outbox.make_due(conn, ["first"], LEASE_MS))  # its takeover
    [second] = await outbox.claim_due("second", LEASE_MS, 10, takeover_ms=TAKEOVER_MS)
    assert first.id == second.id == notification_id

    await outbox.failed(notification_id, "first", "partner timed out", retry_in_ms=5_000)
    assert await _outbox_row(db, notification_id) == ("second", 0, None)

    await outbox.failed(notification_id, "second", "HTTP 502", retry_in_ms=5_000)
    assert await _outbox_row(db, notification_id) == (None, 1, "HTTP 502")

    await outbox.delivered(notification_id)  # the first one's answer, arriving last
    row = await db.read(
        lambda conn: conn.execute(
            select(notifications.c.delivered_at, notifications.c.next_attempt_at).where(
                notifications.c.id == notification_id
            )
        ).one()
    )
    assert row.delivered_at is not None and row.next_attempt_at is None


async def _outbox_row(db: Database, notification_id: int) -> tuple:
    """(lease_owner, attempts, last_error) of one notification."""
    return await db.read(
        lambda conn: tuple(
            conn.execute(
                select(
                    notifications.c.lease_owner,
                    notifications.c.attempts,
                    notifications.c.last_error,
                ).where(notifications.c.id == notification_id)
            ).one()
        )
    )
