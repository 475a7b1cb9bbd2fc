"""Group commit: one writer per process, one transaction per batch of queued work.

Every write of a service process (accepting orders, starting attempts, applying
results, booking money) is a *job*: a synchronous function over a SQLAlchemy Core
``Connection``. Callers queue jobs and await them; the writer takes whatever is
queued, runs it all in one transaction, commits once, and only then answers each
caller. Under load many jobs share one commit (one fsync), and nothing is answered
before its data is durable.

Items for the same ``Batch`` (e.g. order acceptance) are handed over together to its
function, which can work set-wise (one multi-row INSERT for a hundred orders). Each
batch, and each single job, runs under its own SAVEPOINT: a job that fails rolls back
alone and its caller gets the exception; the rest commit.

Lock order. On PostgreSQL two group transactions of two instances must never wait on
each other in a circle, so every transaction takes its row locks in one order: the
order batches first (orders, then their attempts, each in key order), then the claims
(``SKIP LOCKED``: they never wait), then single jobs, then the accounts pass (every
account the transaction changes, locked once, in key order) with the batches that
change accounts themselves: acceptance, credits, credit limits. Batches say which phase
they belong to, and those of the accounts phase which account each item changes, so
that the first of them to lock accounts locks all of them at once; account changes of
the earlier phases (settlements) wait in the ``Tx`` until then. A single job never
touches an account. A transaction PostgreSQL still aborts as a deadlock or
serialization failure is run again, whole, before any caller hears of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from enum import IntEnum
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import Connection, Engine, RootTransaction
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from core import metrics

log = logging.getLogger("topup.writer")

T = TypeVar("T")
Item = TypeVar("Item")
Answer = TypeVar("Answer")
BUSY_SECONDS = 30.0
# PostgreSQL's deadlock_detected and serialization_failure: the whole transaction was
# rolled back, so running it again is safe.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
TRANSACTION_RETRIES = 3
LOCK_POLL_SECONDS = 0.0005
Job = Callable[[Connection], Any]


class Phase(IntEnum):
    """Where in a group transaction a batch runs (see the lock order above)."""

    ORDERS = 0
    CLAIMS = 1
    JOBS = 2
    ACCOUNTS = 3


class Tx:
    """One group transaction, as the batches in it see it."""

    __slots__ = ("account_changes", "accounts_pass", "conn", "phase_accounts")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        # app_id -> (held, captured) to add, in the accounts pass (core/ledger.py).
        self.account_changes: dict[str, list[int]] = {}
        # Applies the account changes no batch of the accounts phase took up, after every
        # batch; set by core/ledger.py with the first change (the writer cannot import the
        # ledger, which is built on the database).
        self.accounts_pass: Callable[[Tx], None] | None = None
        # Every account the accounts phase's batches change: locked together, once.
        self.phase_accounts: set[str] = set()


class Batch(Generic[Item, Answer]):
    """A set-wise write: ``function(tx, items)`` answers each item, in order; an answer
    that is an exception is raised to that item's caller.

    A batch of the accounts phase names, with ``account``, the account (app_id) each of
    its items changes: the phase locks them all in one pass, in key order.
    """

    def __init__(
        self,
        name: str,
        phase: Phase,
        function: Callable[[Tx, list[Item]], list[Answer]],
        account: Callable[[Item], str] | None = None,
    ) -> None:
        if (phase is Phase.ACCOUNTS) != (account is not None):
            raise ValueError(
                f"{name}: a batch of the accounts phase names the account each item "
                "changes (account=...), and only such a batch does"
            )
        self.name = name
        self.phase = phase
        self.function = function
        self.account = account

    def __repr__(self) -> str:
        return f"Batch({self.name})"


class _Queued:
    __slots__ = ("batch", "future", "item")

    def __init__(self, batch: Batch | None, item: Any, future: asyncio.Future) -> None:
        self.batch = batch
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
    """SQLite: BEGIN and the statements run on the event loop's thread; COMMIT on a helper.

    A batch's statements are microseconds of work each, cheaper to run in place than to
    hand to another thread one by one (and two Python threads would fight over the
    GIL). What can block is waiting for the write lock (another process may hold it),
    which the loop does without blocking (``_begin_here``), and the COMMIT's fsync,
    which goes to the helper thread while the event loop keeps serving requests.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="topup-commit")
        self._lock = asyncio.Lock()

    async def run(self, job: Callable[[Connection], T]) -> T:
        async with self._lock:
            conn = self._connection()
            transaction = await self._begin_here(conn)
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

    async def _begin_here(self, conn: Connection) -> RootTransaction:
        """BEGIN IMMEDIATE on the event loop's thread, the job right after it.

        Taken on the helper thread, the write lock stayed held from the moment it was
        taken until the busy event loop got round to the job (2 to 16 ms under load),
        and a second process on the file (``topup worker``) waited all that time. Here
        an attempt costs microseconds, and while another process holds the lock the
        loop serves requests between attempts.
        """
        deadline = time.monotonic() + BUSY_SECONDS
        # Another process's lock has no event to await: polling is the only way.
        while (transaction := _try_begin(conn, deadline)) is None:  # noqa: ASYNC110
            await asyncio.sleep(LOCK_POLL_SECONDS)
        return transaction

    def _begin(self, conn: Connection) -> RootTransaction:
        """BEGIN IMMEDIATE on the calling thread, waiting for the write lock in place."""
        deadline = time.monotonic() + BUSY_SECONDS
        while (transaction := _try_begin(conn, deadline)) is None:
            time.sleep(LOCK_POLL_SECONDS)
        return transaction

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
        self._queue: list[_Queued] = []
        self._pending = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def run(self, job: Callable[[Connection], T]) -> T:
        """Run ``job`` in the next group transaction; returns once it is committed."""
        return await self._enqueue(None, job)

    async def batched(self, batch: Batch[Item, Answer], item: Item) -> Answer:
        """Hand ``item`` to ``batch`` in the next group transaction; its answer once committed."""
        return await self._enqueue(batch, item)

    async def _enqueue(self, batch: Batch | None, item: Any) -> Any:
        if self._task is None or self._task.done():
            self.start()
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(batch, item, future))
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
                # Let the callers this commit answered run before the next batch is taken:
                # a worker whose claim just committed queues its next claim at once, and
                # it goes into the next transaction rather than the one after (without
                # this, the dispatcher claimed in every other transaction: half its pace).
                await asyncio.sleep(0)

    async def _commit(self, batch: list[_Queued]) -> None:
        started = time.perf_counter()
        try:
            outcomes = await self._run_retrying(batch)
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

    async def _run_retrying(self, batch: list[_Queued]) -> list[Any]:
        for retry in range(TRANSACTION_RETRIES + 1):
            try:
                return await self._transactions.run(partial(self._execute, batch=batch))
            except DBAPIError as exc:
                if retry == TRANSACTION_RETRIES or _sqlstate(exc) not in RETRYABLE_SQLSTATES:
                    raise
                log.warning(
                    "group transaction of %s jobs aborted (%s); running it again",
                    len(batch),
                    _sqlstate(exc),
                )
        raise AssertionError("unreachable")

    def _execute(self, conn: Connection, batch: list[_Queued]) -> list[Any]:
        tx = Tx(conn)
        outcomes: dict[int, Any] = {}
        by_batch: dict[Batch, list[int]] = {}
        jobs: list[int] = []
        for index, queued in enumerate(batch):
            if queued.batch is None:
                jobs.append(index)
            else:
                by_batch.setdefault(queued.batch, []).append(index)
        ordered = sorted(by_batch.items(), key=lambda pair: pair[0].phase)
        for kind, indexes in [pair for pair in ordered if pair[0].phase < Phase.JOBS]:
            self._run_batch(tx, kind, indexes, batch, outcomes)
        for index in jobs:
            outcomes[index] = _isolated(conn, batch[index].item)
        later = [pair for pair in ordered if pair[0].phase >= Phase.JOBS]
        tx.phase_accounts = {
            kind.account(batch[i].item) for kind, indexes in later if kind.account for i in indexes
        }
        for kind, indexes in later:
            self._run_batch(tx, kind, indexes, batch, outcomes)
        if tx.account_changes:
            assert tx.accounts_pass is not None, "account changes with no accounts pass"
            tx.accounts_pass(tx)
        return [outcomes[index] for index in range(len(batch))]

    def _run_batch(
        self, tx: Tx, kind: Batch, indexes: list[int], batch: list[_Queued], outcomes: dict
    ) -> None:
        items = [batch[i].item for i in indexes]
        for index, outcome in zip(indexes, self._run_kind(tx, kind, items), strict=True):
            outcomes[index] = outcome

    def _run_kind(self, tx: Tx, kind: Batch, items: list[Any]) -> list[Any]:
        savepoint = Savepoint(tx.conn)
        changes = {app: list(values) for app, values in tx.account_changes.items()}
        try:
            results = kind.function(tx, items)
            savepoint.commit()
            return results
        except Exception as exc:
            savepoint.rollback()
            tx.account_changes = changes
            if _retryable(exc):
                raise  # the whole transaction is gone: run it again (_run_retrying)
            if len(items) == 1:
                return [exc]
        # Something in the batch failed as a whole: find which, one item at a time.
        log.warning("%s batch of %s failed; retrying item by item", kind.name, len(items))
        return [self._one(tx, kind, item) for item in items]

    def _one(self, tx: Tx, kind: Batch, item: Any) -> Any:
        changes = {app: list(values) for app, values in tx.account_changes.items()}
        outcome = _isolated(tx.conn, lambda _conn: kind.function(tx, [item])[0])
        if isinstance(outcome, Exception):
            tx.account_changes = changes
        return outcome


