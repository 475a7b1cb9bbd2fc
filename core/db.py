"""Storage: the schema (SQLAlchemy Core) and the database handle.

SQLite (the default, via aiosqlite) runs in WAL mode with ``synchronous=FULL``, so a
committed transaction is on disk before the commit returns. Within one process all
writes go through one connection, one transaction at a time: SQLite has one writer
anyway, and queueing in Python is cheaper than spinning on SQLITE_BUSY. PostgreSQL
uses the pool for both.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
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
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

metadata = MetaData()

apps = Table(
    "apps",
    metadata,
    Column("app_id", String(64), primary_key=True),
    Column("company", String(128), nullable=False),
    Column("secret", String(128), nullable=False),
    Column("sign_type", String(16), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    # Where final order states are POSTed; NULL: the partner only polls.
    Column("notify_url", Text),
)

server_keys = Table(
    "server_keys",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(128), nullable=False),
)

orders = Table(
    "orders",
    metadata,
    Column("order_no", String(32), primary_key=True),
    Column("order_id", String(32), nullable=False, unique=True),
    Column("app_id", String(64), nullable=False),
    Column("cstm_order_no", String(64), nullable=False),
    Column("cstm_order_name", String(128), nullable=False),
    Column("company", String(128), nullable=False),
    Column("supplier", String(32), nullable=False),
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
    UniqueConstraint("app_id", "cstm_order_no", name="uq_orders_app_cstm_order_no"),
    Index("ix_orders_next_run_at", "next_run_at"),
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

# Small shared counters, e.g. the configuration generation that `topup reload` bumps.
control = Table(
    "control",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)


def insert_ignoring_conflicts(db: Database, table: Table, conflict_columns: list[str]):
    """INSERT ... ON CONFLICT DO NOTHING in the dialect at hand."""
    dialect_insert = postgresql.insert if db.is_postgres else sqlite.insert
    return dialect_insert(table).on_conflict_do_nothing(index_elements=conflict_columns)


class Database:
    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.is_postgres = self.url.get_backend_name() == "postgresql"
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            _ensure_parent_directory(self.url.database)
            self.engine = _sqlite_engine(url, begin="BEGIN")
            self._write_engine = _sqlite_engine(url, begin="BEGIN IMMEDIATE", pool_size=1)
        else:
            self.engine = create_async_engine(url, pool_size=20, max_overflow=20)
            self._write_engine = self.engine
        self._write_lock = asyncio.Lock() if self.is_sqlite else None

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that commits when the block ends, durably, or rolls back."""
        if self._write_lock is None:
            async with self._write_engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, self._write_engine.begin() as conn:
            yield conn

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._write_engine is not self.engine:
            await self._write_engine.dispose()


def _sqlite_engine(url: str, begin: str, pool_size: int = 5) -> AsyncEngine:
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=300)

    @event.listens_for(engine.sync_engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so that BEGIN is ours to choose:
        # writers use BEGIN IMMEDIATE and wait for the lock up front instead of
        # failing with SQLITE_BUSY when a read transaction upgrades.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "journal_mode=WAL",
            "synchronous=FULL",
            "busy_timeout=30000",
            "foreign_keys=ON",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine


def _ensure_parent_directory(database: str | None) -> None:
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
