"""The console's overview, order search and order page. No rule here needs a real
process: the app, with its dispatcher, is served in the test's own process
(tests/inprocess.py).

Orders are placed through the partner API and settled by the sandbox supplier; the
pages are read over HTTP as a signed-in operator's browser would (the browser itself
drives them in the browser tests).
"""

from __future__ import annotations

import html
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import new_partner
from tests.inprocess import InProcessService
from tests.support import Backend, Console, Service, fresh_order_no, sandbox_config

_names = itertools.count(1)
# A partner with this many orders has a second results page.
MANY = 55


@dataclass
class Placed:
    order_no: str
    cstm_order_no: str
    app_id: str
    phone: str
    state: str


@dataclass
class Shop:
    service: Service
    orders: dict[str, Placed]
    many: list[str]  # the MANY orders of the third partner, oldest first
    apps: tuple[str, str, str]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Shop]:
    """A service, and every order the tests of this module look at (placed once, so that
    the overview's counts are known exactly)."""
    service = InProcessService(
        tmp_path_factory.mktemp(f"console-orders-{backend.name}"),
        sandbox_config(),
        backend=backend,
        background=True,
    ).start()
    first, second, third = (new_partner(service) for _ in range(3))
    service.cli(
        "app", "set", first.app_id, "--notify-url", "http://127.0.0.1:9/notify", "--allow-private"
    )
    wanted = {
        "a1": (first, "13800000001", {}),
        "a2": (first, "13800000004", {}),  # the sandbox fails numbers ending in 4
        "a3": (first, "13000000002", {"Supplier": "中国联通", "productId": "LT10"}),
        "b1": (second, "13800000001", {}),
    }
    orders = {}
    for name, (partner, phone, extra) in wanted.items():
        cstm = fresh_order_no(name)
        reply = partner.order(cstm, phone, **extra)
        assert reply["code"] == "0", reply
        state = "failed" if phone.endswith("4") else "succeeded"
        orders[name] = Placed(reply["data"]["orderNo"], cstm, partner.app_id, phone, state)
    many = []
    for _ in range(MANY):
        reply = third.order(fresh_order_no("m"), "13900000009")
        assert reply["code"] == "0", reply
        many.append(reply["data"]["orderNo"])
    for order in orders.values():
        service.wait_for_state(order.order_no, order.state)
    for order_no in many:
        service.wait_for_state(order_no, "succeeded")
    yield Shop(service, orders, many, (first.app_id, second.app_id, third.app_id))
    for partner in (first, second, third):
        partner.close()
    service.stop()
    service.drop_database()


@pytest.fixture
def console(shop: Shop) -> Iterator[Console]:
    """A viewer's console: reading every page needs no more."""
    name = f"viewer-{next(_names)}"
    shop.service.add_operator(name, "viewer")
    console = Console(shop.service)
    assert console.sign_in(name).status_code == 303
    yield console
    console.close()


def listed(page: str) -> list[str]:
    """The order numbers in a results table, top to bottom."""
    table = page.split('id="order-results"', 1)[1].split("</table>", 1)[0]
    return re.findall(r'href="/console/orders/(TP\d+)"', table)


def stat(page: str, label: str) -> str:
    match = re.search(re.escape(label) + r'</div><div class="value">(?:<a [^>]*>)?([\d,]+)', page)
    assert match, f"no {label} on the page"
    return match.group(1)


def test_the_overview_counts_the_orders_and_draws_the_sparkline(shop: Shop, console) -> None:
    page = console.get("/console")
    assert page.status_code == 200
    total = len(shop.orders) + MANY
    assert stat(page.text, "近 1 小时订单") == stat(page.text, "近 24 小时订单") == str(total)
    assert stat(page.text, "待人工审核") == "0"
    assert 'data-refresh="/console/overview/live"' in page.text
    spark = page.text.split('<svg class="spark"', 1)[1].split("</svg>", 1)[0]
    assert spark.count("<circle") == 60 and "<polyline" in spark
    status = page.text.split('id="supplier-status"', 1)[1].split("<table>", 1)[0]
    assert ">sandbox</a>" in status and "正常" in status and "熔断" not in status
    sandbox_rows = re.findall(
        r'<td><a href="/console/orders\?plugin=sandbox">sandbox</a></td>\s*<td>([^<]+)</td>'
        r'\s*<td class="num">([\d,]+)</td>\s*<td class="num">([\d,]+)</td>'
        r'\s*<td class="num">([\d,]+)</td>',
        page.text,
    )
    # (window, attempts, succeeded, failed): one order failed, the rest succeeded.
    assert sandbox_rows == [
        ("近 1 小时", str(total), str(total - 1), "1"),
        ("近 24 小时", str(total), str(total - 1), "1"),
    ]