class Savepoint:
    """A SAVEPOINT, committed (released) or rolled back.

    On SQLite it goes straight to the driver: SQLAlchemy's ``begin_nested`` compiles its
    SAVEPOINT and RELEASE anew each time (41 µs a pair, against 1.2 µs), and the writer
    takes one per batch kind and per single job of every group transaction. Nothing in
    a batch may leave a savepoint of SQLAlchemy's open across this one's end.
    """

    __slots__ = ("_driver", "_nested")

    def __init__(self, conn: Connection) -> None:
        if conn.dialect.name != "sqlite":
            self._driver = None
            self._nested = conn.begin_nested()
            return
        self._driver = conn.connection.dbapi_connection
        self._driver.execute("SAVEPOINT topup_batch")

    def commit(self) -> None:
        if self._driver is None:
            self._nested.commit()
        else:
            self._driver.execute("RELEASE topup_batch")

    def rollback(self) -> None:
        if self._driver is None:
            self._nested.rollback()
        else:
            self._driver.execute("ROLLBACK TO topup_batch")
            self._driver.execute("RELEASE topup_batch")


def _try_begin(conn: Connection, deadline: float) -> RootTransaction | None:
    """BEGIN IMMEDIATE, or None while another process holds the write lock.

    The connection's busy timeout is 0: SQLite's own busy handler backs off up to
    100 ms between tries, which shows as latency spikes when two processes (API and
    background worker) take turns writing, so the callers poll every half millisecond
    instead, until ``deadline``.
    """
    try:
        return conn.begin()
    except OperationalError as exc:
        if "locked" not in str(exc) or time.monotonic() > deadline:
            raise
        conn.rollback()
        return None


def _sqlstate(exc: DBAPIError) -> str | None:
    original = exc.orig
    return getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and _sqlstate(exc) in RETRYABLE_SQLSTATES


def _isolated(conn: Connection, job: Job) -> Any:
    """Run one job under a savepoint; its exception is returned, not raised (unless the
    whole transaction must run again)."""
    savepoint = Savepoint(conn)
    try:
        result = job(conn)
    except Exception as exc:
        savepoint.rollback()
        if _retryable(exc):
            raise
        return exc
    savepoint.commit()
    return result
