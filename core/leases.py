"""Leasing due rows: how several workers (and processes, and instances) share work.

A worker claims rows whose time has come and that nobody holds, and marks them held
until the lease runs out; the row is due again at that moment, so if the worker dies
mid-step, the next worker to look takes it over. On PostgreSQL ``SKIP LOCKED`` lets
concurrent claims pass each other instead of queueing; SQLite has one writer anyway.

Workers also beat a heartbeat in the ``workers`` table (core/worker_loop.py), so a dead
worker's leases need not wait for their end: a lease whose owner has no row there, or a
row whose heartbeat is older than ``takeover_ms``, is free. The claim only looks at rows
that are due (the index on the due column), so a dead worker's rows are brought to it:
the first worker of the same kind to see the stale heartbeat makes them due now and
deletes the row (``reap_workers``), and a worker that stops cleanly does the same for
itself (``sign_off``). A live worker's lease is never taken before it runs out, however
long its step takes, since its heartbeat runs apart from its work.

Heartbeats are written and judged by the database's clock, so the hosts of several
instances need not agree on the time for this.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from functools import cache

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Connection,
    Table,
    bindparam,
    cast,
    delete,
    exists,
    extract,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Dialect

from core.clock import now_ms
from core.db import workers

# Makes the rows that the given (dead) owners hold due now, in the caller's transaction.
Release = Callable[[Connection, list[str]], object]


def lease_due(
    conn: Connection,
    table: Table,
    due: Column,
    owner: str,
    lease_ms: int,
    limit: int,
    returning: Sequence[Column],
    takeover_ms: int | None = None,
) -> list[tuple]:
    """Hold up to ``limit`` rows of ``table`` whose ``due`` time has passed; returns them,
    as tuples of the ``returning`` columns.

    The table needs ``lease_owner`` and ``lease_until`` columns and a one-column key.
    ``takeover_ms``: also take rows whose owner has no heartbeat younger than that (for
    owners that beat one); None takes a held row only once its lease has run out.
    """
    now = now_ms()
    sql, names, fixed = _lease_sql(
        conn.dialect, table, due, tuple(returning), takeover_ms is not None
    )
    params = {**fixed, "now": now, "until": now + lease_ms, "owner": owner, "limit": limit}
    if takeover_ms is not None:
        params["takeover_ms"] = takeover_ms
    # Straight to the driver, rows as tuples: the claim runs many times a second, and
    # SQLAlchemy's result machinery cost more per row than the UPDATE itself.
    values = tuple(params[name] for name in names)
    if conn.dialect.name == "sqlite":
        return conn.connection.dbapi_connection.execute(sql, values).fetchall()
    return conn.exec_driver_sql(sql, values).fetchall()


@cache
def _lease_sql(
    dialect: Dialect, table: Table, due: Column, returning: tuple[Column, ...], takeover: bool
) -> tuple[str, tuple[str, ...], dict[str, object]]:
    """The lease statement's SQL, its parameters' names in the order it binds them, and
    the values of those the statement fixes itself (the clock's arithmetic)."""
    compiled = _lease_statement(dialect.name, table, due, returning, takeover).compile(
        dialect=dialect
    )
    return compiled.string, tuple(compiled.positiontup or ()), compiled.params


def lock_due(
    conn: Connection,
    table: Table,
    due: Column,
    limit: int,
    returning: Sequence[Column],
    now: int,
    takeover_ms: int | None = None,
) -> list[tuple]:
    """The rows ``lease_due`` would take at ``now``, locked (PostgreSQL ``FOR UPDATE SKIP
    LOCKED``; SQLite has one writer) but not yet held: the caller writes the lease
    (``lease``) in the same UPDATE as whatever else it changes, one row write, not two."""
    takeover = takeover_ms is not None
    sql, names, fixed = _due_sql(conn.dialect, table, due, tuple(returning), takeover)
    params = {**fixed, "now": now, "limit": limit, "takeover_ms": takeover_ms}
    values = tuple(params[name] for name in names)
    if conn.dialect.name == "sqlite":
        return conn.connection.dbapi_connection.execute(sql, values).fetchall()
    return conn.exec_driver_sql(sql, values).fetchall()


def lease(owner: str, lease_ms: int, now: int) -> dict[str, object]:
    """The columns that hold a row for ``owner`` (and make it due again when the lease
    ends), for a row ``lock_due`` returned."""
    until = now + lease_ms
    return {"lease_owner": owner, "lease_until": until, "next_run_at": until}


@cache
def _due_sql(
    dialect: Dialect, table: Table, due: Column, returning: tuple[Column, ...], takeover: bool
) -> tuple[str, tuple[str, ...], dict[str, object]]:
    query = _due(dialect.name, table, due, takeover).with_only_columns(*returning)
    compiled = query.compile(dialect=dialect)
    return compiled.string, tuple(compiled.positiontup or ()), compiled.params


@cache
def _due(dialect: str, table: Table, due: Column, takeover: bool):
    """The due rows nobody may be working on, oldest first, locked: built once per shape."""
    key = table.primary_key.columns.values()[0]
    now = bindparam("now")
    free = or_(table.c.lease_until.is_(None), table.c.lease_until < now)
    if takeover:
        # Checked last, and only for the rare due row that is still held (one woken by a
        # callback, or one a dead worker's reaper made due): a primary-key probe.
        alive = exists().where(
            workers.c.owner == table.c.lease_owner,
            workers.c.heartbeat_at >= _database_now(dialect) - bindparam("takeover_ms"),
        )
        free = or_(free, ~alive)
    return (
        select(key)
        .where(due <= now, free)
        .order_by(due)
        .limit(bindparam("limit"))
        .with_for_update(skip_locked=True)
    )


@cache
def _lease_statement(
    dialect: str, table: Table, due: Column, returning: tuple[Column, ...], takeover: bool
):
    """Built once per shape: the claim runs many times a second, and building a statement
    costs more than running it."""
    key = table.primary_key.columns.values()[0]
    claimable = _due(dialect, table, due, takeover)
    until = bindparam("until")
    return (
        update(table)
        .where(key.in_(claimable.scalar_subquery()))
        .values({"lease_owner": bindparam("owner"), "lease_until": until, due.key: until})
        .returning(*returning)
    )


def make_due(
    conn: Connection, table: Table, due: Column, owners: Sequence[str], horizon_ms: int
) -> int:
    """Make the rows that ``owners`` hold due now, so that a claim looks at them; returns
    how many. Held rows are due when their lease ends, at most ``horizon_ms`` (the lease's
    length) from now: only that stretch of the due index is read."""
    now = now_ms()
    key = table.primary_key.columns.values()[0]
    held = (
        select(key)
        .where(due > now, due <= now + horizon_ms, table.c.lease_owner.in_(owners))
        # A row locked now is being changed by someone else; if it stays held, its lease
        # runs out as it always did.
        .with_for_update(skip_locked=True)
    )
    changed = conn.execute(
        update(table).where(key.in_(held.scalar_subquery())).values({due.key: now})
    )
    return changed.rowcount


# -- heartbeats -------------------------------------------------------------------------------


def database_now_ms(conn: Connection) -> ColumnElement[int]:
    """The database's clock in Unix milliseconds, as SQL."""
    return _database_now(conn.dialect.name)


def _database_now(dialect: str) -> ColumnElement[int]:
    if dialect == "postgresql":
        return cast(extract("epoch", func.statement_timestamp()) * 1000, BigInteger)
    # 2440587.5: the Julian day of the Unix epoch.
    return cast((func.julianday("now") - 2440587.5) * 86_400_000, BigInteger)


def beat(conn: Connection, owner: str, kind: str) -> bool:
    """Record that ``owner`` is alive now; True if it had no row (first beat, or a worker
    taken for dead) and was registered."""
    now = database_now_ms(conn)
    beaten = conn.execute(update(workers).where(workers.c.owner == owner).values(heartbeat_at=now))
    if beaten.rowcount == 1:
        return False
    conn.execute(
        insert(workers).values(
            owner=owner,
            kind=kind,
            host=socket.gethostname()[:255],
            pid=os.getpid(),
            started_at=now,
            heartbeat_at=now,
        )
    )
    return True


def stale_workers(conn: Connection, kind: str, me: str, takeover_ms: int) -> list[str]:
    """Workers of ``kind`` other than ``me`` whose heartbeat is older than ``takeover_ms``."""
    return list(
        conn.execute(
            select(workers.c.owner).where(
                workers.c.kind == kind,
                workers.c.owner != me,
                workers.c.heartbeat_at < database_now_ms(conn) - takeover_ms,
            )
        ).scalars()
    )


def reap_workers(
    conn: Connection, owners: Sequence[str], takeover_ms: int, release: Release
) -> list[str]:
    """Delete the rows of those of ``owners`` whose heartbeat is still stale, and make what
    they held due now (``release``); returns the owners reaped."""
    still_stale = (
        select(workers.c.owner)
        .where(
            workers.c.owner.in_(owners),
            workers.c.heartbeat_at < database_now_ms(conn) - takeover_ms,
        )
        # A row locked now is a worker beating its heartbeat: not dead, and not waited for.
        .with_for_update(skip_locked=True)
    )
    dead = list(
        conn.execute(
            delete(workers)
            .where(workers.c.owner.in_(still_stale.scalar_subquery()))
            .returning(workers.c.owner)
        ).scalars()
    )
    if dead:
        release(conn, dead)
    return dead


def sign_off(conn: Connection, owner: str, release: Release) -> None:
    """A worker stopping cleanly: what it held is due now, and its row goes."""
    release(conn, [owner])
    conn.execute(delete(workers).where(workers.c.owner == owner))
