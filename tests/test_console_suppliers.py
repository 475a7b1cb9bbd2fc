"""供应商与路由 through a real `topup serve`: routes, costs, balances and circuits shown; an
admin switches a carrier's route from the page and the next order goes there; invalid
switches are shown on the page and change nothing; viewers and operators only read."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import new_partner
from tests.support import (
    FAST_DISPATCH,
    Backend,
    Console,
    Partner,
    ServiceProcess,
    eventually,
    fresh_order_no,
)
from tests.test_conformance import CREDENTIALS
from topup.testing import running_simulator

PAGE = "/console/suppliers"
_names = itertools.count(1)


def config(journal: Path, simulator: str, dispatch: str = "") -> str:
    fast = FAST_DISPATCH.replace("[dispatch]", "[dispatch]\n" + dispatch)
    return f"""
enabled = ["scripted", "backup", "juhe"]
{fast}
[plugin.scripted]
journal = "{journal}"
script = {{ "13800000005" = "reject" }}
[plugin.backup]
journal = "{journal}"
[plugin.juhe]
base_url = "{simulator}"
timeout = 1.0

[suppliers."中国移动"]
route = ["scripted"]
products = [
  {{ product_id = "YD10", name = "移动10元", face_value = "10", price = "9.95", \
cost = {{ scripted = "9.90", backup = "9.97" }} }},
]
[suppliers."中国联通"]
route = ["scripted", "backup"]
products = [{{ product_id = "LT10", face_value = "10", price = "9.95" }}]
"""


class Desk:
    """The service, and a signed-in console for each role."""

    def __init__(self, service: ServiceProcess) -> None:
        self.service = service
        self.partner: Partner = new_partner(service)
        self.consoles: dict[str, Console] = {}
        for role in ("viewer", "operator", "admin"):
            name = f"{role}{next(_names)}"
            service.add_operator(name, role)
            console = Console(service)
            assert console.sign_in(name).status_code == 303
            self.consoles[role] = console
            setattr(self, f"{role}_name", name)

    def close(self) -> None:
        for console in self.consoles.values():
            console.close()
        self.partner.close()


@pytest.fixture(scope="module")
def simulator() -> Iterator[str]:
    with running_simulator("--settle", "0.2", env=CREDENTIALS) as url:
        yield url


@pytest.fixture
def desk(tmp_path: Path, services, simulator: str) -> Iterator[Desk]:
    env = {"TOPUP_PLUGINS": "tests.fake_suppliers", **CREDENTIALS}
    service = services(config(tmp_path / "journal.jsonl", simulator), env=env)
    desk = Desk(service)
    yield desk
    desk.close()


@pytest.fixture(scope="module")
def unchanged_desk(
    tmp_path_factory: pytest.TempPathFactory, backend: Backend, simulator: str
) -> Iterator[Desk]:
    """One service for the tests that read, or whose switches are refused: none of them
    changes a route, so they can share it (a service start costs seconds)."""
    workdir = tmp_path_factory.mktemp(f"suppliers-{backend.name}")
    env = {"TOPUP_PLUGINS": "tests.fake_suppliers", **CREDENTIALS}
    service = ServiceProcess(
        workdir, config(workdir / "journal.jsonl", simulator), env=env, backend=backend
    ).start()
    desk = Desk(service)
    yield desk
    desk.close()
    service.stop()
    service.drop_database()


def switch(console: Console, carrier: str, rows, reason: str = "切换测试", **extra: str):
    """Post the route form as a browser would: rows are (plugin, used, position, weight)."""
    form: dict = {"carrier": carrier, "reason": reason, "plugin": [r[0] for r in rows]}
    for plugin, used, position, weight in rows:
        if used:
            form[f"use:{plugin}"] = "on"
        form[f"position:{plugin}"] = str(position)
        form[f"weight:{plugin}"] = str(weight)
    return console.post(f"{PAGE}/route", csrf_from=PAGE, **form, **extra)


def wait_applied(service: ServiceProcess) -> None:
    """Until every process of the service has reloaded the generation just written."""
    [(generation,)] = service.sql("SELECT value FROM control WHERE name = 'config_generation'")
    count = 2 if service.backend.name == "postgres" else 1
    log = service.wait_for_log(f"(generation {generation})", count=count, timeout=15)
    assert log.count(f"(generation {generation})") >= count


def plugin_of_next_order(desk: Desk, **extra: str) -> str:
    reply = desk.partner.order(fresh_order_no("page"), **extra)
    assert reply["code"] == "0", reply
    query = "SELECT plugin FROM attempts WHERE order_no = ? ORDER BY seq"
    rows = eventually(
        lambda: desk.service.sql(query, reply["data"]["orderNo"]), 15, what="an attempt"
    )
    return rows[0][0]


def carrier_section(html: str, carrier: str) -> str:
    start = html.index(f'<section class="card carrier" data-carrier="{carrier}">')
    return html[start : html.index("</section>", start)]


def test_routes_costs_balances_are_shown_and_only_admins_get_the_form(unchanged_desk: Desk) -> None:
    desk = unchanged_desk
    viewer = desk.consoles["viewer"]
    html = viewer.get(PAGE).text
    mobile = carrier_section(html, "中国移动")
    assert '中国移动：<span class="effective-route">scripted</span>' in mobile
    assert "plugins.toml</span> 未覆盖" in mobile
    assert 'action="/console/suppliers/route"' not in html and "仅管理员可以切换路由" in html
    # Costs and margins per plugin; a plugin outside the route is listed too (what a
    # switch would cost), and a loss is marked.
    costs = html[html.index('<section class="card costs" data-carrier="中国移动">') :]
    row = costs[costs.index('data-product="YD10"') : costs.index("</tr>", costs.index("YD10"))]
    cells = re.findall(r'<td class="num[^"]*">([^<]*)</td>', row)
    assert cells == ["10.00", "9.95", "9.90", "0.05", "9.97", "-0.02"]
    assert 'class="num loss">-0.02' in row

    # The balance is asked in the background: juhe's arrives, the fakes cannot tell.
    def with_balance() -> str:
        html = viewer.get(PAGE).text
        assert "100,000.00" in html, html
        return html

    html = eventually(with_balance, 15, interval=0.2, what="juhe's balance on the page")
    juhe = html[html.index('<tr data-plugin="juhe">') :]
    assert "100,000.00" in juhe[: juhe.index("</tr>")]
    scripted = html[html.index('<tr data-plugin="scripted">') :]
    assert "协议不支持" in scripted[: scripted.index("</tr>")]
    assert 'action="/console/suppliers/route"' not in desk.consoles["operator"].get(PAGE).text
    assert 'action="/console/suppliers/route"' in desk.consoles["admin"].get(PAGE).text


def test_an_admin_switches_a_route_from_the_page_and_the_next_order_goes_there(
    desk: Desk,
) -> None:
    admin = desk.consoles["admin"]
    assert plugin_of_next_order(desk) == "scripted"
    rows = [("scripted", True, 2, 0), ("backup", True, 1, 0), ("juhe", False, 3, 0)]
    reply = switch(admin, "中国移动", rows, reason="scripted 大量失败")
    assert reply.status_code == 303, reply.text
    assert (
        reply.headers["location"]
        == "/console/suppliers?switched=%E4%B8%AD%E5%9B%BD%E7%A7%BB%E5%8A%A8"
    )
    page = admin.get(PAGE, switched="中国移动").text
    assert "中国移动 的路由已切换" in page
    mobile = carrier_section(page, "中国移动")
    assert "backup → scripted" in mobile and "已覆盖" in mobile
    assert f"由 <b>{desk.admin_name}</b>" in mobile and "scripted 大量失败" in mobile
    wait_applied(desk.service)
    assert plugin_of_next_order(desk) == "backup"
    [(actor, target, detail)] = desk.service.sql(
        "SELECT actor, target, detail FROM audit_log WHERE action = 'route.set'"
    )
    assert (actor, target) == (desk.admin_name, "中国移动")
    assert json.loads(detail)["new"] == [
        {"plugin": "backup", "weight": 0},
        {"plugin": "scripted", "weight": 0},
    ]

    # A quick "设为首选" button: juhe first, the rest of the route after it.
    quick = switch(admin, "中国移动", rows, reason="试 juhe", first="juhe")
    assert quick.status_code == 303
    assert "juhe → backup → scripted" in carrier_section(admin.get(PAGE).text, "中国移动")

    # Weights share the first attempts.
    weighted = [("scripted", True, 1, 3), ("backup", True, 2, 1), ("juhe", False, 3, 0)]
    assert switch(admin, "中国联通", weighted, reason="分流").status_code == 303
    unicom = carrier_section(admin.get(PAGE).text, "中国联通")
    assert re.search(r"scripted<small[^>]*>×3</small> → backup<small[^>]*>×1</small>", unicom)

    reset = admin.post(f"{PAGE}/reset", csrf_from=PAGE, carrier="中国移动", reason="恢复")
    assert reset.status_code == 303
    assert "plugins.toml</span> 未覆盖" in carrier_section(admin.get(PAGE).text, "中国移动")
    wait_applied(desk.service)
    assert plugin_of_next_order(desk) == "scripted"
    actions = desk.service.sql("SELECT action, target FROM audit_log ORDER BY id")
    assert actions[-1] == ("route.reset", "中国移动")


@pytest.mark.parametrize(
    ("rows", "reason", "message"),
    [
        ([("scripted", False, 1, 0), ("backup", False, 2, 0)], "x", "至少选择一个供应商插件"),
        ([("backup", True, 1, "abc")], "x", "backup 的权重须为不小于 0 的整数"),
        ([("backup", True, 1, 0)], " ", "请填写原因"),
        ([("nosuch", True, 1, 0)], "x", "&#39;nosuch&#39;, which is not in `enabled`"),
        ([("backup", True, 1, 0), ("backup", True, 2, 0)], "x", "names a plugin twice"),
    ],
)
def test_an_invalid_switch_is_shown_on_the_page_and_changes_nothing(
    unchanged_desk: Desk, rows, reason: str, message: str
) -> None:
    desk = unchanged_desk
    reply = switch(desk.consoles["admin"], "中国移动", rows, reason=reason)
    assert reply.status_code == 400
    assert 'id="route-error"' in reply.text and message in reply.text, reply.text
    assert "未做任何更改" in reply.text
    assert desk.service.sql("SELECT count(*) FROM route_overrides") == [(0,)]
    assert desk.service.sql("SELECT count(*) FROM audit_log WHERE action LIKE 'route.%'") == [(0,)]


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_viewers_and_operators_cannot_switch_or_reset(unchanged_desk: Desk, role: str) -> None:
    desk = unchanged_desk
    console = desk.consoles[role]
    refused = switch(console, "中国移动", [("backup", True, 1, 0)])
    assert refused.status_code == 403 and "需要管理员权限" in refused.text
    reset = console.post(f"{PAGE}/reset", csrf_from=PAGE, carrier="中国移动", reason="x")
    assert reset.status_code == 403
    assert desk.service.sql("SELECT count(*) FROM route_overrides") == [(0,)]


def test_a_switch_without_the_csrf_token_is_refused(unchanged_desk: Desk) -> None:
    desk = unchanged_desk
    forged = desk.consoles["admin"].http.post(
        f"{PAGE}/route",
        data={"carrier": "中国移动", "reason": "x", "plugin": "backup", "use:backup": "on"},
    )
    assert forged.status_code == 403 and "CSRF" in forged.text
    assert desk.service.sql("SELECT count(*) FROM route_overrides") == [(0,)]


def test_an_open_circuit_shows_on_the_page(
    tmp_path: Path, services, simulator: str, backend: Backend
) -> None:
    env = {"TOPUP_PLUGINS": "tests.fake_suppliers", **CREDENTIALS}
    breaker = "breaker_threshold = 2\nbreaker_cooldown = 600"
    toml = config(tmp_path / "journal.jsonl", simulator, dispatch=breaker)
    service = services(
        toml.replace('route = ["scripted"]', 'route = ["scripted", "backup"]'), env=env
    )
    desk = Desk(service)
    try:
        for n in range(2):  # refused by scripted, served by backup
            cstm = fresh_order_no(f"rej{n}")
            assert desk.partner.order(cstm, phone="13800000005")["code"] == "0"
            assert desk.partner.wait_status(cstm, {"2", "3"})["data"]["status"] == "2"
        service.wait_for_log("circuit opened")
        html = desk.consoles["viewer"].get(PAGE).text
        scripted = html[html.index('<tr data-plugin="scripted">') :]
        assert re.search(r"熔断中，至 \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", scripted[:400]), scripted[
            :400
        ]
        backup = html[html.index('<tr data-plugin="backup">') :]
        assert "正常" in backup[: backup.index("</tr>")]
    finally:
        desk.close()
