"""The lifecycle's state rules, in process, directly against a real database (SQLite
and PostgreSQL): accept, claim, apply, resend, wake, requery and resolve as the
dispatcher, the partner desk and the console call them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date

import msgspec
import pytest

from core.apps import AppStore
from core.audit import AuditLog
from core.db import Database
from core.ids import OrderNumbers, new_order_id
from core.ledger import Ledger
from core.lifecycle import Lifecycle, Query, Send, Unroutable
from core.migrate import ensure_schema
from core.order_store import OrderStore
from core.orders import NewOrder, State
from core.reconcile import partner_statement
from core.suppliers import SupplierResult
from tests.order_rows import Plan


class Desk(msgspec.Struct):
    lifecycle: Lifecycle
    store: OrderStore
    ledger: Ledger

    @property
    def db(self) -> Database:
        return self.store.db


@pytest.fixture
async def desk(database_url: str) -> AsyncIterator[Desk]:
    db = Database(database_url)
    await ensure_schema(db)
    await AppStore(db).add("app", "co")
    await Ledger(db).credit("app", 1_000_000, "test funds", "test")
    yield Desk(Lifecycle(db), OrderStore(db), Ledger(db))
    await db.dispose()


numbers = OrderNumbers()


def new_order(cstm: str) -> NewOrder:
    order_no = numbers.next()
    return NewOrder(
        order_no=order_no,
        order_id=new_order_id(order_no),
        app_id="app",
        cstm_order_no=cstm,
        cstm_order_name="name",
        company="co",
        carrier="中国移动",
        phone_no="13800138000",
        product_id="YD10",
        face_value=1000,
        price=995,
    )


async def submitted(desk: Desk, cstm: str = "c1", plan: Plan | None = None) -> str:
    _order, created = await desk.lifecycle.accept(new_order(cstm))
    assert created
    [step] = await desk.lifecycle.claim("me", 60_000, 10, plan or Plan("sandbox"))
    assert isinstance(step, Send)
    return step.upstream.reference


async def apply(desk: Desk, reference: str, result: SupplierResult, from_submit: bool = False):
    return await desk.lifecycle.apply(
        reference,
        result,
        from_submit=from_submit,
        next_query_delay_ms=1000,
        counts_as_query=not from_submit,
    )


def order_of(reference: str) -> str:
    return reference.rsplit("A", 1)[0]


async def test_terminal_state_never_changes_back(desk: Desk) -> None:
    reference = await submitted(desk)
    done = await apply(
        desk, reference, SupplierResult.succeeded(supplier_ref="X1"), from_submit=True
    )
    assert done.state is State.SUCCEEDED and done.changed
    for later in (
        SupplierResult.failed(code="9", message="撤销"),
        SupplierResult.pending(),
        SupplierResult.unknown(),
        SupplierResult.failed(code="NO_BALANCE", failover=True),
    ):
        again = await apply(desk, reference, later, from_submit=True)
        assert again.state is State.SUCCEEDED and not again.changed
    order = await desk.store.get(order_of(reference))
    assert order.state is State.SUCCEEDED and order.next_run_at is None
    assert (await desk.ledger.account("app")).captured == 995


async def test_same_result_applies_once(desk: Desk) -> None:
    reference = await submitted(desk)
    first = await apply(desk, reference, SupplierResult.failed(code="9", message="撤销"))
    second = await apply(desk, reference, SupplierResult.failed(code="9", message="撤销"))
    assert (first.changed, second.changed) == (True, False)
    assert second.state is State.FAILED
    assert await desk.ledger.verify("app")
    assert (await desk.ledger.account("app")).held == 0


async def test_acknowledged_attempt_does_not_fall_back_to_unknown(desk: Desk) -> None:
    reference = await submitted(desk)
    await apply(desk, reference, SupplierResult.pending(supplier_ref="X1"))
    after = await apply(desk, reference, SupplierResult.unknown(code="TIMEOUT"))
    assert after.state is State.PENDING


async def test_a_claimed_order_is_not_claimed_twice(desk: Desk) -> None:
    await desk.lifecycle.accept(new_order("c2"))
    assert len(await desk.lifecycle.claim("a", 60_000, 10, Plan("sandbox"))) == 1
    assert await desk.lifecycle.claim("b", 60_000, 10, Plan("sandbox")) == []


async def test_the_attempt_is_recorded_with_its_claim(desk: Desk) -> None:
    await desk.lifecycle.accept(new_order("c4"))
    [step] = await desk.lifecycle.claim("a", 60_000, 10, Plan("sandbox"))
    assert isinstance(step, Send) and step.plugin == "sandbox"
    assert step.upstream.reference == f"{step.upstream.order_no}A1"
    [attempt] = await desk.store.attempts_of(step.upstream.order_no)
    assert (attempt.state, attempt.plugin, attempt.cost) == ("submitting", "sandbox", 990)
    order = await desk.store.get(step.upstream.order_no)
    assert order.state is State.SUBMITTING and order.lease_owner == "a"


async def test_a_failover_from_submit_retries_through_the_same_claim(desk: Desk) -> None:
    plan = Plan("first", "second")
    reference = await submitted(desk, "c5", plan)
    refused = SupplierResult.failed(code="NO_BALANCE", message="余额不足", failover=True)
    moved = await apply(desk, reference, refused, from_submit=True)
    assert moved.state is State.RETRYING
    [step] = await desk.lifecycle.claim("me", 60_000, 10, plan)
    assert isinstance(step, Send) and step.plugin == "second"
    assert step.upstream.reference == f"{order_of(reference)}A2"


async def test_a_failover_from_a_query_or_callback_never_moves_the_order(desk: Desk) -> None:
    reference = await submitted(desk, "c6", Plan("first", "second"))
    await apply(desk, reference, SupplierResult.unknown(code="TIMEOUT"), from_submit=True)
    said = SupplierResult.failed(code="NO_BALANCE", message="余额不足", failover=True)
    applied = await apply(desk, reference, said)  # a query's answer
    # Only a submit can be refused before acceptance: from a query it proves nothing.
    assert applied.state is State.UNKNOWN
    [attempt] = await desk.store.attempts_of(order_of(reference))
    assert attempt.state == "unknown" and not attempt.refused
    assert (await desk.ledger.account("app")).held == 995


async def test_no_plugin_left_fails_the_order_in_its_claim(desk: Desk) -> None:
    reference = await submitted(desk, "c7", Plan("only"))
    refused = SupplierResult.failed(code="NO_BALANCE", message="余额不足", failover=True)
    await apply(desk, reference, refused, from_submit=True)
    [step] = await desk.lifecycle.claim("me", 60_000, 10, Plan("only"))
    assert isinstance(step, Unroutable) and step.tried == ["only"]
    order = await desk.store.get(order_of(reference))
    assert (order.state, order.fail_code) == (State.FAILED, "NO_BALANCE")
    # The partner reads the curated reason of the last refusal, not "余额不足".
    assert order.fail_reason == "充值失败，款项已退回"
    assert (await desk.ledger.account("app")).held == 0


async def test_an_order_no_supplier_can_take_tells_the_partner_so(desk: Desk) -> None:
    await desk.lifecycle.accept(new_order("c7b"))
    [step] = await desk.lifecycle.claim("me", 60_000, 10, Plan())
    assert isinstance(step, Unroutable) and step.tried == []
    order = await desk.store.get(step.order.order_no)
    assert (order.state, order.fail_code, order.fail_reason) == (
        State.FAILED,
        "NO_SUPPLIER",
        "暂无可用充值渠道",
    )


async def test_a_claim_reads_the_open_attempt_it_will_query(desk: Desk) -> None:
    reference = await submitted(desk, "c8")
    await apply(desk, reference, SupplierResult.pending(supplier_ref="X"), from_submit=True)
    await desk.lifecycle.wake(order_of(reference))
    [step] = await desk.lifecycle.claim("me", 60_000, 10, Plan("sandbox"))
    assert isinstance(step, Query) and step.attempt.reference == reference
    # A callback settles it while the worker asks: the worker's answer changes nothing.
    await apply(desk, reference, SupplierResult.succeeded(supplier_ref="X"))
    late = await apply(desk, reference, SupplierResult.pending(supplier_ref="X"))
    assert late.state is State.SUCCEEDED and not late.changed


async def test_an_unknown_attempt_is_resent_once_and_only_by_its_lease_holder(desk: Desk) -> None:
    reference = await submitted(desk, "c9")
    await apply(desk, reference, SupplierResult.unknown(code="TIMEOUT"), from_submit=True)
    order_no = order_of(reference)
    assert await desk.lifecycle.resend(reference, "me", min_age_ms=60_000) is None  # too soon
    await desk.lifecycle.wake(order_no)
    [step] = await desk.lifecycle.claim("me", 60_000, 10, Plan("sandbox"))
    assert isinstance(step, Query)
    assert await desk.lifecycle.resend(reference, "someone-else", min_age_ms=0) is None
    again = await desk.lifecycle.resend(reference, "me", min_age_ms=0)
    assert again is not None and again.reference == reference
    assert (await desk.store.get(order_no)).state is State.SUBMITTING
    assert await desk.lifecycle.resend(reference, "me", min_age_ms=0) is None
    [attempt] = await desk.store.attempts_of(order_no)
    assert attempt.resent and attempt.state == "submitting"
    events = [event.kind for event in await desk.store.events_of(order_no)]
    assert events == ["resent"]


async def test_an_operator_verdict_is_audited_with_the_change(desk: Desk) -> None:
    reference = await submitted(desk, "c10")
    order_no = order_of(reference)
    await desk.lifecycle.apply(
        reference,
        SupplierResult.unknown(code="TIMEOUT"),
        from_submit=True,
        next_query_delay_ms=None,
        counts_as_query=False,
    )
    assert (await desk.store.get(order_no)).state is State.REVIEW
    assert await desk.lifecycle.requery(order_no, "li", "供应商恢复")
    assert not await desk.lifecycle.requery(order_no, "li", "again: not in review any more")
    applied = await desk.lifecycle.resolve(order_no, True, "供应商后台确认成功", "li")
    assert applied.state is State.SUCCEEDED and applied.changed
    actions = [entry.action for entry in await AuditLog(desk.db).page(target=order_no)]
    assert sorted(actions) == ["order.requery", "order.resolve"]
    with pytest.raises(LookupError):
        await desk.lifecycle.resolve(order_no, False, "too late", "li")


async def test_unknown_reference_is_ignored(desk: Desk) -> None:
    assert await apply(desk, "TP-nothing-1", SupplierResult.succeeded()) is None


def test_order_numbers_grow_and_are_unique() -> None:
    generator = OrderNumbers(node=42)
    produced = [generator.next() for _ in range(20_000)]
    assert produced == sorted(produced)
    assert len(set(produced)) == len(produced)


async def test_an_order_numbered_before_midnight_is_on_that_days_statement(
    desk: Desk,
) -> None:
    # Taken at 23:59:59.999 Beijing time, stored (in this test) long after.
    number = "TP20261125235959999" + "00420000"
    late = msgspec.structs.replace(new_order("c-midnight"), order_no=number)
    order, created = await desk.lifecycle.accept(late)
    assert created
    [listed] = await partner_statement(desk.db, date(2026, 11, 25), "app")
    assert listed.order_no == number and listed.created_at == order.created_at
    assert await partner_statement(desk.db, date(2026, 11, 26), "app") == []
