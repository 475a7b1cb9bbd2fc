"""The console's pages that act: the review queue, partners, operators, the audit log.

Over HTTP, as a signed-in operator's browser would post the forms (the browser itself
drives a few of these in test_console_browser.py). No rule here needs a real process: the
app, with its dispatcher, is served in the test's own process (tests/inprocess.py).
"""

from __future__ import annotations

import html
import itertools
import re
import time
from collections.abc import Iterator

import pytest

from tests.conftest import new_partner
from tests.inprocess import InProcessService
from tests.support import (
    Backend,
    Console,
    Partner,
    Service,
    fresh_order_no,
    sandbox_config,
)

_names = itertools.count(1)

# The sandbox holds every order "processing" for an hour and the dispatcher gives up
# after one query: each order lands in manual review within a second or so.
NEVER_SETTLES = sandbox_config(extra="settle_seconds = 3600").replace(
    "[dispatch]\n", "[dispatch]\nmax_queries = 1\n"
)


@pytest.fixture(scope="module")
def stuck(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Service]:
    workdir = tmp_path_factory.mktemp(f"console-{backend.name}")
    app = InProcessService(workdir, NEVER_SETTLES, backend=backend, background=True).start()
    yield app
    app.stop()
    app.drop_database()


@pytest.fixture
def signed_in(stuck: Service):
    """A console signed in with a new account of the given role."""
    consoles: list[Console] = []

    def sign_in(role: str) -> tuple[Console, str]:
        name = f"{role}-{next(_names)}"
        stuck.add_operator(name, role)
        console = Console(stuck)
        assert console.sign_in(name).status_code == 303
        consoles.append(console)
        return console, name

    yield sign_in
    for console in consoles:
        console.close()


@pytest.fixture(scope="module")
def partner(stuck: Service) -> Iterator[Partner]:
    client = new_partner(stuck)
    yield client
    client.close()


def _order_in_review(stuck: Service, partner: Partner) -> tuple[str, str]:
    cstm = fresh_order_no()
    reply = partner.order(cstm)
    assert reply["code"] == "0", reply
    order_no = reply["data"]["orderNo"]
    stuck.wait_for_state(order_no, "review")
    return cstm, order_no


def test_an_operator_resolves_an_order_in_review(stuck, partner, signed_in) -> None:
    cstm, order_no = _order_in_review(stuck, partner)
    console, name = signed_in("operator")
    queue = console.get("/console/review")
    assert order_no in queue.text
    decided = console.post(
        f"/console/review/{order_no}",
        csrf_from="/console/review",
        decision="succeeded",
        reason="供应商后台确认已到账",
    )
    assert decided.status_code == 303
    assert decided.headers["location"] == f"/console/review?done={order_no}"
    assert partner.status(cstm)["data"]["status"] == "2"
    shown = stuck.cli("orders", "show", order_no).stdout
    assert f"resolved by {name}: succeeded: 供应商后台确认已到账" in shown
    assert stuck.sql(
        "SELECT actor, reason FROM audit_log WHERE action = 'order.resolve' AND target = ?",
        order_no,
    ) == [(name, "供应商后台确认已到账")]
    assert order_no not in console.get("/console/review").text


def test_a_decision_needs_a_reason_and_a_live_order(stuck, partner, signed_in) -> None:
    _cstm, order_no = _order_in_review(stuck, partner)
    console, _name = signed_in("operator")
    no_reason = console.post(f"/console/review/{order_no}", decision="failed", reason=" ")
    assert no_reason.status_code == 400 and "请填写处理原因" in no_reason.text
    requeried = console.post(f"/console/review/{order_no}", decision="requery", reason="再查一次")
    assert requeried.status_code == 303
    again = console.post(f"/console/review/{order_no}", decision="requery", reason="again")
    assert again.status_code in (303, 400)  # it may be back in review already, or not yet
    assert stuck.sql(
        "SELECT kind FROM order_events WHERE order_no = ? AND kind = 'requeried'", order_no
    )[0] == ("requeried",)


