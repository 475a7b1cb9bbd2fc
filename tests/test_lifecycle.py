"""The order lifecycle, observed from outside: partner API, a scripted supplier's
journal of what reached it, and crashes of the service process."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import new_partner
from tests.fake_suppliers import read_journal
from tests.support import (
    FAST_DISPATCH,
    PRODUCTS,
    Partner,
    ServiceProcess,
    eventually,
    fresh_order_no,
)

ScriptedFactory = Callable[..., tuple[ServiceProcess, Partner, str]]


def scripted_config(journal: Path, script: dict[str, str], route: list[str]) -> str:
    script_toml = ", ".join(f'"{phone}" = "{what}"' for phone, what in script.items())
    return f"""
enabled = ["scripted", "backup"]
{FAST_DISPATCH}
[plugin.scripted]
journal = "{journal}"
script = {{ {script_toml} }}

[plugin.backup]
journal = "{journal}"

[suppliers."中国移动"]
route = {json.dumps(route)}
{PRODUCTS}
"""


@pytest.fixture
def scripted_service(tmp_path: Path, services) -> Iterator[ScriptedFactory]:
    """Starts a service whose supplier is the scripted fake plugin (one per test)."""

    def start(script: dict[str, str], route: list[str] | None = None):
        journal = tmp_path / "journal.jsonl"
        config = scripted_config(journal, script, route or ["scripted"])
        service = services(config, env={"TOPUP_PLUGINS": "tests.fake_suppliers"})
        return service, new_partner(service), str(journal)

    yield start


def calls(journal: str, call: str, order_no: str) -> list[dict]:
    return [c for c in read_journal(journal) if c["call"] == call and c["order_no"] == order_no]


# -- the sandbox's three paths ----------------------------------------------------------


def test_sandbox_success(partner: Partner) -> None:
    cstm = fresh_order_no()
    partner.order(cstm, phone="13800138000")
    assert partner.wait_status(cstm, {"2", "3"})["data"]["status"] == "2"


def test_sandbox_failure_on_4(service: ServiceProcess, partner: Partner) -> None:
    cstm = fresh_order_no()
    order_no = partner.order(cstm, phone="13800138004")["data"]["orderNo"]
    data = partner.wait_status(cstm, {"2", "3"})["data"]
    assert data["status"] == "3"
    assert data["statusDesc"] == "充值失败"
    # The partner reads the curated reason; the supplier's own words are for operators.
    assert data["failReason"] == "充值失败，款项已退回"
    [(code, message)] = service.sql(
        "SELECT code, message FROM attempts WHERE order_no = ?", order_no
    )
    assert (code, message) == ("SANDBOX_DECLINED", "沙箱: 尾号 4 充值失败")
    assert data["finishTime"]


def test_sandbox_timeout_on_7_is_resolved_by_query(
    service: ServiceProcess, partner: Partner
) -> None:
    cstm = fresh_order_no()
    order_no = partner.order(cstm, phone="13800138007")["data"]["orderNo"]
    seen = set()

    def final() -> str | None:
        status = partner.status(cstm)["data"]["status"]
        seen.add(status)
        return status if status in {"2", "3"} else None

    assert eventually(final, 10, interval=0.03, what=f"{cstm} final") == "2"
    assert "1" in seen  # 充值中 while the outcome was unknown
    attempts = service.sql("SELECT seq, state, queries FROM attempts WHERE order_no = ?", order_no)
    assert len(attempts) == 1, "an unknown outcome must never lead to a second attempt"
    assert attempts[0][1] == "succeeded" and attempts[0][2] >= 1


# -- unknown outcomes: queried, never resent ---------------------------------------------


@pytest.mark.parametrize("behaviour", ["timeout-then-succeed", "raise", "hang"])
def test_unknown_submit_is_queried_not_resent(scripted_service, behaviour: str) -> None:
    _service, partner, journal = scripted_service({"13800000001": behaviour})
    cstm = fresh_order_no()
    order_no = partner.order(cstm, phone="13800000001")["data"]["orderNo"]
    assert partner.wait_status(cstm, {"2", "3"})["data"]["status"] == "2"
    assert len(calls(journal, "submit", order_no)) == 1
    assert len(calls(journal, "query", order_no)) >= 1


def test_order_in_flight_at_a_crash_is_resumed_by_query(scripted_service) -> None:
    service, partner, journal = scripted_service({"13800000002": "hang"})
    cstm = fresh_order_no()
    order_no = partner.order(cstm, phone="13800000002")["data"]["orderNo"]
    eventually(lambda: len(calls(journal, "submit", order_no)) == 1, what="one submit")
    first_pid = calls(journal, "submit", order_no)[0]["pid"]

    service.kill9()
    service.start()

    assert partner.wait_status(cstm, {"2", "3"}, timeout=20)["data"]["status"] == "2"
    submits = calls(journal, "submit", order_no)
    assert len(submits) == 1, f"resent after restart: {submits}"
    queries = calls(journal, "query", order_no)
    assert queries and all(q["pid"] != first_pid for q in queries)
    assert {q["reference"] for q in queries} == {submits[0]["reference"]}


def test_definitive_failure_fails_over_to_the_next_plugin(scripted_service) -> None:
    _service, partner, journal = scripted_service(
        {"13800000003": "reject"}, route=["scripted", "backup"]
    )
    cstm = fresh_order_no()
    order_no = partner.order(cstm, phone="13800000003")["data"]["orderNo"]
    assert partner.wait_status(cstm, {"2", "3"})["data"]["status"] == "2"
    submits = calls(journal, "submit", order_no)
    assert [s["plugin"] for s in submits] == ["scripted", "backup"]
    assert submits[0]["reference"] != submits[1]["reference"]


def test_failure_after_acceptance_is_final(scripted_service) -> None:
    _service, partner, journal = scripted_service(
        {"13800000004": "fail"}, route=["scripted", "backup"]
    )
    cstm = fresh_order_no()
    order_no = partner.order(cstm, phone="13800000004")["data"]["orderNo"]
    data = partner.wait_status(cstm, {"2", "3"})["data"]
    assert data["status"] == "3" and data["failReason"] == "充值失败，款项已退回"
    assert [s["plugin"] for s in calls(journal, "submit", order_no)] == ["scripted"]


# -- durability --------------------------------------------------------------------------


def test_acknowledged_orders_survive_kill_9(services) -> None:
    from tests.support import sandbox_config

    service = services(sandbox_config())
    partner = new_partner(service)
    token = partner.token()
    acknowledged: dict[str, str] = {}
    stop = threading.Event()

    def fire(worker: int) -> None:
        with httpx.Client(base_url=service.url, timeout=5) as http:
            n = 0
            while not stop.is_set():
                cstm = f"k9-{worker}-{n}"
                n += 1
                params = partner.signed(partner.order_params(cstm, access_token=token))
                try:
                    reply = http.post("/sign/api/order", data=params).json()
                except (httpx.TransportError, json.JSONDecodeError):
                    return
                if reply["code"] == "0":
                    acknowledged[cstm] = reply["data"]["orderNo"]

    threads = [threading.Thread(target=fire, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    eventually(lambda: len(acknowledged) >= 200, timeout=30, what="200 callbacks answered")
    service.kill9()
    stop.set()
    for thread in threads:
        thread.join()

    service.start()
    stored = dict(service.sql("SELECT cstm_order_no, order_no FROM orders"))
    missing = {c: o for c, o in acknowledged.items() if stored.get(c) != o}
    assert not missing, f"{len(missing)} acknowledged orders lost: {list(missing)[:5]}"
    for cstm in list(acknowledged)[-5:]:
        assert partner.status(cstm)["data"]["orderNo"] == acknowledged[cstm]


def test_tokens_survive_a_restart_and_work_on_every_instance(services) -> None:
    from tests.support import sandbox_config

    first = services(sandbox_config())
    partner = new_partner(first)
    token = partner.token()
    first.stop()
    first.start()
    second = services(sandbox_config(), database_url=first.database_url)  # same database
    for instance in (first, second):
        partner.http = httpx.Client(base_url=instance.url, timeout=10)
        reply = partner.order(fresh_order_no(), access_token=token)
        assert reply["code"] == "0", reply


def test_a_plugin_that_fails_on_callbacks_cannot_flood_the_log(scripted_service) -> None:
    service, _partner, _journal = scripted_service({})
    with httpx.Client(base_url=service.url, timeout=10) as client:
        replies = [client.post("/callback/scripted", content=f"x{n}") for n in range(30)]
    assert {reply.status_code for reply in replies} == {400}
    log = service.wait_for_log("callback could not be parsed", count=30)
    assert log.count("callback could not be parsed") == 30
    assert log.count("Traceback") == 1, log[-3000:]
