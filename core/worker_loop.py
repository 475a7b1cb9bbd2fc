"""The leased-worker loop that the dispatcher and the notifier share.

A worker claims due items (with a lease on each, core/leases.py), handles each in a task
of its own, up to a concurrency limit, and looks again at once when it was woken, when
a claim came back full, or else every scan interval. While claims come back full the
next one takes twice as many, up to ``max_claim_batch``: under a backlog the worker keeps
pace with what arrives, so that the process's one writer (and core) is shared between
accepting orders and finishing them rather than the backlog growing without end. What is
claimed and how an item is handled is the caller's policy; a failed item is logged and
left to its lease.

Beside that loop, in a task of its own so that a slow step never delays it, the worker
beats its heartbeat in the ``workers`` table every ``heartbeat_seconds`` and reaps
workers of its kind whose heartbeat is older than ``takeover_seconds``: their leases
are taken over at once rather than when they run out. A worker that cannot beat its
own heartbeat for nearly that long may have been reaped, so it claims nothing and
starts nothing until a beat succeeds again; what it is already doing goes on (a call
to a supplier cannot be taken back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Generic, Protocol, TypeVar

import msgspec

from core.db import Database
from core.leases import Release, beat, reap_workers, sign_off, stale_workers

T = TypeVar("T")

default_log = logging.getLogger("topup.worker")


class WorkerSettings(Protocol):
    """What the loop reads each round, so that a reload applies at once. The dispatcher's
    DispatchConfig is one."""

    @property
    def concurrency(self) -> int: ...
    @property
    def claim_batch(self) -> int: ...
    @property
    def max_claim_batch(self) -> int: ...
    @property
    def scan_interval(self) -> float: ...
    @property
    def heartbeat_seconds(self) -> float: ...
    @property
    def takeover_seconds(self) -> float: ...


class LoopSettings(msgspec.Struct, frozen=True):
    """A WorkerSettings put together from several sections of the configuration."""

    concurrency: int
    claim_batch: int
    max_claim_batch: int
    scan_interval: float
    heartbeat_seconds: float
    takeover_seconds: float


class LeasedWorker(Generic[T]):
    """Claims with ``claim(owner, limit)`` and handles each item with ``handle(item)``.

    ``release(conn, owners)`` makes the rows those owners hold due now (core.leases.make_due
    over the worker's table): run for dead workers of the same ``kind`` and for this one
    when it stops. ``after_claim`` runs after each round of the loop.
    """

    def __init__(
        self,
        db: Database,
        kind: str,
        claim: Callable[[str, int], Awaitable[Sequence[T]]],
        handle: Callable[[T], Awaitable[None]],
        settings: Callable[[], WorkerSettings],
        release: Release,
        *,
        after_claim: Callable[[], None] | None = None,
        log: logging.Logger = default_log,
        claiming: str = "work",
    ) -> None:
        self.owner = f"{kind}-{secrets.token_hex(6)}"
        self.kind = kind
        self._db = db
        self._claim = claim
        self._handle = handle
        self._settings = settings
        self._release = release
        self._after_claim = after_claim
        self._log = log
        self._claiming = claiming
        self._wake = asyncio.Event()
        # Set while the last heartbeat is fresh enough to rely on the leases (see _fresh).
        self._beating = asyncio.Event()
        self._fresh_until = 0.0
        self._fenced = False
        self._in_flight: set[asyncio.Task] = set()
        # The next claim's size: claim_batch, doubled after each full claim (_claim_round).
        self._claim_size = 0
        self._tasks: list[asyncio.Task] = []
        self._reaping: asyncio.Task | None = None
        self._started = False

    def wake(self) -> None:
        """Look for due work now rather than at the next scan."""
        self._wake.set()

    def start(self) -> None:
        self._started = True
        self._tasks = [
            asyncio.create_task(self._heartbeat(), name=f"topup-{self.kind}-heartbeat"),
            asyncio.create_task(self._run(), name=f"topup-{self.kind}"),
        ]

    async def stop(self) -> None:
        """Stop without waiting for the items in hand: what they hold is made due at once
        for another worker (a step cut short is resumed by the policy's own rules)."""
        tasks = [*self._tasks, *self._in_flight]
        if self._reaping is not None:
            tasks.append(self._reaping)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if not self._started:
            return
        self._started = False
        try:
            await self._db.write(partial(sign_off, owner=self.owner, release=self._release))
        except Exception:
            self._log.exception("%s: could not sign off; its leases run out instead", self.owner)

    # -- the work loop ------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            settings = self._settings()
            if not self._fresh():
                await self._wait_for_heartbeat(settings)
                continue
            again = await self._claim_round(settings)
            if self._after_claim is not None:
                self._after_claim()
            if not again:
                # Returns at once if woken meanwhile: nothing due is missed.
                await self._sleep(settings.scan_interval)

    async def _claim_round(self, settings: WorkerSettings) -> bool:
        """Claim and start what is free to take. True when it is worth looking again at
        once: the claim came back full (more may be due), or every slot was taken and one
        has just come free. A claim that came back short took everything due: the next
        one waits to be woken (an order accepted, a callback, a retry) or for the scan,
        rather than cost a transaction that finds nothing."""
        free = settings.concurrency - len(self._in_flight)
        if free <= 0:
            await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
            return True
        size = min(max(self._claim_size, settings.claim_batch), settings.max_claim_batch)
        limit = min(free, size)
        try:
            claimed = await self._claim(self.owner, limit)
        except Exception:
            self._log.exception("could not claim %s; retrying", self._claiming)
            return False
        if claimed and not self._fresh():
            # The heartbeat went stale while the claim ran: another worker may take these
            # over any moment, so none is started here; their leases decide.
            self._log.warning(
                "%s: %s claimed items left to their leases (heartbeat stale)",
                self.owner,
                len(claimed),
            )
            return False
        for item in claimed:
            task = asyncio.create_task(self._handle_one(item))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        full = len(claimed) >= limit
        self._claim_size = 2 * size if full else settings.claim_batch
        return full

    async def _handle_one(self, item: T) -> None:
        try:
            await self._handle(item)
        except Exception:
            # The item keeps its state; its lease runs out and it is looked at again.
            self._log.exception("%s: handling a claimed item failed", self.owner)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    async def _wait_for_heartbeat(self, settings: WorkerSettings) -> None:
        if self._fresh_until > 0 and not self._fenced:
            self._fenced = True
            self._log.warning(
                "%s: heartbeat not written for %ss; claiming nothing until it is",
                self.owner,
                settings.takeover_seconds - settings.heartbeat_seconds / 2,
            )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(settings.scan_interval):
                await self._beating.wait()
        if self._fenced and self._fresh():
            self._fenced = False
            self._log.info("%s: heartbeat fresh again; claiming resumes", self.owner)

    # -- the heartbeat ------------------------------------------------------------------

    def _fresh(self) -> bool:
        """Whether no other worker can have taken this one for dead yet."""
        if asyncio.get_running_loop().time() < self._fresh_until:
            return True
        self._beating.clear()
        return False

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        first = True
        failing = False
        while True:
            settings = self._settings()
            # Others judge the beat by when it was written, which is after this moment.
            issued = loop.time()
            try:
                registered = await self._db.write(partial(beat, owner=self.owner, kind=self.kind))
            except Exception:
                if not failing:
                    self._log.exception("%s: heartbeat not written", self.owner)
                failing = True
            else:
                if failing:
                    self._log.info("%s: heartbeat written again", self.owner)
                failing = False
                if registered and not first:
                    self._log.warning(
                        "%s: its worker row was gone (taken for dead); registered again",
                        self.owner,
                    )
                first = False
                # Half a beat of margin before the moment others may take over.
                margin = settings.heartbeat_seconds / 2
                self._fresh_until = issued + settings.takeover_seconds - margin
                self._beating.set()
                if self._reaping is None or self._reaping.done():
                    self._reaping = asyncio.create_task(self._reap(settings))
            await asyncio.sleep(settings.heartbeat_seconds)

    async def _reap(self, settings: WorkerSettings) -> None:
        """Take over the leases of workers of this kind whose heartbeat has stopped: a read
        of the small workers table each beat, a write only when one has died."""
        takeover_ms = int(settings.takeover_seconds * 1000)
        try:
            stale = await self._db.read(
                partial(stale_workers, kind=self.kind, me=self.owner, takeover_ms=takeover_ms)
            )
            if not stale:
                return
            dead = await self._db.write(
                partial(reap_workers, owners=stale, takeover_ms=takeover_ms, release=self._release)
            )
        except Exception:
            self._log.exception("%s: could not reap stale workers", self.owner)
            return
        if dead:
            self._log.warning(
                "%s: took over the leases of %s (no heartbeat for %ss)",
                self.owner,
                ", ".join(dead),
                settings.takeover_seconds,
            )