def test_a_viewer_sees_the_queue_but_cannot_decide(stuck, partner, signed_in) -> None:
    cstm, order_no = _order_in_review(stuck, partner)
    console, _name = signed_in("viewer")
    queue = console.get("/console/review")
    assert order_no in queue.text and "只读账号不能处理" in queue.text
    refused = console.post(f"/console/review/{order_no}", decision="succeeded", reason="x")
    assert refused.status_code == 403 and "需要操作员权限" in refused.text
    assert stuck.sql("SELECT state FROM orders WHERE order_no = ?", order_no) == [("review",)]
    assert partner.status(cstm)["data"]["status"] == "1"


def test_an_admin_credits_a_partner_and_the_ledger_shows_the_running_balance(
    stuck, signed_in
) -> None:
    client = new_partner(stuck, funds="100")
    console, name = signed_in("admin")
    page = f"/console/partners/{client.app_id}"
    credited = console.post(f"{page}/credit", csrf_from=page, amount="250.50", reason="银行流水 B1")
    assert credited.status_code == 303
    shown = console.http.get(credited.headers["location"]).text
    assert "已入账" in shown and "350.50" in shown and "银行流水 B1" in shown
    # Newest first: 350.50 after the credit, 100.00 after the first one.
    assert shown.index("350.50") < shown.index("100.00")
    credits = stuck.sql(
        "SELECT actor, reason FROM audit_log WHERE action = 'app.credit' AND target = ?"
        " ORDER BY id",
        client.app_id,
    )
    assert credits[-1] == (name, "银行流水 B1")  # after the CLI's "test funds"
    refused = console.post(f"{page}/credit", csrf_from=page, amount="-5", reason="x")
    assert refused.status_code == 400 and "必须大于 0" in refused.text
    client.close()


def test_an_operator_cannot_add_credit(stuck, signed_in) -> None:
    client = new_partner(stuck, funds="10")
    console, _name = signed_in("operator")
    page = f"/console/partners/{client.app_id}"
    assert "入账" not in console.get(page).text.split("账户流水")[0].split("日对账单")[1]
    refused = console.post(f"{page}/credit", csrf_from=page, amount="1000", reason="x")
    assert refused.status_code == 403
    assert stuck.sql(
        "SELECT count(*) FROM ledger WHERE app_id = ? AND kind = 'credit'", client.app_id
    ) == [(1,)]
    client.close()


def test_rotating_a_secret_shows_it_once_and_the_old_one_keeps_signing(stuck, signed_in) -> None:
    client = new_partner(stuck)
    old_token = client.token()
    console, _name = signed_in("admin")
    page = f"/console/partners/{client.app_id}"
    rotated = console.post(f"{page}/rotate", csrf_from=page, grace_seconds="600", reason="泄露")
    assert rotated.status_code == 200
    assert rotated.headers["cache-control"] == "no-store"
    new_secret = rotated.text.split('id="new-secret"')[1].split(">")[1].split("<")[0]
    assert len(new_secret) >= 32
    assert new_secret not in console.get(page).text
    assert client.order(fresh_order_no(), access_token=old_token)["code"] == "0"
    fresh = Partner(stuck.url, client.app_id, new_secret, client.company, http=stuck.http_client())
    assert fresh.order(fresh_order_no())["code"] == "0"
    fresh.close()
    client.close()


def test_a_notify_url_on_a_private_address_needs_the_box_ticked(stuck, signed_in) -> None:
    client = new_partner(stuck)
    console, _name = signed_in("admin")
    page = f"/console/partners/{client.app_id}"
    refused = console.post(
        f"{page}/notify", csrf_from=page, notify_url="http://127.0.0.1:9/n", reason="联调"
    )
    assert refused.status_code == 400 and "通知地址不可用" in refused.text
    allowed = console.post(
        f"{page}/notify",
        csrf_from=page,
        notify_url="http://127.0.0.1:9/n",
        allow_private="1",
        reason="联调",
    )
    assert allowed.status_code == 303
    assert "http://127.0.0.1:9/n" in console.get(page).text
    client.close()


