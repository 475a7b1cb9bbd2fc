"""The console's order search and order page data, against a real database (both backends)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import pytest

from core.apps import AppStore
from core.clock import BEIJING
from core.db import Database
from core.ids import taken_at
from core.ledger import Ledger
from core.migrate import ensure_schema
from core.search import OrderFilter, OrderSearch, order_detail, plan, search_orders
from tests.order_rows import Shop, number_at, order_row, write_rows

HOUR = 3_600_000


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    await ensure_schema(db)
    apps = AppStore(db)
    for app_id in ("shop1", "shop2"):
        await apps.add(app_id, f"{app_id}公司")
        await Ledger(db).credit(app_id, 1_000_000, "test funds", "test")
    await apps.set_notify_url("shop1", "https://shop1.example/notify", actor="test")
    yield db
    await db.dispose()


# (app, cstmOrderNo, phone, carrier, plugins, outcome), placed in this order.
PLACED = [
    ("shop1", "A", "13800000001", "中国移动", ("sandbox",), "succeeded"),
    ("shop1", "B", "13000000002", "中国联通", ("juhe", "sandbox"), "succeeded"),
    ("shop2", "C", "13800000001", "中国电信", ("juhe",), "failed"),
    ("shop2", "D", "13900000003", "中国移动", ("sandbox",), "review"),
    ("shop1", "E", "13900000003", "中国移动", ("juhe",), "pending"),
]


@pytest.fixture
async def placed(db: Database) -> list[dict]:
    """The PLACED orders, through the real order store; newest last."""
    shop, made = Shop(db), []
    for app_id, cstm, phone, carrier, plugins, outcome in PLACED:
        order_no = await shop.order(app_id, cstm, phone, carrier, plugins, outcome)
        made.append(
            {
                "order_no": order_no,
                "app_id": app_id,
                "cstm_order_no": cstm,
                "phone_no": phone,
                "carrier": carrier,
                "plugins": list(plugins),
                "state": outcome,
            }
        )
    return made


def expected(placed: list[dict], **wanted: str) -> list[str]:
    """The order numbers a search for ``wanted`` must give, newest first."""
    return [
        order["order_no"]
        for order in reversed(placed)
        if all(
            value in order["plugins"] if name == "plugin" else order[name] == value
            for name, value in wanted.items()
        )
    ]


FILTERS = [
    {},
    {"cstm_order_no": "C"},
    {"phone_no": "13800000001"},
    {"phone_no": "13900000003"},
    {"app_id": "shop1"},
    {"app_id": "shop2"},
    {"carrier": "中国移动"},
    {"plugin": "juhe"},
    {"plugin": "sandbox"},
    {"state": "review"},
    {"state": "pending"},
    {"state": "succeeded"},
    {"app_id": "shop1", "state": "succeeded"},
    {"app_id": "shop1", "carrier": "中国移动"},
    {"phone_no": "13900000003", "state": "review"},
    {"carrier": "中国联通", "plugin": "juhe"},
    {"state": "failed", "plugin": "juhe", "carrier": "中国电信"},
    {"app_id": "shop2", "plugin": "sandbox", "state": "review"},
    {"app_id": "shop1", "state": "failed"},
    {"phone_no": "13700000000"},
    {"plugin": "reloadly"},
]


async def test_each_filter_finds_exactly_its_orders_newest_first(
    db: Database, placed: list[dict]
) -> None:
    search = OrderSearch(db)
    for wanted in FILTERS:
        page = await search.search(OrderFilter(**wanted))
        found = [order.order_no for order in page.orders]
        assert found == expected(placed, **wanted), wanted
        assert page.next_after is None and not page.limited, wanted


async def test_an_order_number_finds_its_order_and_results_carry_what_the_table_shows(
    db: Database, placed: list[dict]
) -> None:
    second = placed[1]
    page = await OrderSearch(db).search(OrderFilter(order_no=second["order_no"]))
    [found] = page.orders
    assert page.driver == "order_no"
    assert (found.app_id, found.cstm_order_no, found.phone_no, found.carrier) == (
        "shop1",
        "B",
        "13000000002",
        "中国联通",
    )
    assert (found.state, found.attempts, found.plugins) == ("succeeded", 2, ["juhe", "sandbox"])
    assert found.created_at == taken_at(found.order_no)
    other_app = OrderFilter(order_no=second["order_no"], app_id="shop2")
    assert (await OrderSearch(db).search(other_app)).orders == []


async def test_pages_walk_every_match_once_newest_first(db: Database) -> None:
    start = 1_795_000_000_000
    rows = [
        order_row(number_at(start + i * 1000), start + i * 1000, app_id=("a1", "a2")[i % 2])
        for i in range(260)
    ]
    await write_rows(db, orders=rows)
    for wanted, matching in (
        (OrderFilter(), rows),
        (OrderFilter(app_id="a2"), rows[1::2]),
    ):
        seen, after, pages = [], None, 0
        while True:
            page = await db.read(lambda conn, w=wanted, a=after: search_orders(conn, w, a))
            pages += 1
            seen += [order.order_no for order in page.orders]
            if page.next_after is None:
                break
            assert len(page.orders) == 50 and page.next_after == page.orders[-1].order_no
            after = page.next_after
        assert seen == sorted((row["order_no"] for row in matching), reverse=True)
        assert pages == -(-len(matching) // 50)


def beijing(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=BEIJING).timestamp() * 1000)


async def test_a_time_range_is_beijing_time_from_inclusive_to_exclusive(db: Database) -> None:
    first = beijing("2026-11-20 00:00:00")
    times = [first + i * HOUR for i in range(72)]  # three days, one order an hour
    await write_rows(db, orders=[order_row(number_at(at), at) for at in times])
    since, until = beijing("2026-11-21 00:00:00"), beijing("2026-11-22 00:00:00")
    page = await OrderSearch(db).search(OrderFilter(since=since, until=until))
    assert [o.created_at for o in page.orders] == sorted(times[24:48], reverse=True)
    later = await OrderSearch(db).search(OrderFilter(since=beijing("2026-11-22 22:00:00")))
    assert [o.created_at for o in later.orders] == [times[71], times[70]]


async def test_a_rare_match_stops_at_the_scan_limit_and_says_how_far_it_searched(
    db: Database,
) -> None:
    start = 1_795_000_000_000
    rare = {20, 150, 151, 290}
    rows = [
        order_row(
            number_at(start + i * 1000),
            start + i * 1000,
            carrier="中国电信" if i in rare else "中国移动",
        )
        for i in range(300)
    ]
    await write_rows(db, orders=rows)
    wanted = OrderFilter(carrier="中国电信")

    def search(after):
        return db.read(lambda conn: search_orders(conn, wanted, after, scan_limit=100))

    first = await search(None)
    # The newest 100 orders are i = 299..200: one match, and the page says it stopped.
    assert [o.order_no for o in first.orders] == [rows[290]["order_no"]]
    assert first.limited and first.next_after == rows[200]["order_no"]
    assert first.searched_back_to == rows[200]["created_at"]
    found, after = [o.order_no for o in first.orders], first.next_after
    while after is not None:
        page = await search(after)
        found += [o.order_no for o in page.orders]
        after = page.next_after
    assert found == [rows[i]["order_no"] for i in sorted(rare, reverse=True)]
    # Without the bound the same search reads on until the page is full.
    whole = await db.read(lambda conn: search_orders(conn, wanted, scan_limit=1000))
    assert len(whole.orders) == 4 and not whole.limited and whole.next_after is None


async def test_an_orders_page_tells_its_whole_story(db: Database) -> None:
    shop = Shop(db)
    order_no = await shop.order(
        "shop1", "story", "13000000002", "中国联通", ("juhe", "sandbox"), "review"
    )
    await shop.lifecycle.resolve(order_no, True, "供应商后台确认成功", "zhangwei")
    detail = await OrderSearch(db).detail(order_no)
    assert detail is not None and detail.order.state == "succeeded"
    assert [(a.seq, a.plugin, a.state, a.refused, a.code) for a in detail.attempts] == [
        (1, "juhe", "failed", True, "NO_BALANCE"),
        (2, "sandbox", "succeeded", False, "MANUAL"),
    ]
    assert [(e.kind, e.amount, e.order_no) for e in detail.ledger] == [
        ("hold", 995, order_no),
        ("capture", 995, order_no),
    ]
    [note] = detail.notifications
    assert (note.url, note.status, note.delivered_at) == (
        "https://shop1.example/notify",
        "waiting",
        None,
    )
    assert [(e.kind, e.actor_kind, e.actor, e.seq) for e in detail.timeline] == [
        ("accepted", "partner", "shop1", None),
        ("hold", "system", "system", None),
        ("attempt_started", "system", "system", 1),
        ("attempt_refused", "supplier", "juhe", 1),
        ("attempt_started", "system", "system", 2),
        ("review", "system", "system", None),
        ("attempt_succeeded", "operator", "zhangwei", 2),
        ("resolved", "operator", "zhangwei", None),
        ("succeeded", "operator", "zhangwei", None),
        ("capture", "system", "system", None),
        ("notify_queued", "system", "system", None),
    ]
    times = [entry.at for entry in detail.timeline]
    assert times == sorted(times) and times[0] == detail.order.created_at
    assert detail.timeline[3].detail == "NO_BALANCE 余额不足"
    assert detail.timeline[7].detail == "succeeded: 供应商后台确认成功"


async def test_a_failed_order_and_its_release(db: Database, placed: list[dict]) -> None:
    failed = placed[2]["order_no"]
    detail = await db.read(lambda conn: order_detail(conn, failed))
    assert [e.kind for e in detail.ledger] == ["hold", "release"]
    assert detail.notifications == []  # shop2 has no notify URL
    kinds = [(e.kind, e.actor_kind, e.actor) for e in detail.timeline]
    assert kinds[-3:] == [
        ("attempt_failed", "supplier", "juhe"),
        ("failed", "supplier", "juhe"),
        ("release", "system", "system"),
    ]
    # The supplier's words on the attempt, what the partner was told on the order.
    assert detail.timeline[-3].detail == "9 充值失败"
    assert detail.timeline[-2].detail == "9 充值失败，款项已退回"


async def test_an_order_still_open_has_no_final_entry(db: Database, placed: list[dict]) -> None:
    pending = await OrderSearch(db).detail(placed[4]["order_no"])
    assert pending.order.state == "pending"
    assert [e.kind for e in pending.timeline] == ["accepted", "hold", "attempt_started"]
    assert [a.state for a in pending.attempts] == ["pending"]


async def test_no_such_order(db: Database) -> None:
    assert await OrderSearch(db).detail("TP2026010100000000000010000") is None


def test_each_search_is_driven_by_the_index_that_narrows_it_most() -> None:
    cases = [
        (OrderFilter(order_no="TP1", phone_no="138"), "order_no"),
        (OrderFilter(cstm_order_no="c", app_id="a"), "cstm_order_no"),
        (OrderFilter(phone_no="138", app_id="a", state="failed"), "phone_no"),
        (OrderFilter(app_id="a", state="failed"), "state"),
        (OrderFilter(app_id="a", state="succeeded"), "app_id"),
        (OrderFilter(state="succeeded", carrier="中国移动"), "state"),
        (OrderFilter(app_id="a", plugin="juhe"), "app_id"),
        (OrderFilter(carrier="中国移动", plugin="juhe", since=1), "time"),
    ]
    for wanted, driver in cases:
        assert plan(wanted).driver == driver, wanted
    # Only a walk with conditions left to check is bounded by the scan limit.
    assert not plan(OrderFilter(app_id="a")).bounded
    assert plan(OrderFilter(app_id="a", carrier="中国移动")).bounded
    assert not plan(OrderFilter(cstm_order_no="c", carrier="中国移动")).bounded
