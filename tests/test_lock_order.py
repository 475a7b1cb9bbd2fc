"""Two instances on one PostgreSQL, accepting and settling the same partners' orders at
once while operators credit the partners and change their credit limits: every
transaction takes its locks in one order (orders, then accounts, each in key order:
core/writer.py), so PostgreSQL never has to break a deadlock, and the books agree."""

from __future__ import annotations

import asyncio
import random

import pytest

from core.apps import AppStore
from core.db import Database
from core.ids import OrderNumbers, new_order_id
from core.ledger import Ledger
from core.lifecycle import Lifecycle, Send
from core.migrate import ensure_schema
from core.orders import NewOrder
from core.suppliers import SupplierResult
from tests.order_rows import Plan
from tests.support import Backend

APPS = [f"app{n}" for n in range(4)]
ROUNDS = 40


async def test_accepting_and_settling_across_instances_never_deadlocks(
    database_url: str, backend: Backend
) -> None:
    if backend.name != "postgres":
        pytest.skip("SQLite has one writer: nothing to deadlock")
    first, second = Database(database_url), Database(database_url)
    await ensure_schema(first)
    for app in APPS:
        await AppStore(first).add(app, "co")
        await Ledger(first).credit(app, 100_000_000, "test funds", "test")
    deadlocks_before = await _deadlocks(first)
    try:
        await asyncio.gather(*(_instance(db, seed) for seed, db in enumerate((first, second))))
        assert await _deadlocks(first) == deadlocks_before
        for app in APPS:
            assert await Ledger(first).verify(app)
    finally:
        await first.dispose()
        await second.dispose()


async def _instance(db: Database, seed: int) -> None:
    """Rounds of: orders for every app, accepted while results of earlier ones settle and
    operators credit apps and set their limits."""
    rng, lifecycle, numbers = random.Random(seed), Lifecycle(db), OrderNumbers(node=seed + 1)
    ledger = Ledger(db)
    for round_no in range(ROUNDS):
        accepts = [
            lifecycle.accept(_order(numbers, rng.choice(APPS), f"{seed}-{round_no}-{i}"))
            for i in range(rng.randint(5, 20))
        ]
        steps = await lifecycle.claim(f"w{seed}", 60_000, rng.randint(5, 30), Plan("sandbox"))
        results = [
            lifecycle.apply(
                step.upstream.reference,
                rng.choice(
                    [SupplierResult.succeeded(), SupplierResult.failed(code="9", message="x")]
                ),
                from_submit=True,
                next_query_delay_ms=1000,
                counts_as_query=False,
            )
            for step in steps
            if isinstance(step, Send)
        ]
        operators = [
            ledger.credit(rng.choice(APPS), rng.randint(1, 500), "top-up", "test"),
            ledger.set_credit_limit(rng.choice(APPS), rng.randint(0, 1000), actor="test"),
        ]
        work = [*accepts, *results, *operators]
        rng.shuffle(work)
        await asyncio.gather(*work)


def _order(numbers: OrderNumbers, app: str, cstm: str) -> NewOrder:
    order_no = numbers.next()
    return NewOrder(
        order_no, new_order_id(order_no), app, cstm, "n", "co", "中国移动", "13800138000",
        "YD10", 1000, 995,
    )  # fmt: skip


async def _deadlocks(db: Database) -> int:
    # The statistics collector reports with a delay: ask for a fresh snapshot.
    query = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"

    def read(conn) -> int:
        conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
        return conn.exec_driver_sql(query).scalar_one()

    return await db.read(read)
