"""The store's state rules, directly against a real database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date

import msgspec
import pytest

from core.apps import AppStore
from core.db import Database
from core.ids import OrderNumbers, new_order_id
from core.ledger import Ledger
from core.migrate import ensure_schema
from core.order_store import OrderStore
from core.orders import NewOrder, State
from core.reconcile import partner_statement
from core.suppliers import SupplierResult


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[OrderStore]:
    db = Database(database_url)
    await ensure_schema(db)
    await AppStore(db).add("app", "co")
    await Ledger(db).credit("app", 1_000_000, "test funds", "test")
    yield OrderStore(db)
    await db.dispose()


numbers = OrderNumbers()


def new_order(cstm: str) -> NewOrder:
    return NewOrder(
        order_no=numbers.next(),
        order_id=new_order_id(),
        app_id="app",
        cstm_order_no=cstm,
        cstm_order_name="name",
        company="co",
        supplier="中国移动",
        phone_no="13800138000",
        product_id="YD10",
        face_value=1000,
        price=995,
    )


async def submitted(store: OrderStore, cstm: str = "c1") -> str:
    _order, created = await store.insert_or_get(new_order(cstm))
    assert created
    [(claimed, _started)] = await store.claim_due("me", 60_000, 10)
    upstream = await store.start_attempt(claimed.order_no, "me", "sandbox")
    assert upstream is not None
    return upstream.reference


async def apply(store: OrderStore, reference: str, result: SupplierResult, retry: bool = False):
    return await store.apply(
        reference, result, retry_elsewhere=retry, next_query_delay_ms=1000, counts_as_query=True
    )


async def test_terminal_state_never_changes_back(store: OrderStore) -> None:
    reference = await submitted(store)
    done = await apply(store, reference, SupplierResult.succeeded("X1"))
    assert done.state is State.SUCCEEDED and done.changed
    for later in (
        SupplierResult.failed("9", "撤销"),
        SupplierResult.pending(),
        SupplierResult.unknown(),
        SupplierResult.failed("NO_BALANCE", failover=True),
    ):
        again = await apply(store, reference, later, retry=True)
        assert again.state is State.SUCCEEDED and not again.changed
    order = await store.get(reference.rsplit("A", 1)[0])
    assert order.state is State.SUCCEEDED and order.next_run_at is None


async def test_same_result_applies_once(store: OrderStore) -> None:
    reference = await submitted(store)
    first = await apply(store, reference, SupplierResult.failed("9", "撤销"))
    second = await apply(store, reference, SupplierResult.failed("9", "撤销"))
    assert (first.changed, second.changed) == (True, False)
    assert second.state is State.FAILED


async def test_acknowledged_attempt_does_not_fall_back_to_unknown(store: OrderStore) -> None:
    reference = await submitted(store)
    await apply(store, reference, SupplierResult.pending("X1"))
    after = await apply(store, reference, SupplierResult.unknown("TIMEOUT"))
    assert after.state is State.PENDING


async def test_a_claimed_order_is_not_claimed_twice(store: OrderStore) -> None:
    await store.insert_or_get(new_order("c2"))
    assert len(await store.claim_due("a", 60_000, 10)) == 1
    assert await store.claim_due("b", 60_000, 10) == []


async def test_an_attempt_starts_only_for_its_lease_holder(store: OrderStore) -> None:
    new = new_order("c3")
    await store.insert_or_get(new)
    await store.claim_due("a", 60_000, 10)
    assert await store.start_attempt(new.order_no, "b", "sandbox") is None
    assert await store.start_attempt(new.order_no, "a", "sandbox") is not None
    assert await store.start_attempt(new.order_no, "a", "sandbox") is None


async def test_unknown_reference_is_ignored(store: OrderStore) -> None:
    assert await apply(store, "TP-nothing-1", SupplierResult.succeeded()) is None


def test_order_numbers_grow_and_are_unique() -> None:
    generator = OrderNumbers(node=42)
    produced = [generator.next() for _ in range(20_000)]
    assert produced == sorted(produced)
    assert len(set(produced)) == len(produced)


async def test_an_order_numbered_before_midnight_is_on_that_days_statement(
    store: OrderStore,
) -> None:
    # Taken at 23:59:59.999 Beijing time, stored (in this test) long after.
    number = "TP20261125235959999" + "00420000"
    late = msgspec.structs.replace(new_order("c-midnight"), order_no=number)
    order, created = await store.insert_or_get(late)
    assert created
    [listed] = await partner_statement(store.db, date(2026, 11, 25), "app")
    assert listed.order_no == number and listed.created_at == order.created_at
    assert await partner_statement(store.db, date(2026, 11, 26), "app") == []


async def test_a_first_attempt_can_be_recorded_with_its_claim(store: OrderStore) -> None:
    await store.insert_or_get(new_order("c4"))
    [(order, started)] = await store.claim_due("a", 60_000, 10, plan=lambda order: ("sandbox", 990))
    upstream, plugin = started
    assert plugin == "sandbox" and upstream.reference == f"{order.order_no}A1"
    [attempt] = await store.attempts_of(order.order_no)
    assert (attempt.state, attempt.plugin, attempt.cost) == ("submitting", "sandbox", 990)
    assert (await store.get(order.order_no)).state is State.SUBMITTING
