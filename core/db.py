"""Storage: the schema (SQLAlchemy Core) and the database handle.

SQLite (the default) runs in WAL mode with ``synchronous=FULL``, so a committed
transaction is on disk before the commit returns. The URL names aiosqlite, SQLAlchemy's
async SQLite driver, but the service drives SQLite through the stdlib driver in place
on the event loop: a hand-off to aiosqlite's thread per statement cost more than the
statement (measured: ~6 ms per order in a transaction of its own, against ~0.1 ms in a
batch run in place). Within one process all writes go
through one group-committing writer (core/writer.py) on one connection: SQLite has one
writer anyway. Point reads and the writer's statements run in place on the event loop
(microseconds each); what can block (the write lock, the fsync of COMMIT) runs on a
helper thread. PostgreSQL uses the asyncpg pool for reads and
the same writer for writes.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    false,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Engine, create_engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import SingletonThreadPool

from core.fastsql import driver_fetch_one, fetch_one
from core.writer import (
    Answer,
    AsyncTransactions,
    Batch,
    GroupWriter,
    Item,
    LoopTransactions,
    Transactions,
)

T = TypeVar("T")

metadata = MetaData()

apps = Table(
    "apps",
    metadata,
    Column("app_id", String(64), primary_key=True),
    Column("company", String(128), nullable=False),
    # Sealed with the master key (core/sealing.py), never in plaintext.
    Column("secret", Text, nullable=False),
    Column("sign_type", String(16), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    # Where final order states are POSTed; NULL: the partner only polls.
    Column("notify_url", Text),
    # After `topup app rotate-secret --grace`: the old secret (sealed) still signs until then.
    Column("previous_secret", Text),
    Column("previous_secret_until", BigInteger),
    # Comma-separated CIDRs the app may call from; NULL: any address.
    Column("allow_ips", Text),
    # The operator allowed a notify URL on a loopback, private or link-local address.
    Column("notify_allow_private", Boolean, nullable=False, server_default=false()),
    # An order whose Supplier contradicts the phone number's segment: "accept" (and record
    # it on the order) or "refuse" (CARRIER_MISMATCH). core/apps.py CarrierMismatch.
    Column("carrier_mismatch", String(8), nullable=False, server_default="accept"),
)

server_keys = Table(
    "server_keys",
    metadata,
    Column("name", String(64), primary_key=True),
    # Sealed with the master key (core/sealing.py).
    Column("value", Text, nullable=False),
)

orders = Table(
    "orders",
    metadata,
    Column("order_no", String(32), primary_key=True),
    # Unique by construction (core/ids.py: new_order_id), so not indexed: migration 0010.
    Column("order_id", String(32), nullable=False),
    Column("app_id", String(64), nullable=False),
    Column("cstm_order_no", String(64), nullable=False),
    Column("cstm_order_name", String(128), nullable=False),
    Column("company", String(128), nullable=False),
    Column("carrier", String(32), nullable=False),  # the partner's Supplier field
    Column("phone_no", String(16), nullable=False),
    Column("product_id", String(64), nullable=False),
    Column("face_value", BigInteger, nullable=False),
    Column("price", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("fail_code", String(64)),
    Column("fail_reason", Text),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("finished_at", BigInteger),
    # When the dispatcher should next act on the order; NULL once nothing is left to do.
    Column("next_run_at", BigInteger),
    Column("lease_owner", String(64)),
    Column("lease_until", BigInteger),
    # The carrier the number-segment table names for phone_no, when it is not the order's
    # Supplier (a ported number, or a partner's mistake); NULL when they agree. Last, as
    # in OrderRecord: rows are read positionally in this order.
    Column("segment_carrier", String(32)),
    UniqueConstraint("app_id", "cstm_order_no", name="uq_orders_app_cstm_order_no"),
    Index("ix_orders_next_run_at", "next_run_at"),
    # The console's searches. Order numbers are time-ordered, so (x, order_no) serves
    # "newest first" pages under a filter without a sort.
    Index("ix_orders_phone_no", "phone_no", "order_no"),
    Index("ix_orders_cstm_order_no", "cstm_order_no"),
    Index("ix_orders_state", "state", "order_no"),
    Index("ix_orders_app_id", "app_id", "order_no"),
)

attempts = Table(
    "attempts",
    metadata,
    Column("reference", String(48), primary_key=True),
    Column("order_no", String(32), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("plugin", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("supplier_ref", String(128)),
    Column("code", String(64)),
    Column("message", Text),
    Column("queries", Integer, nullable=False, server_default="0"),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    # What the supplier is expected to charge (fen), from plugins.toml when the attempt began.
    Column("cost", BigInteger),
    # Refused before acceptance: the supplier never held it, so no statement will list it.
    Column("refused", Boolean, nullable=False, server_default=false()),
    # Sent a second time with the same reference, once: its supplier said it never got it
    # and refuses a reused reference (core/lifecycle/resend.py).
    Column("resent", Boolean, nullable=False, server_default=false()),
    UniqueConstraint("order_no", "seq", name="uq_attempts_order_seq"),
)


order_events = Table(
    "order_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("order_no", String(32), nullable=False),
    Column("at", BigInteger, nullable=False),
    # review, resolved, requeried
    Column("kind", String(32), nullable=False),
    # "system", or the operator who acted
    Column("actor", String(64), nullable=False),
    Column("detail", Text, nullable=False),
    Index("ix_order_events_order_no", "order_no"),
)

# Append-only: rows are inserted, never updated or deleted. event_key names the event a
# row records (credit:<id>, hold:<orderNo>, settle:<orderNo>), so no event is booked twice,
# and an order is settled (captured or released) at most once.
ledger = Table(
    "ledger",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("app_id", String(64), nullable=False),
    # credit, hold, capture, release
    Column("kind", String(16), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("order_no", String(32)),
    Column("event_key", String(80), nullable=False),
    Column("reason", Text, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    UniqueConstraint("event_key", name="uq_ledger_event_key"),
    Index("ix_ledger_app_id", "app_id"),
)

# The ledger summed per app, kept in step with it in the same transactions, so that an
# order's hold is one conditional UPDATE rather than a sum over the whole ledger.
accounts = Table(
    "accounts",
    metadata,
    Column("app_id", String(64), primary_key=True),
    Column("credited", BigInteger, nullable=False, server_default="0"),
    Column("captured", BigInteger, nullable=False, server_default="0"),
    Column("held", BigInteger, nullable=False, server_default="0"),
    Column("credit_limit", BigInteger, nullable=False, server_default="0"),
    Column("updated_at", BigInteger, nullable=False),
)

# The outbox of partner notifications: written with the order's final state, delivered
# (and retried) by the notifier.
notifications = Table(
    "notifications",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("order_no", String(32), nullable=False),
    Column("app_id", String(64), nullable=False),
    Column("url", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", BigInteger),
    Column("lease_owner", String(64)),
    Column("lease_until", BigInteger),
    Column("delivered_at", BigInteger),
    Column("last_error", Text),
    Column("created_at", BigInteger, nullable=False),
    UniqueConstraint("order_no", name="uq_notifications_order_no"),
    Index("ix_notifications_next_attempt_at", "next_attempt_at"),
)

# Who may use the operations console (/console), with what role.
operators = Table(
    "operators",
    metadata,
    Column("name", String(64), primary_key=True),
    # argon2id, never the password (core/operators.py).
    Column("password_hash", Text, nullable=False),
    # viewer, operator, admin
    Column("role", String(16), nullable=False),
    Column("disabled", Boolean, nullable=False, server_default=false()),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# Server-side console sessions: the cookie holds a random token, this table its SHA-256,
# so a database reader cannot take over a session.
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("operator", String(64), nullable=False),
    # The form token every state-changing console request must carry (CSRF).
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("last_seen_at", BigInteger, nullable=False),
    Column("address", String(64), nullable=False),
    Index("ix_console_sessions_operator", "operator"),
)

# Append-only record of every operator action (triggers refuse UPDATE and DELETE).
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", BigInteger, nullable=False),
    # The operator's name, or "cli:<user>" style names from the command line.
    Column("actor", String(64), nullable=False),
    # e.g. order.resolve, app.credit, route.set, operator.add
    Column("action", String(32), nullable=False),
    # What was acted on: an order number, an app ID, a carrier, an operator.
    Column("target", String(128), nullable=False),
    Column("reason", Text, nullable=False),
    # What changed, for the record (JSON text).
    Column("detail", Text, nullable=False),
    Index("ix_audit_log_target", "target"),
)

# A carrier's route as switched from the console: it replaces the route plugins.toml
# gives that carrier, in every instance, until it is reset.
route_overrides = Table(
    "route_overrides",
    metadata,
    Column("carrier", String(32), primary_key=True),
    # JSON: [{"plugin": NAME, "weight": N}, ...] in failover order.
    Column("route", Text, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# The background workers running now (core/worker_loop.py), each beating its heartbeat here
# every second or so: a lease whose owner has no row, or a stale one, is free to take over
# (core/leases.py). Times are the database's clock, so hosts' clocks need not agree.
workers = Table(
    "workers",
    metadata,
    # The owner name a worker writes into the leases it takes.
    Column("owner", String(64), primary_key=True),
    # dispatcher, notifier
    Column("kind", String(16), nullable=False),
    # For operators: where it runs.
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", BigInteger, nullable=False),
    Column("heartbeat_at", BigInteger, nullable=False),
)

# Small shared counters, e.g. the configuration generation that `topup reload` bumps.
control = Table(
    "control",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)


def insert_ignoring_conflicts(db: Database | Connection, table: Table, conflict_columns: list[str]):
    """INSERT ... ON CONFLICT DO NOTHING in the dialect at hand."""
    dialect = db.dialect.name if isinstance(db, Connection) else db.url.get_backend_name()
    dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return dialect_insert(table).on_conflict_do_nothing(index_elements=conflict_columns)


class Database:
    """The configured database: reads on a pool, writes through one group-committing writer.

    Storage code is written as synchronous SQLAlchemy Core functions over a Connection
    ("jobs") and handed to ``read`` or ``write``, so that one function serves SQLite and
    PostgreSQL alike and many writes can share a commit.
    """

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.is_postgres = self.url.get_backend_name() == "postgresql"
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self._engine: AsyncEngine | None = None
        if self.is_sqlite:
            _ensure_parent_directory(self.url.database)
            self._reader = _sqlite_sync_engine(self.url, begin=None)
            self._point_readers = threading.local()
            self._held_readers: list[Any] = []
            self._transactions: Transactions = LoopTransactions(
                _sqlite_sync_engine(self.url, begin="BEGIN IMMEDIATE")
            )
        else:
            self._engine = create_async_engine(url, pool_size=10, max_overflow=10)
            self._transactions = AsyncTransactions(self._engine)
        self._writer: GroupWriter | None = None
        self._aside: ThreadPoolExecutor | None = None

    @property
    def writer(self) -> GroupWriter:
        if self._writer is None:
            self._writer = GroupWriter(self._transactions)
        return self._writer

    async def read(self, job: Callable[[Connection], T]) -> T:
        if self._engine is None:
            # A point read from SQLite's page cache takes microseconds: cheaper in place
            # than a hop to a driver thread and back (see LoopTransactions).
            with self._reader.connect() as conn:
                return job(conn)
        async with self._engine.connect() as conn:
            return await conn.run_sync(job)

    async def fetch_one(self, statement, params: dict[str, Any]) -> tuple | None:
        """The first row of a prepared SELECT (a point read by key), as a tuple.

        On SQLite straight from the driver connection this thread keeps for the purpose:
        checking a connection out of SQLAlchemy's pool and resetting it after cost as
        much as the read (a tenth of a status query's time, profiled).
        """
        if self._engine is None:
            return driver_fetch_one(self._point_reader(), self._reader.dialect, statement, params)
        async with self._engine.connect() as conn:
            return await conn.run_sync(lambda sync: fetch_one(sync, statement, params))

    def _point_reader(self) -> Any:
        held = getattr(self._point_readers, "connection", None)
        if held is None:
            # Kept checked out: SingletonThreadPool gives this thread this one connection
            # (autocommit, as every reader: each SELECT sees the latest commit).
            held = self._point_readers.connection = self._reader.raw_connection()
            self._held_readers.append(held)
        return held.driver_connection

    async def read_aside(self, job: Callable[[Connection], T]) -> T:
        """A read that may take milliseconds (the console's searches and counts): on
        SQLite it runs on a helper thread, so the event loop keeps serving partners."""
        if self._engine is None:
            if self._aside is None:
                # Two threads: with the event loop's own, within SingletonThreadPool's
                # five per-thread connections (a sixth thread would close one in use).
                self._aside = ThreadPoolExecutor(2, thread_name_prefix="read-aside")
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._aside, self._read_in_place, job)
        return await self.read(job)

    def _read_in_place(self, job: Callable[[Connection], T]) -> T:
        with self._reader.connect() as conn:
            return job(conn)

    async def write(self, job: Callable[[Connection], T]) -> T:
        """Run ``job`` in the next group transaction; returns once it is committed."""
        return await self.writer.run(job)

    async def batched(self, batch: Batch[Item, Answer], item: Item) -> Answer:
        """Hand ``item`` to ``batch`` in the next group transaction (core/writer.py)."""
        return await self.writer.batched(batch, item)

    async def exclusive(self, job: Callable[[Connection], T]) -> T:
        """Run ``job`` in a transaction of its own, off the event loop (schema migrations)."""
        return await self._transactions.run_in_thread(job)

    async def dispose(self) -> None:
        if self._writer is not None:
            await self._writer.stop()
        if self._engine is not None:
            await self._engine.dispose()
        if self._aside is not None:
            self._aside.shutdown()
        if isinstance(self._transactions, LoopTransactions):
            self._transactions.close()
            for held in self._held_readers:
                held.close()
            self._reader.dispose()


_PRAGMAS = (
    "journal_mode=WAL",
    "synchronous=FULL",
    "foreign_keys=ON",
    # 64 MiB of page cache per connection (the default is 2 MiB): a database of a
    # million orders keeps its indexes in memory.
    "cache_size=-65536",
    # Read pages through a memory map rather than a read() call each.
    "mmap_size=1073741824",
)
# The writer's savepoints (one per batch, core/writer.py) keep the original of every page
# they change in a sub-journal, which past 64 KiB SQLite spills to a temporary file:
# under load one file created and unlinked per transaction and a write() per page, 40%
# of the writer's writes (strace). In memory instead: the group transaction's changes
# are bounded by its batch, and only the writer's statements (no large sorts) use it.
_WRITER_PRAGMA = "temp_store=MEMORY"


def _sqlite_sync_engine(url: URL, begin: str | None) -> Engine:
    """A synchronous connection for the event loop's own use (see LoopTransactions).

    ``begin``: the statement that opens a transaction; BEGIN IMMEDIATE for the writer
    takes the write lock up front, so a transaction never fails with SQLITE_BUSY
    half-way when another process writes. None: each statement commits by itself
    (readers).
    """
    engine = create_engine(
        url.set(drivername="sqlite+pysqlite"),
        poolclass=SingletonThreadPool,
        connect_args={"check_same_thread": False},
    )
    # The writer waits for the write lock itself, in finer steps (LoopTransactions).
    _take_transaction_control(engine, begin=begin, busy_ms=0 if begin else 30000)
    return engine


# sqlite3 binds exact ints, floats and strings directly; anything else (a bool, a StrEnum)
# first goes through its adapter lookup, which, finding none, raises and clears two
# AttributeErrors per value before binding it as its base type: 3,300 instructions more
# than an int. An adapter found at once binds the same value for 1,500.
sqlite3.register_adapter(bool, int)
# None (NULL) is not an exact base type either, and takes the same detour: ``{}.get``
# answers None for any value, in C.
sqlite3.register_adapter(type(None), {}.get)


def _take_transaction_control(engine: Engine, begin: str | None, busy_ms: int = 30000) -> None:
    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so that BEGIN is ours to choose.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        writer = (_WRITER_PRAGMA,) if begin is not None else ()
        for pragma in (*_PRAGMAS, *writer, f"busy_timeout={busy_ms}"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    if begin is not None:

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # Straight to the driver: through SQLAlchemy's execution context this one
            # statement cost a fifth of an empty group transaction's CPU (measured).
            try:
                conn.connection.dbapi_connection.execute(begin)
            except sqlite3.Error as exc:
                # Raised as SQLAlchemy raises the driver's errors: callers tell storage
                # failures (a 503 to the partner) by its classes.
                raise DBAPIError.instance(begin, None, exc, sqlite3.Error) from exc


def _ensure_parent_directory(database: str | None) -> None:
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