def test_a_daily_statement_downloads_as_csv(stuck, signed_in) -> None:
    client = new_partner(stuck)
    reply = client.order(fresh_order_no())
    console, _name = signed_in("viewer")
    from datetime import datetime, timedelta, timezone

    today = datetime.now(timezone(timedelta(hours=8))).date().isoformat()
    csv = console.get(f"/console/partners/{client.app_id}/statement", day=today)
    assert csv.status_code == 200
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.content.startswith("\ufeff".encode())
    assert reply["data"]["orderNo"] in csv.text
    bad = console.get(f"/console/partners/{client.app_id}/statement", day="yesterday")
    assert bad.status_code == 400
    client.close()


def test_operators_are_managed_by_admins_only(stuck, signed_in) -> None:
    admin, admin_name = signed_in("admin")
    added = admin.post(
        "/console/operators", name="新同事", role="operator", password="a long password 1"
    )
    assert added.status_code == 303
    newcomer = Console(stuck)
    assert newcomer.sign_in("新同事", "a long password 1").status_code == 303
    assert newcomer.get("/console/operators").status_code == 403
    disabled = admin.post(
        "/console/operators/新同事", csrf_from="/console/operators", status="disable", reason="x"
    )
    assert disabled.status_code == 303
    assert newcomer.get("/console").status_code == 303  # signed out at once
    newcomer.close()
    log = admin.get("/console/audit", target="新同事").text
    assert "新增操作员" in log and "修改操作员" in log and admin_name in log


def test_the_audit_log_pages_back(stuck, signed_in) -> None:
    console, _name = signed_in("viewer")
    client = new_partner(stuck, funds=None)
    stuck.cli_many(
        [["app", "credit", client.app_id, "1", "--reason", f"第{n}笔"] for n in range(55)]
    )
    first = console.get("/console/audit", target=client.app_id, action="app.credit")
    assert "第54笔" in first.text and "第5笔" in first.text and "第4笔" not in first.text
    link = re.search(r'href="(\?before=[^"]+)"', first.text)
    assert link, "no link to older entries"
    older = console.get("/console/audit" + html.unescape(link.group(1)))
    assert "第4笔" in older.text and "第0笔" in older.text and "第5笔" not in older.text
    assert "更早的记录" not in older.text
    client.close()


def test_every_console_page_is_html_signed_in_and_json_free(stuck, signed_in) -> None:
    console, _name = signed_in("viewer")
    for path in ("/console", "/console/review", "/console/partners", "/console/audit"):
        reply = console.get(path)
        assert reply.status_code == 200, path
        assert reply.headers["content-type"].startswith("text/html"), path
    with stuck.http_client() as stranger:
        for path in ("/console/review", "/console/partners", "/console/audit"):
            assert stranger.get(path).status_code == 303, path


def test_the_overview_shows_the_background_workers_by_their_heartbeat(
    stuck, signed_in, in_process_services
) -> None:
    console, _name = signed_in("viewer")
    workers = _workers_table(console)
    # The app's own dispatcher and notifier, beating.
    assert workers.count("派单 dispatcher") == 1 and workers.count("通知 notifier") == 1
    assert workers.count("运行中") == 2 and "心跳停止" not in workers

    quiet = in_process_services(sandbox_config())  # no background worker at all
    quiet.add_operator("watcher", "viewer")
    watcher = Console(quiet)
    assert watcher.sign_in("watcher").status_code == 303
    assert "没有运行中的后台进程" in _workers_table(watcher)
    # A worker on another host that died a minute ago; nobody here takes its work over.
    minute_ago = int(time.time() * 1000) - 60_000
    quiet.sql(
        "INSERT INTO workers (owner, kind, host, pid, started_at, heartbeat_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        "dispatcher-0123456789ab", "dispatcher", "topup-2.internal", 4242, minute_ago, minute_ago,
    )  # fmt: skip
    workers = _workers_table(watcher)
    assert "topup-2.internal" in workers and "4242" in workers
    assert "心跳停止" in workers and "1 分钟前" in workers
    watcher.close()


def _workers_table(console: Console) -> str:
    page = console.get("/console").text
    start = page.index('<table id="workers">')
    return page[start : page.index("</table>", start)]
