"""Many rows through one statement, with SQLAlchemy's per-row work taken out.

The statements are SQLAlchemy Core constructs, compiled once per dialect; the rows go
to the driver's own ``executemany`` as tuples. For a batch of a hundred orders this
skips a hundred rounds of parameter processing that the group commit's hot path
does not need (values are already plain ints and strings).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cache
from operator import itemgetter
from typing import Any

from sqlalchemy import Column, Connection, Select, Table, bindparam, insert, null, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

# Keeps every IN (...) list well inside SQLite's limit on bound parameters.
IN_CHUNK = 512


def insert_rows(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    skip_conflicts_on: tuple[str, ...] = (),
) -> None:
    """INSERT ``rows`` (tuples in ``columns`` order); ``skip_conflicts_on``: a row that
    conflicts with one already there on those columns is left out (ON CONFLICT DO NOTHING)."""
    if rows:
        _run(conn, _insert_sql(conn.dialect, table, tuple(columns), skip_conflicts_on), rows)


def update_rows(
    conn: Connection,
    table: Table,
    key: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
) -> None:
    """UPDATE ``table`` SET columns WHERE key = ..., per row: (*column values, key value)."""
    if rows:
        _run(conn, _update_sql(conn.dialect, table, key, tuple(columns)), rows)


def update_alike(
    conn: Connection,
    table: Table,
    key: str,
    columns: Sequence[str],
    values: Sequence[Any],
    keys: Sequence[Any],
) -> None:
    """UPDATE ``table`` SET columns = values WHERE key IN keys: rows that change alike, in
    one statement.

    Per row this binds one value, where ``update_rows`` binds every column's and runs the
    statement again; None is written as a NULL literal, which the driver would otherwise
    bind through its adapter lookup (core/db.py). About a third less per row on SQLite.
    """
    nulls = tuple(value is None for value in values)
    given = [value for value in values if value is not None]
    for padded in _padded_chunks(keys):
        sql, order = _alike_sql(conn.dialect, table, key, tuple(columns), nulls, len(padded))
        params = [*(given[i] for i in order), *padded]
        if conn.dialect.name == "sqlite" and conn.in_transaction():
            conn.connection.dbapi_connection.execute(sql, params)
        else:
            conn.exec_driver_sql(sql, tuple(params))


def add_to_columns(
    conn: Connection, table: Table, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """UPDATE ``table`` SET column = column + value ... WHERE key = ..., per row.

    Each row is (value per column..., key). Rows are updated in key order, so that two
    transactions touching the same rows lock them in the same order and cannot deadlock.
    """
    if rows:
        ordered = sorted(rows, key=lambda row: row[-1])
        _run(conn, _increment_sql(conn.dialect, table, key, tuple(columns)), ordered)


def fetch_in(
    conn: Connection,
    query: Select,
    column: Column,
    values: Sequence[Any],
    params: Sequence[Any] = (),
) -> list[tuple]:
    """The rows of ``query`` whose ``column`` is one of ``values``, as tuples in the
    query's column order, chunk by chunk in sorted order (so that ``FOR UPDATE`` takes its
    locks in key order everywhere).

    ``query`` must be built once (a module constant): its SQL is compiled once per dialect
    and IN-list size, and lists are padded to a power of two so that few sizes occur.
    ``params``: the values of the query's own bound parameters, in the order they appear
    in its SQL (all before the IN list, which is added last).
    """
    rows: list[tuple] = []
    for padded in _padded_chunks(values):
        sql = _in_sql(conn.dialect, query, column, len(padded), len(params))
        bound = [*params, *padded]
        if conn.dialect.name == "sqlite":
            rows += conn.connection.dbapi_connection.execute(sql, bound).fetchall()
        else:
            rows += [tuple(row) for row in conn.exec_driver_sql(sql, tuple(bound))]
    return rows


def _padded_chunks(values: Sequence[Any]) -> Iterator[list[Any]]:
    """``values`` once each, sorted, in IN lists of at most ``IN_CHUNK``, each padded with
    its last value to a power of two so that few statement sizes occur."""
    ordered = sorted(set(values))
    for start in range(0, len(ordered), IN_CHUNK):
        chunk = ordered[start : start + IN_CHUNK]
        size = 1 << (len(chunk) - 1).bit_length()
        yield [*chunk, *[chunk[-1]] * (size - len(chunk))]


# The IN list's parameter: compiled once per statement with SQLAlchemy's "expanding" form,
# then expanded to each list size SQLAlchemy's own way, which costs a sixteenth of a
# compile (2 ms for a list of 256): the first claims and batches of a process meet most
# sizes, and the bench's in-process measures had counted those compiles as per-order cost.
KEYS = "in_keys"


_IN_CACHE: dict[tuple[str, int, int, int], str] = {}


def _in_sql(dialect: Dialect, query: Select, column: Column, size: int, own: int) -> str:
    key = (dialect.name, id(query), id(column), size)
    sql = _IN_CACHE.get(key)
    if sql is None:
        sql = _IN_CACHE[key] = _expanded(_in_template(dialect, query, column), own, size)
    return sql


@cache
def _in_template(dialect: Dialect, query: Select, column: Column):
    return query.where(column.in_(bindparam(KEYS, expanding=True))).compile(dialect=dialect)


def _expanded(compiled, own: int, size: int) -> str:
    """``compiled``'s SQL with its IN list of ``size`` parameters, after ``own`` others."""
    names = list(compiled.positiontup or [])
    if names[own:] != [KEYS]:
        raise AssertionError(f"expected {own} parameters before the IN list, got {names}")
    state = compiled.construct_expanded_state({**dict.fromkeys(names[:own]), KEYS: [None] * size})
    return state.statement


