"""The operations console in a real browser: an operator's clicks and typing, end to end.

Chromium (headless) against a real ``topup serve``; every page visited is saved under
``test-output/<test name>/`` (tests/browser.py). The service runs on SQLite only: what the
pages read and write in SQL is exercised on both backends by the httpx tests of each page,
and a browser per backend would double the slowest tests of the suite for nothing new.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from playwright.sync_api import expect

from tests.support import (
    OPERATOR_PASSWORD,
    PRODUCTS,
    SQLITE,
    Partner,
    ServiceProcess,
    fresh_order_no,
)

# A phone number the scripted supplier never settles: after one unanswered query the
# order goes to manual review (dispatch.max_queries = 1).
NEVER_SETTLES = "13700000009"


def console_config(journal: str) -> str:
    # 中国移动 goes to the scripted supplier; 中国联通 is the carrier whose route the
    # suppliers test switches, from "scripted" to "backup" (the same fake under another name).
    return f"""
enabled = ["scripted", "backup"]

[dispatch]
query_delays = [0.2]
max_queries = 1
call_timeout = 2
lease_seconds = 3
scan_interval = 0.1

[plugin.scripted]
journal = "{journal}"
script = {{ "{NEVER_SETTLES}" = "pending" }}

[plugin.backup]
journal = "{journal}"

