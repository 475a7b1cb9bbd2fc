"""Group commit: one writer per process, one transaction per batch of queued work.

Every write of a service process (accepting orders, starting attempts, applying
results, booking money) is a *job*: a synchronous function over a SQLAlchemy Core
``Connection``. Callers queue jobs and await them; the writer takes whatever is
queued, runs it all in one transaction, commits once, and only then answers each
caller. Under load many jobs share one commit (one fsync), and nothing is answered
before its data is durable.

Jobs of the same *kind* (e.g. order acceptance) are handed over together to that
kind's batch function, which can work set-wise (one multi-row INSERT for a hundred
orders). Each kind's batch, and each single job, runs under its own SAVEPOINT: a job
that fails rolls back alone and its caller gets the exception; the rest commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from core import metrics

log = logging.getLogger("topup.writer")

T = TypeVar("T")
BUSY_SECONDS = 30.0
Job = Callable[[Connection], Any]
BatchFunction = Callable[[Connection, list[Any]], list[Any]]


class _Queued:
    __slots__ = ("future", "item", "kind")

    def __init__(self, kind: str | None, item: Any, future: asyncio.Future) -> None:
        self.kind = kind
        self.item = item
        self.future = future


class Transactions(Protocol):
    """Runs a job in a transaction of its own and commits it (or rolls it back)."""

    async def run(self, job: Callable[[Connection], T]) -> T: ...


class AsyncTransactions:
    """Over an async engine (PostgreSQL): each statement is one network round trip."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def run(self, job: Callable[[Connection], T]) -> T:
        async with self._engine.begin() as conn:
            return await conn.run_sync(job)

    run_in_thread = run


class LoopTransactions:
    """SQLite: statements run on the event loop's thread; BEGIN and COMMIT on a helper thread.

    A batch's statements are microseconds of work each, cheaper to run in place than to
    hand to another thread one by one (and two Python threads would fight over the
    GIL). What can block is taking the write lock (another process may hold it) and
    the COMMIT's fsync: those two go to the helper thread, and the event loop keeps
    serving requests meanwhile.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="topup-commit")
        self._lock = asyncio.Lock()

    async def run(self, job: Callable[[Connection], T]) -> T:
        async with self._lock:
            conn = self._connection()
            transaction = await self._in_thread(self._begin, conn)
            try:
                result = job(conn)
            except BaseException:
                await self._in_thread(transaction.rollback)
                raise
            await self._in_thread(transaction.commit)
            return result

    async def run_in_thread(self, job: Callable[[Connection], T]) -> T:
        """A transaction entirely on the helper thread (schema migrations)."""
        async with self._lock:
            return await self._in_thread(self._whole, job)

    def _whole(self, job: Callable[[Connection], T]) -> T:
        transaction = self._begin(self._connection())
        try:
            result = job(self._connection())
        except BaseException:
            transaction.rollback()
            raise
        transaction.commit()
        return result

    def _begin(self, conn: Connection):
        """BEGIN IMMEDIATE, waiting for another process's write lock in short steps.

        SQLite's own busy handler backs off up to 100 ms between tries, which shows as
        latency spikes when two processes (API and background worker) take turns
        writing; this polls every half millisecond instead, for up to BUSY_SECONDS.
        """
        deadline = time.monotonic() + BUSY_SECONDS
        while True:
            try:
                return conn.begin()
            except OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                conn.rollback()
                time.sleep(0.0005)

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self._engine.connect()
        return self._conn

    async def _in_thread(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._thread.shutdown(wait=True)
        self._engine.dispose()


class GroupWriter:
    def __init__(self, transactions: Transactions, max_batch: int = 2000) -> None:
        self._transactions = transactions
        self._max_batch = max_batch
        self._kinds: dict[str, BatchFunction] = {}
        self._queue: list[_Queued] = []
        self._pending = asyncio.Event()
        self._task: asyncio.Task | None = None

    def register(self, kind: str, batch: BatchFunction) -> None:
        """``batch(conn, items)`` returns one result per item, in order; a result that is
        an exception is raised to that item's caller."""
        self._kinds[kind] = batch

    async def run(self, job: Callable[[Connection], T]) -> T:
        """Run ``job`` in the next group transaction; returns once it is committed."""
        return await self._enqueue(None, job)

    async def batched(self, kind: str, item: Any) -> Any:
        """Hand ``item`` to the ``kind`` batch function of the next group transaction."""
        return await self._enqueue(kind, item)

    async def _enqueue(self, kind: str | None, item: Any) -> Any:
        if self._task is None or self._task.done():
            self.start()
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(kind, item, future))
        self._pending.set()
        result = await future
        if isinstance(result, BaseException):
            raise result
        return result

    def start(self) -> None:
        self._task = asyncio.create_task(self._drain(), name="topup-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for queued in self._queue:
            if not queued.future.done():
                queued.future.set_exception(RuntimeError("the writer stopped"))
        self._queue.clear()

    async def _drain(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            while self._queue:
                batch, self._queue = (
                    self._queue[: self._max_batch],
                    self._queue[self._max_batch :],
                )
                await self._commit(batch)

    async def _commit(self, batch: list[_Queued]) -> None:
        started = time.perf_counter()
        try:
            outcomes = await self._transactions.run(partial(self._execute, batch=batch))
            metrics.group_commit(len(batch), time.perf_counter() - started)
        except Exception as exc:
            # Nothing of this batch is committed: every caller learns it.
            log.exception("group commit of %s jobs failed", len(batch))
            outcomes = [exc] * len(batch)
        except asyncio.CancelledError:
            for queued in batch:
                if not queued.future.done():
                    queued.future.set_exception(RuntimeError("the writer stopped"))
            raise
        for queued, outcome in zip(batch, outcomes, strict=True):
            if not queued.future.done():
                queued.future.set_result(outcome)

    def _execute(self, conn: Connection, batch: list[_Queued]) -> list[Any]:
        outcomes: dict[int, Any] = {}
        by_kind: dict[str, list[int]] = {}
        for index, queued in enumerate(batch):
            if queued.kind is None:
                outcomes[index] = _isolated(conn, queued.item)
            else:
                by_kind.setdefault(queued.kind, []).append(index)
        for kind, indexes in by_kind.items():
            items = [batch[i].item for i in indexes]
            for index, outcome in zip(indexes, self._run_kind(conn, kind, items), strict=True):
                outcomes[index] = outcome
        return [outcomes[index] for index in range(len(batch))]

    def _run_kind(self, conn: Connection, kind: str, items: list[Any]) -> list[Any]:
        batch = self._kinds[kind]
        savepoint = conn.begin_nested()
        try:
            results = batch(conn, items)
            savepoint.commit()
            return results
        except Exception as exc:
            savepoint.rollback()
            if len(items) == 1:
                return [exc]
        # Something in the batch failed as a whole: find which, one item at a time.
        log.warning("%s batch of %s failed; retrying item by item", kind, len(items))
        return [_isolated(conn, lambda c, item=item: batch(c, [item])[0]) for item in items]


def _isolated(conn: Connection, job: Job) -> Any:
    """Run one job under a savepoint; its exception is returned, not raised."""
    savepoint = conn.begin_nested()
    try:
        result = job(conn)
    except Exception as exc:
        savepoint.rollback()
        return exc
    savepoint.commit()
    return result
