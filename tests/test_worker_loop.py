"""When the leased-worker loop (core/worker_loop.py), which the dispatcher and the notifier
share, looks for work again: at once after a full claim, and after a short one only when
woken (or at the scan), so that a quiet service does not spend a transaction on a claim
that finds nothing after every order; and how much it claims: twice as much after each
full claim, up to max_claim_batch, so that under a backlog it keeps pace."""

from __future__ import annotations

import asyncio

from core.db import Database
from core.worker_loop import LeasedWorker, LoopSettings
from topup.testing import eventually_async

# A scan too far off to matter: every claim here is one the loop chose to make.
SETTINGS = LoopSettings(
    concurrency=100,
    claim_batch=4,
    max_claim_batch=16,
    scan_interval=60.0,
    heartbeat_seconds=1.0,
    takeover_seconds=5.0,
)


class ScriptedWork:
    """Each claim takes the next batch of the script (none once it runs out)."""

    def __init__(self, *batches: list[int]) -> None:
        self._batches = list(batches)
        self.claims = 0
        self.limits: list[int] = []
        self.handled: list[int] = []

    async def claim(self, _owner: str, limit: int) -> list[int]:
        self.claims += 1
        self.limits.append(limit)
        return self._batches.pop(0)[:limit] if self._batches else []

    async def handle(self, item: int) -> None:
        self.handled.append(item)


def start_worker(db: Database, work: ScriptedWork) -> LeasedWorker[int]:
    worker = LeasedWorker(
        db, "test", work.claim, work.handle, lambda: SETTINGS, lambda _conn, _owners: 0
    )
    worker.start()
    return worker


async def test_a_full_claim_is_followed_by_another_at_once(db: Database) -> None:
    work = ScriptedWork([1, 2, 3, 4], [5])
    worker = start_worker(db, work)
    try:
        await eventually_async(lambda: sorted(work.handled) == [1, 2, 3, 4, 5], what="both")
    finally:
        await worker.stop()


async def test_a_short_claim_waits_to_be_woken_before_claiming_again(db: Database) -> None:
    work = ScriptedWork([1], [2])
    worker = start_worker(db, work)
    try:
        await eventually_async(lambda: 1 in work.handled, what="the first claim handled")
        # The loop claimed again within a turn or two when it did so after any claim.
        for _ in range(20):
            await asyncio.sleep(0)
        assert work.claims == 1
        worker.wake()
        await eventually_async(lambda: work.handled == [1, 2], what="the claim after the wake")
        assert work.claims == 2
    finally:
        await worker.stop()


async def test_each_full_claim_doubles_the_next_up_to_the_most_and_a_short_one_starts_over(
    db: Database,
) -> None:
    # A backlog: every claim comes back full until the fifth, which finds 3.
    full = [list(range(n * 100, n * 100 + 16)) for n in range(4)]
    work = ScriptedWork(*full, [500, 501, 502], [600])
    worker = start_worker(db, work)
    try:
        await eventually_async(lambda: 502 in work.handled, what="the short claim handled")
        assert work.limits == [4, 8, 16, 16, 16]
        worker.wake()
        await eventually_async(lambda: 600 in work.handled, what="the claim after the wake")
        assert work.limits[-1] == 4
    finally:
        await worker.stop()
