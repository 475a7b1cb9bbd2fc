"""The dispatcher in process: the real lifecycle on a real database (SQLite and
PostgreSQL), a scripted supplier, and a fake clock moved between rounds instead of
sleeping. Crashes, kill -9 and scale-out stay with the subprocess tests."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import ClassVar

import msgspec
import pytest

import topup
from core.apps import AppStore
from core.clock import FakeClock, use_clock
from core.config import parse_config
from core.db import Database
from core.dispatcher import Dispatcher
from core.ids import OrderNumbers, new_order_id
from core.ledger import Ledger
from core.lifecycle import Lifecycle
from core.migrate import ensure_schema
from core.order_store import OrderStore
from core.orders import NewOrder, OrderRecord, State
from core.registry import Registry
from core.runtime import Runtime
from core.suppliers import CallbackReply, CallbackRequest, SupplierResult, UpstreamOrder

CONFIG = """
enabled = ["first", "second", "strict"]

[dispatch]
query_delays = [1, 2]
max_queries = 3
call_timeout = 1
resend_margin = 1
lease_seconds = 5
breaker_threshold = 2

[suppliers."中国移动"]
route = ["first", "second"]
products = [{ product_id = "YD10", face_value = "10", price = "9.95" }]

[suppliers."中国联通"]
route = ["strict"]
products = [{ product_id = "LT10", face_value = "10", price = "9.95" }]
"""


class Script:
    """What each plugin answers, per call, in order (then success), and what it was asked."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], list[SupplierResult]] = {}
        self.calls: list[tuple[str, str, str]] = []  # (plugin, call, reference)
        self.during_query = None  # an async callable run inside the next query
        self.hang: set[str] = set()  # references whose submit never answers

    def will(self, plugin: str, call: str, *results: SupplierResult) -> None:
        self.answers.setdefault((plugin, call), []).extend(results)

    def asked(self, plugin: str, call: str) -> list[str]:
        return [ref for p, c, ref in self.calls if (p, c) == (plugin, call)]


class Scripted(topup.Supplier):
    script: ClassVar[Script]
    authoritative_callbacks = True

    async def submit(self, order: UpstreamOrder) -> SupplierResult:
        if order.reference in self.script.hang:
            self.script.calls.append((self.name, "submit", order.reference))
            await asyncio.Event().wait()
        return self._answer("submit", order)

    async def query(self, order: UpstreamOrder) -> SupplierResult:
        hook, self.script.during_query = self.script.during_query, None
        if hook is not None:
            await hook(order)
        return self._answer("query", order)

    def _answer(self, call: str, order: UpstreamOrder) -> SupplierResult:
        self.script.calls.append((self.name, call, order.reference))
        queued = self.script.answers.get((self.name, call))
        return (
            queued.pop(0)
            if queued
            else SupplierResult.succeeded(supplier_ref=f"S-{order.reference}")
        )

    def parse_callback(self, request: CallbackRequest) -> topup.Callback:
        said = msgspec.json.decode(request.body)
        result = SupplierResult.succeeded(code="CB") if said["ok"] else None
        return topup.Callback(CallbackReply(), said["reference"], result)


class First(Scripted):
    name = "first"


class Second(Scripted):
    name = "second"


class Strict(Scripted):
    """A supplier that refuses a reused reference (as juhe and reloadly document)."""

    name = "strict"
    refuses_reused_reference = True


class Plugins:
    @topup.hookimpl
    def register_suppliers(self, register) -> None:
        for cls in (First, Second, Strict):
            register(cls)


class Desk(msgspec.Struct):
    dispatcher: Dispatcher
    lifecycle: Lifecycle
    store: OrderStore
    ledger: Ledger
    clock: FakeClock
    script: Script

    async def order(self, carrier: str = "中国移动") -> str:
        product = {"中国移动": "YD10", "中国联通": "LT10"}[carrier]
        order_no = numbers.next()
        new = NewOrder(
            order_no, new_order_id(order_no), "app", f"c-{order_no}", "n", "co",
            carrier, "13800138000", product, 1000, 995,
        )  # fmt: skip
        _order, created = await self.lifecycle.accept(new)
        assert created
        return new.order_no

    async def round(self, advance: float = 0.0) -> int:
        """Move the clock on, then one claim with every step it took carried through."""
        self.clock.advance(advance)
        return await self.dispatcher.run_once()

    async def get(self, order_no: str) -> OrderRecord:
        found = await self.store.get(order_no)
        assert found is not None
        return found


numbers = OrderNumbers()


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    fake = FakeClock()
    with use_clock(fake):
        yield fake


@pytest.fixture
async def desk(database_url: str, clock: FakeClock) -> AsyncIterator[Desk]:
    db = Database(database_url)
    await ensure_schema(db)
    await AppStore(db).add("app", "co")
    await Ledger(db).credit("app", 1_000_000, "test funds", "test")
    script = Scripted.script = Script()
    runtime = Runtime.build(parse_config(CONFIG), Registry(extra=[Plugins()]))
    lifecycle, store = Lifecycle(db), OrderStore(db)
    yield Desk(
        Dispatcher(lifecycle, store, lambda: runtime), lifecycle, store, Ledger(db), clock, script
    )
    await db.dispose()