def test_the_live_part_is_a_fragment_with_the_same_numbers(shop: Shop, console) -> None:
    live = console.get("/console/overview/live")
    assert live.status_code == 200
    assert "<html" not in live.text and "<svg" in live.text
    assert stat(live.text, "近 1 小时订单") == str(len(shop.orders) + MANY)


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ({"phone_no": "13800000001"}, ["b1", "a1"]),
        ({"state": "failed"}, ["a2"]),
        ({"carrier": "中国联通"}, ["a3"]),
        ({"cstm_order_no": "{a3.cstm_order_no}"}, ["a3"]),
        ({"order_no": "{a2.order_no}"}, ["a2"]),
        ({"app_id": "{b1.app_id}"}, ["b1"]),
        ({"app_id": "{a1.app_id}", "state": "succeeded"}, ["a3", "a1"]),
        ({"plugin": "juhe"}, []),
        ({"since": "2999-01-01T00:00"}, []),
    ],
)
def test_each_filter_of_the_search_form(shop: Shop, console, query, names) -> None:
    values = {k: v.format(**shop.orders) for k, v in query.items()}
    page = console.get("/console/orders", **values)
    assert page.status_code == 200
    assert listed(page.text) == [shop.orders[name].order_no for name in names]
    for value in values.values():
        assert f'value="{html.escape(value)}"' in page.text or "selected" in page.text
    if not names:
        assert "没有符合条件的订单" in page.text
    assert 'id="next-page"' not in page.text


def test_results_page_newest_first_and_the_next_page_continues(shop: Shop, console) -> None:
    third = shop.apps[2]
    first = console.get("/console/orders", app_id=third)
    assert listed(first.text) == shop.many[::-1][:50]
    link = re.search(r'<a href="([^"]+)" id="next-page">', first.text)
    assert link, "the first page links to the next"
    second = console.get(html.unescape(link.group(1)))
    assert listed(second.text) == shop.many[::-1][50:]
    assert 'id="next-page"' not in second.text and "← 第一页" in second.text
    everyone = console.get("/console/orders", plugin="sandbox")
    assert len(listed(everyone.text)) == 50 and 'id="next-page"' in everyone.text


def test_a_time_the_form_cannot_read_is_said_plainly(console) -> None:
    page = console.get("/console/orders", since="yesterday")
    assert page.status_code == 200
    assert "开始时间不是有效的时间" in page.text and 'id="order-results"' not in page.text


def test_a_failed_orders_page_tells_its_story(shop: Shop, console) -> None:
    order = shop.orders["a2"]
    page = console.get(f"/console/orders/{order.order_no}")
    assert page.status_code == 200
    timeline = page.text.split('id="timeline"', 1)[1].split("</ul>", 1)[0]
    labels = re.findall(r"<strong>([^<]+)</strong>", timeline)
    assert labels == [
        "合作方下单",
        "冻结货款",
        "提交给供应商",
        "上游结果：失败",
        "订单失败",
        "解冻退回",
        "生成合作方通知",
    ]
    assert f"合作方 {order.app_id}" in timeline and "供应商 sandbox" in timeline
    attempts = page.text.split('id="attempts"', 1)[1].split("</table>", 1)[0]
    assert f"{order.order_no}A1" in attempts and "SANDBOX_DECLINED" in attempts
    ledger = page.text.split('id="ledger"', 1)[1].split("</table>", 1)[0]
    assert ledger.count("<tr><td>") == 2 and "冻结" in ledger and "解冻退回" in ledger
    notes = page.text.split('id="notifications"', 1)[1].split("</table>", 1)[0]
    assert "http://127.0.0.1:9/notify" in notes
    assert order.cstm_order_no in page.text and order.phone in page.text
    assert 'id="in-review"' not in page.text


def test_a_partner_without_a_notify_url_gets_no_notification(shop: Shop, console) -> None:
    page = console.get(f"/console/orders/{shop.orders['b1'].order_no}")
    timeline = page.text.split('id="timeline"', 1)[1].split("</ul>", 1)[0]
    assert re.findall(r"<strong>([^<]+)</strong>", timeline)[-2:] == ["订单成功", "扣款"]
    assert "合作方没有设置通知地址" in page.text


def test_an_unknown_order_is_a_page_that_says_so(console) -> None:
    page = console.get("/console/orders/TP2026010100000000000010000")
    assert page.status_code == 404 and "订单不存在" in page.text


def test_the_pages_need_a_signed_in_operator(shop: Shop) -> None:
    stranger = Console(shop.service)
    try:
        for path in ("/console/orders", f"/console/orders/{shop.orders['a1'].order_no}"):
            assert stranger.get(path).status_code == 303
        assert stranger.get("/console/overview/live").status_code == 303
    finally:
        stranger.close()


# The sandbox holds every order "processing" for an hour; the dispatcher gives up after
# one query: orders land in manual review.
NEVER_SETTLES = sandbox_config(extra="settle_seconds = 3600").replace(
    "[dispatch]\n", "[dispatch]\nmax_queries = 1\n"
)


def test_an_order_in_review_links_to_the_review_queue_for_those_who_may_act(
    in_process_services,
) -> None:
    service = in_process_services(NEVER_SETTLES, background=True)
    partner = new_partner(service)
    reply = partner.order(fresh_order_no("r"))
    order_no = reply["data"]["orderNo"]
    service.wait_for_state(order_no, "review")
    service.add_operator("duty", "operator")
    service.add_operator("reader", "viewer")
    for name, sees_link in (("duty", True), ("reader", False)):
        console = Console(service)
        try:
            assert console.sign_in(name).status_code == 303
            page = console.get(f"/console/orders/{order_no}")
            assert 'id="in-review"' in page.text
            assert (f'href="/console/review#review-{order_no}"' in page.text) is sees_link
            overview = console.get("/console")
            assert stat(overview.text, "待人工审核") == "1"
            found = console.get("/console/orders", state="review")
            assert listed(found.text) == [order_no]
        finally:
            console.close()
    partner.close()
