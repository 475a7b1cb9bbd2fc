"""Route overrides through `topup routes` against real `topup serve` instances sharing one
database: switched in every instance, recorded with who and why, refused when invalid,
skipped (loudly) when plugins.toml no longer fits them, and reset."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from core.config import parse_config
from core.route_overrides import RouteOverride, apply_overrides, parse_route
from tests.conftest import new_partner
from tests.support import (
    FAST_DISPATCH,
    PRODUCTS,
    Partner,
    ServiceProcess,
    eventually,
    fresh_order_no,
)

PLUGINS_ENV = {"TOPUP_PLUGINS": "tests.fake_suppliers"}


def config(
    journal: Path, enabled: tuple[str, ...] = ("scripted", "backup"), extra: str = ""
) -> str:
    tables = "".join(f'\n[plugin.{name}]\njournal = "{journal}"\n' for name in enabled)
    return f"""
enabled = {json.dumps(list(enabled))}
{FAST_DISPATCH}
{tables}
[suppliers."中国移动"]
route = ["scripted"]
{PRODUCTS}
[suppliers."中国联通"]
route = ["scripted"]
products = [{{ product_id = "LT10", face_value = "10", price = "9.95" }}]
"""


def processes_per_instance(service: ServiceProcess) -> int:
    """Each process reloads by itself: on PostgreSQL the dispatcher runs apart."""
    return 2 if service.backend.name == "postgres" else 1


def generation_of(output: str) -> int:
    found = re.search(r"generation (\d+)", output)
    assert found, output
    return int(found.group(1))


def wait_reloaded(instances: list[ServiceProcess], generation: int) -> None:
    for instance in instances:
        count = processes_per_instance(instance)
        log = instance.wait_for_log(f"(generation {generation})", count=count, timeout=15)
        assert log.count(f"(generation {generation})") >= count, log[-2000:]


def plugin_of_order(service: ServiceProcess, partner: Partner, cstm: str, **extra: str) -> str:
    reply = partner.order(cstm, **extra)
    assert reply["code"] == "0", reply
    order_no = reply["data"]["orderNo"]
    query = "SELECT plugin FROM attempts WHERE order_no = ? ORDER BY seq"
    rows = eventually(lambda: service.sql(query, order_no), 15, what=f"{order_no}'s attempt")
    return rows[0][0]


def test_a_switched_route_is_applied_by_every_instance_recorded_and_reset(
    tmp_path: Path, services
) -> None:
    journal = tmp_path / "journal.jsonl"
    first = services(config(journal), env=PLUGINS_ENV)
    second = services(config(journal), env=PLUGINS_ENV, database_url=first.database_url)
    partner = new_partner(first)
    partners = [partner, Partner(second.url, partner.app_id, partner.secret, partner.company)]
    instances = [first, second]
    for instance, client in zip(instances, partners, strict=True):
        assert plugin_of_order(instance, client, fresh_order_no("before")) == "scripted"

    switched = first.cli(
        "routes",
        "set",
        "中国移动",
        "backup",
        "scripted",
        "--reason",
        "断网",
        "--operator",
        "值班员",
    )
    wait_reloaded(instances, generation_of(switched.stdout))
    for instance, client in zip(instances, partners, strict=True):
        assert plugin_of_order(instance, client, fresh_order_no("after")) == "backup"
    # Only the switched carrier moved.
    other = {"Supplier": "中国联通", "productId": "LT10"}
    assert plugin_of_order(first, partner, fresh_order_no("lt"), **other) == "scripted"

    shown = first.cli("routes").stdout
    assert "中国移动: backup -> scripted" in shown
    assert "overridden" in shown and "断网" in shown and "plugins.toml: scripted" in shown
    assert "中国联通: scripted\n  from plugins.toml" in shown
    [(actor, action, target, reason, detail)] = first.sql(
        "SELECT actor, action, target, reason, detail FROM audit_log WHERE action LIKE 'route.%'"
    )
    assert (actor, action, target, reason) == ("值班员", "route.set", "中国移动", "断网")
    assert json.loads(detail) == {
        "old": [{"plugin": "scripted", "weight": 0}],
        "new": [{"plugin": "backup", "weight": 0}, {"plugin": "scripted", "weight": 0}],
    }

    reset = second.cli("routes", "reset", "中国移动", "--reason", "恢复")
    wait_reloaded(instances, generation_of(reset.stdout))
    for instance, client in zip(instances, partners, strict=True):
        assert plugin_of_order(instance, client, fresh_order_no("reset")) == "scripted"
    assert first.sql("SELECT count(*) FROM route_overrides") == [(0,)]
    assert first.sql(
        "SELECT action, reason FROM audit_log WHERE target = '中国移动' ORDER BY id"
    ) == [
        ("route.set", "断网"),
        ("route.reset", "恢复"),
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["中国移动", "nosuch"], "'nosuch', which is not in `enabled`"),
        (["中国移动", "backup", "backup"], "names a plugin twice"),
        (["中国移动", "backup:x"], "expected PLUGIN or PLUGIN:WEIGHT"),
        (["中国铁通", "backup"], "'中国铁通' is not a carrier in plugins.toml"),
    ],
)
def test_an_invalid_route_is_refused_with_the_reason_and_changes_nothing(
    tmp_path: Path, services, args: list[str], message: str
) -> None:
    service = services(config(tmp_path / "journal.jsonl"), env=PLUGINS_ENV, begin=False)
    refused = service.cli("routes", "set", *args, "--reason", "试试", check=False)
    assert refused.returncode == 1
    assert "refused, nothing changed" in refused.stderr and message in refused.stderr
    assert service.sql("SELECT count(*) FROM route_overrides") == [(0,)]
    assert service.sql("SELECT count(*) FROM audit_log WHERE action LIKE 'route.%'") == [(0,)]
    assert service.sql("SELECT count(*) FROM control WHERE name = 'config_generation'") == [(0,)]


def test_a_reason_is_required(tmp_path: Path, services) -> None:
    service = services(config(tmp_path / "journal.jsonl"), env=PLUGINS_ENV, begin=False)
    refused = service.cli("routes", "set", "中国移动", "backup", "--reason", " ", check=False)
    assert refused.returncode == 1 and "a reason is required" in refused.stderr
    missing = service.cli("routes", "reset", "中国移动", "--reason", "x", check=False)
    assert missing.returncode == 1 and "'中国移动' has no route override" in missing.stderr
    assert service.sql("SELECT count(*) FROM audit_log WHERE action LIKE 'route.%'") == [(0,)]


def test_an_override_the_file_no_longer_fits_is_skipped_loudly_until_reset(
    tmp_path: Path, services
) -> None:
    journal = tmp_path / "journal.jsonl"
    service = services(config(journal), env=PLUGINS_ENV)
    partner = new_partner(service)
    switched = service.cli("routes", "set", "中国移动", "backup", "--reason", "切换")
    wait_reloaded([service], generation_of(switched.stdout))
    assert plugin_of_order(service, partner, fresh_order_no("on")) == "backup"

    # backup leaves plugins.toml: the stored override can no longer apply.
    service.config_path.write_text(config(journal, enabled=("scripted",)), encoding="utf-8")
    reloaded = service.cli("reload")
    assert "warning: route override of '中国移动'" in reloaded.stderr
    assert "topup routes reset 中国移动" in reloaded.stderr
    wait_reloaded([service], generation_of(reloaded.stdout))
    log = service.log()
    assert "ERROR" in log and "no longer fits plugins.toml and is skipped" in log
    assert "'backup', which is not in `enabled`" in log
    assert plugin_of_order(service, partner, fresh_order_no("skipped")) == "scripted"
    shown = service.cli("routes").stdout
    assert "中国移动: scripted\n  override NOT APPLIED" in shown
    assert "remove it with: topup routes reset 中国移动" in shown

    reset = service.cli("routes", "reset", "中国移动", "--reason", "backup 已下线")
    wait_reloaded([service], generation_of(reset.stdout))
    assert "from plugins.toml" in service.cli("routes").stdout
    assert service.sql("SELECT count(*) FROM route_overrides") == [(0,)]


def test_an_open_circuit_is_visible_to_other_processes(tmp_path: Path, services) -> None:
    journal = tmp_path / "journal.jsonl"
    breaker = "breaker_threshold = 2\nbreaker_cooldown = 600\n"
    toml = config(journal).replace("[dispatch]\n", "[dispatch]\n" + breaker)
    toml = toml.replace(
        f'[plugin.scripted]\njournal = "{journal}"\n',
        f'[plugin.scripted]\njournal = "{journal}"\nscript = {{ "13800000005" = "reject" }}\n',
    )
    toml = toml.replace('route = ["scripted"]', 'route = ["scripted", "backup"]')
    service = services(toml, env=PLUGINS_ENV)
    partner = new_partner(service)
    assert "circuit open" not in service.cli("routes").stdout
    for n in range(2):
        cstm = fresh_order_no(f"rej{n}")
        assert partner.order(cstm, phone="13800000005")["code"] == "0"
        assert partner.wait_status(cstm, {"2", "3"})["data"]["status"] == "2"  # via backup
    service.wait_for_log("circuit opened")
    shown = service.cli("routes").stdout
    assert re.search(r"circuit open: scripted until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", shown), shown


# -- the rules, without a service ---------------------------------------------------------------

FILE = parse_config(
    'enabled = ["a", "b"]\n[suppliers."X"]\nroute = ["a"]\n'
    'products = [{ product_id = "P", face_value = "10", price = "9.9", cost = { b = "9.8" } }]\n'
)


def override(carrier: str, words: list[str]) -> RouteOverride:
    return RouteOverride(carrier, parse_route(words), "test", "because", 0)


def test_overrides_replace_routes_and_the_ones_that_do_not_fit_are_skipped() -> None:
    applied, skipped = apply_overrides(FILE, [override("X", ["b:2", "a"])])
    assert skipped == []
    assert [(e.plugin, e.weight) for e in applied.carriers["X"].entries] == [("b", 2), ("a", 0)]
    # A cost may name an enabled plugin outside the route: what a switch would cost.
    assert applied.carriers["X"].products == FILE.carriers["X"].products
    applied, skipped = apply_overrides(FILE, [override("X", ["c"]), override("Y", ["a"])])
    assert applied == FILE
    assert [(s.override.carrier, "not in `enabled`" in s.error) for s in skipped] == [
        ("X", True),
        ("Y", False),
    ]
    assert "is not a carrier" in skipped[1].error