async def test_an_unknown_submit_is_queried_never_sent_again(desk: Desk) -> None:
    desk.script.will("first", "submit", SupplierResult.unknown(code="TIMEOUT"))
    order_no = await desk.order()
    assert await desk.round() == 1
    assert (await desk.get(order_no)).state is State.UNKNOWN
    assert await desk.round(0.5) == 0  # not due before its query delay
    assert await desk.round(0.6) == 1
    assert (await desk.get(order_no)).state is State.SUCCEEDED
    assert desk.script.asked("first", "submit") == [f"{order_no}A1"]
    assert desk.script.asked("second", "submit") == []
    assert (await desk.ledger.account("app")).captured == 995


async def test_submits_that_never_answer_are_unknown_after_their_full_call_timeout(
    desk: Desk,
) -> None:
    """Calls begun together share one timer (core/deadlines.py): each still gets its
    whole call_timeout (1 s here), the one that answers is not held up, and the ones cut
    off are queried afterwards, never sent again."""
    hanging = [await desk.order() for _ in range(3)]
    answering = await desk.order()
    desk.script.hang.update(f"{order_no}A1" for order_no in hanging)
    started = time.monotonic()
    assert await desk.round() == 4
    assert time.monotonic() - started >= 1.0
    assert (await desk.get(answering)).state is State.SUCCEEDED
    for order_no in hanging:
        assert (await desk.get(order_no)).state is State.UNKNOWN
        [attempt] = await desk.store.attempts_of(order_no)
        assert (attempt.state, attempt.code) == (State.UNKNOWN, "TIMEOUT")
    assert await desk.round(1.1) == 3  # the first query delay is 1 s
    for order_no in hanging:
        assert (await desk.get(order_no)).state is State.SUCCEEDED
        assert desk.script.asked("first", "submit").count(f"{order_no}A1") == 1
    assert desk.script.asked("second", "submit") == []


async def test_a_definitive_refusal_fails_over_through_the_same_claim(desk: Desk) -> None:
    refused = SupplierResult.failed(code="RECENTLY_RECHARGED", message="近期已充值", failover=True)
    desk.script.will("first", "submit", refused)
    order_no = await desk.order()
    await desk.round()
    assert (await desk.get(order_no)).state is State.RETRYING
    await desk.round()
    assert (await desk.get(order_no)).state is State.SUCCEEDED
    assert desk.script.asked("second", "submit") == [f"{order_no}A2"]


async def test_a_refusal_no_supplier_can_help_fails_with_the_partners_reason(
    desk: Desk,
) -> None:
    said = topup.classify_error(
        "first",
        {"NUMBER_BLOCKED": (topup.ErrorClass.NO_FAILOVER, topup.FailReason.NUMBER_NOT_SUPPORTED)},
        "NUMBER_BLOCKED",
        "This number is on the carrier's blacklist",
    )
    desk.script.will("first", "submit", said)
    order_no = await desk.order()
    await desk.round()
    order = await desk.get(order_no)
    assert (order.state, order.fail_code) == (State.FAILED, "NUMBER_BLOCKED")
    assert order.fail_reason == "号码不支持充值"
    [attempt] = await desk.store.attempts_of(order_no)  # the supplier's words, for operators
    assert attempt.message == "This number is on the carrier's blacklist"
    assert desk.script.asked("second", "submit") == []
    assert (await desk.ledger.account("app")).held == 0


async def test_a_failure_without_a_reason_tells_the_partner_the_default(desk: Desk) -> None:
    desk.script.will("first", "submit", SupplierResult.pending())
    desk.script.will("first", "query", SupplierResult.failed(code="9", message="callback"))
    order_no = await desk.order()
    await desk.round()
    await desk.round(1)
    order = await desk.get(order_no)
    assert (order.state, order.fail_code, order.fail_reason) == (
        State.FAILED,
        "9",
        "充值失败，款项已退回",
    )


async def test_a_failover_a_query_reports_is_read_as_unknown(
    desk: Desk, caplog: pytest.LogCaptureFixture
) -> None:
    """A query that never left comes back from topup.exchange as not_sent (failover).
    It says nothing about the top-up: the order is neither failed nor moved on."""
    desk.script.will("first", "submit", SupplierResult.pending())
    desk.script.will("first", "query", SupplierResult.not_sent(message="first unreachable"))
    order_no = await desk.order()
    await desk.round()
    with caplog.at_level(logging.WARNING, logger="topup.alert"):
        await desk.round(1)
    order = await desk.get(order_no)
    assert order.state is State.PENDING, order
    assert (await desk.ledger.account("app")).held == 995
    assert any("only a submit" in r.getMessage() for r in caplog.records)
    await desk.round(2)  # the next query says it succeeded
    assert (await desk.get(order_no)).state is State.SUCCEEDED
    assert desk.script.asked("second", "submit") == []