[suppliers."中国移动"]
route = ["scripted"]
{PRODUCTS}
[suppliers."中国联通"]
route = ["scripted"]
products = [{{ product_id = "LT10", name = "联通10元", face_value = "10", price = "9.95" }}]
"""


@dataclass
class Desk:
    """The service of this module, its partner, and one account of each role."""

    service: ServiceProcess
    partner: Partner
    admin: str = "admin"
    operator: str = "duty"
    viewer: str = "auditor"

    def place(self, phone: str, carrier: str = "中国移动", product: str = "YD10") -> str:
        """An order placed through the partner API; its orderNo."""
        cstm = fresh_order_no("web")
        reply = self.partner.order(cstm, phone=phone, Supplier=carrier, productId=product)
        assert reply["code"] == "0", reply
        return reply["data"]["orderNo"]

    def in_review(self) -> str:
        """An order the supplier never settles, once it waits in the review queue."""
        order_no = self.place(NEVER_SETTLES)
        self.service.wait_for_state(order_no, "review")
        return order_no

    def state(self, order_no: str) -> str:
        return self.service.sql("SELECT state FROM orders WHERE order_no = ?", order_no)[0][0]


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desk]:
    workdir = tmp_path_factory.mktemp("console-browser")
    service = ServiceProcess(
        workdir,
        console_config(str(workdir / "journal.jsonl")),
        env={"TOPUP_PLUGINS": "tests.fake_suppliers"},
        backend=SQLITE,
    )
    service.start()
    # One interpreter for the partner and the three accounts: each `topup` costs a second.
    roles = [(Desk.admin, "admin"), (Desk.operator, "operator"), (Desk.viewer, "viewer")]
    secret = service.cli_many(
        [
            ["app", "add", "shop", "--company", "彩生活", "--sign-type", "hmac-sha256"],
            ["app", "credit", "shop", "1000", "--reason", "test funds"],
            *(
                ["operator", "add", name, "--role", role, "--password-stdin"]
                for name, role in roles
            ),
        ],
        input=f"{OPERATOR_PASSWORD}\n" * len(roles),
    ).splitlines()[0]
    desk = Desk(service, Partner(service.url, "shop", secret.strip(), "彩生活"))
    try:
        yield desk
    finally:
        desk.partner.close()
        service.stop()


@pytest.fixture
def screen(screen_for, desk: Desk):
    return screen_for(desk.service)


# -- signing in -------------------------------------------------------------------------


def test_an_operator_signs_in_and_a_wrong_password_is_refused(screen, desk: Desk) -> None:
    page = screen.page
    screen.goto("/console?from=bookmark")
    expect(page).to_have_url(re.compile(r"/console/login\?next=/console%3Ffrom%3Dbookmark$"))
    page.get_by_label("用户名").fill(desk.operator)
    page.get_by_label("密码").fill("not the password")
    refused = screen.click(page.get_by_role("button", name="登录"))
    assert refused.status == 401
    expect(page.get_by_role("alert")).to_have_text("用户名或密码错误")

    page.get_by_label("用户名").fill(desk.operator)
    page.get_by_label("密码").fill(OPERATOR_PASSWORD)
    screen.click(page.get_by_role("button", name="登录"))
    expect(page).to_have_url(re.compile(r"/console\?from=bookmark$"))  # back where they were going
    expect(page.locator(".me .who")).to_contain_text(desk.operator)
    # The overview: the service's own background workers, beating.
    workers = page.locator("#workers tbody tr")
    expect(workers.filter(has_text="派单 dispatcher")).to_contain_text("运行中")
    expect(workers.filter(has_text="通知 notifier")).to_contain_text("运行中")

    screen.click(page.get_by_role("button", name="退出"))
    expect(page).to_have_url(re.compile(r"/console/login$"))
    screen.goto("/console")
    expect(page).to_have_url(re.compile(r"/console/login"))  # signed out for good


# -- orders -----------------------------------------------------------------------------


def test_an_operator_finds_an_order_by_phone_number_and_reads_its_timeline(
    screen, desk: Desk
) -> None:
    phone = "13911112222"
    order_no = desk.place(phone)
    desk.service.wait_for_state(order_no, "succeeded")
    page = screen.sign_in(desk.operator)
    screen.menu("订单")
    page.get_by_label("手机号").fill(phone)
    screen.click(page.get_by_role("button", name="搜索"))
    results = page.locator("#order-results tbody tr")
    expect(results).to_have_count(1)
    expect(results).to_contain_text(order_no)
    expect(results.locator(".badge")).to_have_text("成功")

    screen.click(results.get_by_role("link", name=order_no))
    expect(page.locator("h1")).to_contain_text(order_no)
    timeline = page.locator("#timeline li")
    # From the partner's order to the money taken, each step with who caused it.
    for step in ("合作方下单", "冻结货款", "提交给供应商", "上游结果：成功", "订单成功", "扣款"):
        expect(timeline.filter(has_text=step).first).to_be_visible()
    expect(timeline.filter(has_text="合作方下单")).to_contain_text("合作方")
    expect(timeline.filter(has_text="提交给供应商")).to_contain_text("→ scripted")
    attempt = page.locator("#attempts tbody tr")
    expect(attempt).to_have_count(1)
    expect(attempt).to_contain_text("scripted")
    expect(page.locator("#ledger")).to_contain_text("扣款")


def test_an_order_whose_carrier_contradicts_its_number_says_so(screen, desk: Desk) -> None:
    # 138 is 中国移动's segment; the partner names 中国联通 (a ported number, or a mistake).
    order_no = desk.place("13811113333", carrier="中国联通", product="LT10")
    page = screen.sign_in(desk.viewer)
    screen.goto(f"/console/orders/{order_no}")
    mismatch = page.locator("#segment-carrier")
    expect(mismatch).to_contain_text("与号段不符")
    expect(mismatch).to_contain_text("号段属于中国移动，合作方指定中国联通")


# -- the review queue -------------------------------------------------------------------


def test_an_operator_resolves_an_order_in_review(screen, desk: Desk) -> None:
    order_no = desk.in_review()
    page = screen.sign_in(desk.operator)
    screen.menu("人工审核")
    row = page.locator(f"#review-{order_no}")
    expect(row).to_contain_text(NEVER_SETTLES)
    row.locator("select[name=decision]").select_option(label="确认失败")
    row.get_by_placeholder("原因（必填）").fill("供应商对账单无此单")
    screen.click(row.get_by_role("button", name="提交"))
    expect(page.locator(".flash.ok")).to_have_text(f"订单 {order_no} 已处理")
    expect(page.locator(f"#review-{order_no}")).to_have_count(0)
    assert desk.state(order_no) == "failed"

    screen.goto(f"/console/orders/{order_no}")
    expect(page.locator("h1 .badge")).to_have_text("失败")
    decided = page.locator("#timeline li").filter(has_text="人工认定结果")
    expect(decided).to_contain_text(f"操作员 {desk.operator}")

    screen.menu("审计日志")
    page.get_by_label("对象").fill(order_no)
    screen.click(page.get_by_role("button", name="筛选"))
    entries = page.locator("tbody tr")
    expect(entries).to_have_count(1)
    expect(entries.locator("td").nth(1)).to_have_text(desk.operator)
    expect(entries.locator("td").nth(4)).to_have_text("供应商对账单无此单")
    expect(entries.locator("td").nth(5)).to_have_text("outcome=failed")


# -- suppliers and routes ---------------------------------------------------------------


def test_an_admin_switches_a_route_and_the_next_order_goes_to_the_new_supplier(
    screen, desk: Desk
) -> None:
    page = screen.sign_in(desk.admin)
    screen.menu("供应商与路由")
    unicom = page.locator("section.carrier[data-carrier='中国联通']")
    expect(unicom.locator(".effective-route")).to_have_text("scripted")
    unicom.get_by_label("使用 scripted").uncheck()
    unicom.get_by_label("使用 backup").check()
    unicom.get_by_label("原因（必填）").fill("scripted 大量失败，切到 backup")
    screen.click(unicom.get_by_role("button", name="切换路由"))
    assert screen.dialogs == ["确定切换 中国联通 的路由？所有实例将在 1 秒内生效。"]
    expect(page.locator(".flash.ok")).to_contain_text("中国联通 的路由已切换")
    unicom = page.locator("section.carrier[data-carrier='中国联通']")
    expect(unicom.locator(".effective-route")).to_have_text("backup")
    expect(unicom).to_contain_text("scripted 大量失败，切到 backup")
    # The instance applies the change when it sees the new configuration generation.
    reloaded = "configuration reloaded (generation"
    assert reloaded in desk.service.wait_for_log(reloaded), "the instance never reloaded"

    order_no = desk.place("13012345678", carrier="中国联通", product="LT10")
    desk.service.wait_for_state(order_no, "succeeded")
    screen.goto(f"/console/orders/{order_no}")
    attempts = page.locator("#attempts tbody tr")
    expect(attempts).to_have_count(1)
    expect(attempts.locator("td").nth(1)).to_have_text("backup")


# -- forms and roles --------------------------------------------------------------------


def test_a_form_without_its_csrf_token_is_refused(screen, desk: Desk) -> None:
    order_no = desk.in_review()
    page = screen.sign_in(desk.operator)
    screen.goto("/console/review")
    row = page.locator(f"#review-{order_no}")
    row.locator("select[name=decision]").select_option(label="确认成功")
    row.get_by_placeholder("原因（必填）").fill("供应商说成功了")
    # A forged form: what another site could make the browser send, without the token.
    row.locator("input[name=csrf_token]").evaluate("input => input.remove()")
    refused = screen.click(row.get_by_role("button", name="提交"))
    assert refused.status == 403
    expect(page.locator("h1")).to_have_text("无权操作")
    expect(page.get_by_role("alert")).to_contain_text("CSRF 校验失败")
    assert desk.state(order_no) == "review"  # nothing happened
    screen.goto("/console/review")
    expect(page.locator(f"#review-{order_no}")).to_be_visible()  # still signed in, still there


def test_a_viewer_cannot_resolve_an_order(screen, desk: Desk) -> None:
    order_no = desk.in_review()
    page = screen.sign_in(desk.viewer)
    screen.goto("/console/review")
    row = page.locator(f"#review-{order_no}")
    expect(row).to_contain_text("只读账号不能处理")
    expect(row.locator("form")).to_have_count(0)
    # The form an operator sees, posted anyway (with the viewer's own valid CSRF token).
    forge = """order_no => {
            const form = document.createElement("form");
            form.method = "post";
            form.action = "/console/review/" + order_no;
            const fields = {csrf_token: document.body.dataset.csrf, decision: "succeeded",
                            reason: "viewer tries"};
            for (const [name, value] of Object.entries(fields)) {
                const input = document.createElement("input");
                Object.assign(input, {type: "hidden", name, value});
                form.append(input);
            }
            document.body.append(form);
            form.submit();
        }"""
    refused = screen.navigate(lambda: page.evaluate(forge, order_no))
    assert refused.status == 403
    expect(page.get_by_role("alert")).to_contain_text("需要操作员权限")
    assert desk.state(order_no) == "review"
    assert desk.service.sql("SELECT count(*) FROM audit_log WHERE target = ?", order_no) == [(0,)]