def fetch_one(conn: Connection, statement, params: dict[str, Any]) -> tuple | None:
    """The first row of a SELECT, as a tuple in the statement's column order.

    On SQLite this goes straight to the driver: for a point read SQLAlchemy's result
    machinery costs several times the read itself.
    """
    if conn.dialect.name != "sqlite":
        row = conn.execute(statement, params).first()
        return None if row is None else tuple(row)
    return driver_fetch_one(conn.connection.dbapi_connection, conn.dialect, statement, params)


def driver_fetch_one(driver: Any, dialect: Dialect, statement, params: dict[str, Any]):
    """``fetch_one`` on a DB-API connection of ``dialect`` (SQLite's driver)."""
    sql, names = _select_sql(dialect, statement)
    cursor = driver.execute(sql, [params[name] for name in names])
    try:
        return cursor.fetchone()
    finally:
        cursor.close()  # a statement left open would hold its read snapshot


@cache
def _select_sql(dialect: Dialect, statement) -> tuple[str, tuple[str, ...]]:
    compiled = statement.compile(dialect=dialect)
    return compiled.string, tuple(compiled.positiontup or ())


@cache
def _insert_sql(
    dialect: Dialect, table: Table, columns: tuple[str, ...], skip_conflicts_on: tuple[str, ...]
):
    values = {name: bindparam(f"p_{name}") for name in columns}
    if skip_conflicts_on:
        dialect_insert = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
        statement = (
            dialect_insert(table)
            .values(values)
            .on_conflict_do_nothing(index_elements=list(skip_conflicts_on))
        )
    else:
        statement = insert(table).values(values)
    return _positional(statement, dialect, [f"p_{name}" for name in columns])


@cache
def _update_sql(dialect: Dialect, table: Table, key: str, columns: tuple[str, ...]):
    statement = (
        update(table)
        .where(table.c[key] == bindparam("p_key"))
        .values({name: bindparam(f"p_{name}") for name in columns})
    )
    return _positional(statement, dialect, [*(f"p_{name}" for name in columns), "p_key"])


@cache
def _alike_sql(
    dialect: Dialect,
    table: Table,
    key: str,
    columns: tuple[str, ...],
    nulls: tuple[bool, ...],
    size: int,
) -> tuple[str, tuple[int, ...]]:
    """The SQL, and which of the non-NULL values it binds first, second, ... (SQLAlchemy
    orders SET clauses by table column); the keys follow them."""
    compiled = _alike_template(dialect, table, key, columns, nulls)
    given = [f"p_{name}" for name, is_null in zip(columns, nulls, strict=True) if not is_null]
    bound = list(compiled.positiontup or [])[: len(given)]
    if sorted(bound) != sorted(given):
        raise AssertionError(f"update_alike: unexpected parameters {bound}")
    order = tuple(given.index(name) for name in bound)
    return _expanded(compiled, len(given), size), order


@cache
def _alike_template(
    dialect: Dialect, table: Table, key: str, columns: tuple[str, ...], nulls: tuple[bool, ...]
):
    assigned = {
        name: null() if is_null else bindparam(f"p_{name}")
        for name, is_null in zip(columns, nulls, strict=True)
    }
    keys = bindparam(KEYS, expanding=True)
    return update(table).where(table.c[key].in_(keys)).values(assigned).compile(dialect=dialect)


@cache
def _increment_sql(dialect: Dialect, table: Table, key: str, columns: tuple[str, ...]):
    statement = (
        update(table)
        .where(table.c[key] == bindparam("p_key"))
        .values({name: table.c[name] + bindparam(f"p_{name}") for name in columns})
    )
    return _positional(statement, dialect, [*(f"p_{name}" for name in columns), "p_key"])


def _run(conn: Connection, sql: tuple[str, itemgetter | None], rows) -> None:
    text, reorder = sql
    if reorder is not None:
        rows = list(map(reorder, rows))
    if conn.dialect.name == "sqlite" and conn.in_transaction():
        # Straight to the driver inside the caller's transaction: SQLAlchemy's execution
        # context costs more per statement than a batch of a few rows does.
        conn.connection.dbapi_connection.executemany(text, rows)
    else:
        conn.exec_driver_sql(text, list(rows))


def _positional(statement, dialect: Dialect, given: list[str]) -> tuple[str, itemgetter | None]:
    """The SQL, and how to reorder a row given in ``given`` order into the SQL's order
    (None when they agree): SQLAlchemy orders SET clauses by table column."""
    compiled = statement.compile(dialect=dialect)
    wanted = list(compiled.positiontup or [])
    if sorted(wanted) != sorted(given):
        raise AssertionError(f"unexpected parameters {wanted}")
    order = tuple(given.index(name) for name in wanted)
    return compiled.string, None if order == tuple(range(len(given))) else itemgetter(*order)