async def test_only_refusals_about_the_supplier_open_its_circuit(desk: Desk) -> None:
    """Definitive refusals are about their orders: however many, the supplier is
    working. Transient ones (no balance, maintenance, unreachable) open its circuit."""
    about_the_order = SupplierResult.failed(code="RECENTLY_RECHARGED", failover=True)
    desk.script.will("first", "submit", about_the_order, about_the_order, about_the_order)
    for _ in range(3):
        await desk.order()
    await desk.round()
    assert desk.dispatcher.breaker.available("first")
    about_the_supplier = SupplierResult.not_sent(message="first unreachable")
    desk.script.will("first", "submit", about_the_supplier, about_the_supplier)
    for _ in range(2):
        await desk.order()
    await desk.round()
    assert not desk.dispatcher.breaker.available("first")
    later = await desk.order()
    await desk.round()
    assert (await desk.get(later)).state is State.SUCCEEDED
    assert desk.script.asked("second", "submit")[-1] == f"{later}A1"


async def test_a_callback_settling_an_order_mid_query_is_routine(
    desk: Desk, caplog: pytest.LogCaptureFixture
) -> None:
    desk.script.will("first", "submit", SupplierResult.pending())
    desk.script.will("first", "query", SupplierResult.pending())
    order_no = await desk.order()
    await desk.round()

    async def callback_arrives(order: UpstreamOrder) -> None:
        body = msgspec.json.encode({"reference": order.reference, "ok": True})
        await desk.dispatcher.handle_callback("first", CallbackRequest(body, {}, {}))

    desk.script.during_query = callback_arrives
    with caplog.at_level(logging.WARNING):
        assert await desk.round(1) == 1
    assert (await desk.get(order_no)).state is State.SUCCEEDED
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert await desk.round(10) == 0  # nothing left to do


async def test_an_outcome_still_open_after_max_queries_goes_to_review(desk: Desk) -> None:
    desk.script.will("first", "submit", SupplierResult.unknown(code="TIMEOUT"))
    desk.script.will("first", "query", *[SupplierResult.unknown(code="TIMEOUT")] * 3)
    order_no = await desk.order()
    await desk.round()
    for delay in (1, 2, 2):
        assert await desk.round(delay) == 1
    assert (await desk.get(order_no)).state is State.REVIEW
    assert await desk.round(60) == 0
    assert len(desk.script.asked("first", "submit")) == 1


async def test_a_never_received_attempt_is_resent_once_where_the_supplier_allows(
    desk: Desk,
) -> None:
    lost = SupplierResult.unknown(code="TIMEOUT")
    desk.script.will("strict", "submit", lost)
    desk.script.will("strict", "query", *[SupplierResult.never_received(code="NOT_FOUND")] * 3)
    order_no = await desk.order("中国联通")
    await desk.round()
    await desk.round(1)  # 1 s after the attempt: too soon to tell a lost request
    assert desk.script.asked("strict", "submit") == [f"{order_no}A1"]
    await desk.round(2)  # 3 s: past call_timeout (1) + resend_margin (1)
    assert desk.script.asked("strict", "submit") == [f"{order_no}A1"] * 2
    assert (await desk.get(order_no)).state is State.SUCCEEDED
    [attempt] = await desk.store.attempts_of(order_no)
    assert attempt.resent


async def test_a_supplier_that_may_take_a_reference_twice_gets_no_resend(desk: Desk) -> None:
    desk.script.will("first", "submit", SupplierResult.unknown(code="TIMEOUT"))
    desk.script.will("first", "query", *[SupplierResult.never_received(code="NOT_FOUND")] * 3)
    order_no = await desk.order()
    await desk.round()
    for delay in (1, 2, 2):
        await desk.round(delay)
    assert (await desk.get(order_no)).state is State.REVIEW
    assert desk.script.asked("first", "submit") == [f"{order_no}A1"]


async def test_a_resend_lost_again_is_not_sent_a_third_time(desk: Desk) -> None:
    lost = SupplierResult.unknown(code="TIMEOUT")
    desk.script.will("strict", "submit", lost, lost)
    desk.script.will("strict", "query", *[SupplierResult.never_received(code="NOT_FOUND")] * 5)
    order_no = await desk.order("中国联通")
    await desk.round()
    for delay in (3, 3, 3, 3):
        await desk.round(delay)
    assert desk.script.asked("strict", "submit") == [f"{order_no}A1"] * 2
    assert (await desk.get(order_no)).state is State.REVIEW
    # The operator reads why: both sends are unanswered and the supplier has neither.
    review = [e.detail for e in await desk.store.events_of(order_no) if e.kind == "review"]
    assert review == [
        "向供应商查询 3 次仍无最终结果，最后一次返回 NOT_FOUND，转人工审核；"
        f"参考号 {order_no}A1 已原样重发一次，供应商仍答查无此单"
    ]
