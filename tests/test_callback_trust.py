"""Which supplier callbacks are believed: the real juhe and reloadly plugins against the
simulator (its own process), through the partner API and /callback/{plugin}.

juhe's callback sign, md5(key + sporder_id + orderid), covers neither ``sta`` nor a time,
so anyone who saw one callback could resend it with the other outcome. Its callbacks only
have the order queried; the tests forge one (signed with the key, as a replay would be)
and check that the order ends where the supplier's status query says. reloadly's webhook
is believed, but only while its signed timestamp is current.

Status queries are scheduled a minute apart here, so an order settled within the tests'
deadlines was settled because of a callback.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import new_partner
from tests.support import Backend, Partner, ServiceProcess, eventually, fresh_order_no
from tests.test_conformance import CREDENTIALS
from topup.testing import running_simulator

CONFIG = """
enabled = ["juhe", "reloadly"]

[dispatch]
query_delays = [60]
max_queries = 5
call_timeout = 2.5
lease_seconds = 5
scan_interval = 0.1

[plugin.juhe]
base_url = "{sim}"
timeout = 1.0

[plugin.reloadly]
base_url = "{sim}"
auth_url = "{sim}"
operators = {{ "中国联通" = 12 }}
timeout = 1.0

[suppliers."中国移动"]
route = ["juhe"]
products = [{{ product_id = "YD10", face_value = "10", price = "9.95" }}]

[suppliers."中国联通"]
route = ["reloadly"]
products = [{{ product_id = "LT10", face_value = "10", price = "9.95" }}]
"""
PRODUCT = {"中国移动": "YD10", "中国联通": "LT10"}
JUHE_KEY = CREDENTIALS["TOPUP_JUHE_KEY"]
WEBHOOK_SECRET = CREDENTIALS["TOPUP_RELOADLY_WEBHOOK_SECRET"]
A_DAY_IN_2001 = 978307200


@dataclass
class Stack:
    service: ServiceProcess
    partner: Partner
    sim: str

    def order(self, phone: str, carrier: str = "中国移动") -> tuple[str, str]:
        cstm = fresh_order_no()
        reply = self.partner.order(cstm, phone=phone, Supplier=carrier, productId=PRODUCT[carrier])
        assert reply["code"] == "0", reply
        return cstm, reply["data"]["orderNo"]

    def status(self, cstm: str, carrier: str = "中国移动") -> dict:
        return self.partner.status(cstm, supplier=carrier)["data"]

    def final(self, cstm: str, carrier: str = "中国移动", within: float = 20.0) -> dict:
        def final() -> dict:
            data = self.status(cstm, carrier)
            assert data["status"] in ("2", "3"), data
            return data

        return eventually(final, within, interval=0.1, what=f"{cstm} final")

    def attempt(self, order_no: str) -> tuple[str, str, int]:
        """(reference, state, status queries so far) of the order's one attempt."""
        [row] = self.service.sql(
            "SELECT reference, state, queries FROM attempts WHERE order_no = ?", order_no
        )
        return row

    def wait_for_attempt(self, order_no: str, state: str, queries: int = 0) -> str:
        def reached() -> str:
            rows = self.service.sql(
                "SELECT reference, state, queries FROM attempts WHERE order_no = ?", order_no
            )
            assert rows and rows[0][1] == state and rows[0][2] >= queries, rows
            return rows[0][0]

        return eventually(reached, 20, interval=0.1, what=f"{order_no}'s attempt {state}")

    def transaction(self, reference: str) -> dict:
        transactions = httpx.get(f"{self.sim}/_sim/transactions", timeout=5).json()
        [found] = [t for t in transactions if t["reference"] == reference]
        return found

    def ledger(self, order_no: str) -> list[str]:
        rows = self.service.sql("SELECT kind FROM ledger WHERE order_no = ? ORDER BY id", order_no)
        return [kind for (kind,) in rows]

    def fault(self, phone: str, fault: str) -> None:
        body = {"phone_no": phone, "fault": fault}
        httpx.post(f"{self.sim}/_sim/faults", json=body, timeout=5).raise_for_status()


_numbers = iter(range(10_000, 99_999))


def phone(last: str) -> str:
    """A fresh number ending in the digit that picks the simulator's outcome."""
    return f"1391{next(_numbers):05d}0{last}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp(f"trust-{backend.name}")
    with ExitStack() as resources:
        service = ServiceProcess(workdir, "", env=CREDENTIALS, backend=backend)
        resources.callback(service.drop_database)
        sim = resources.enter_context(
            running_simulator(
                "--settle",
                "0.3",
                "--callback-interval",
                "0.3",
                "--juhe-callback",
                f"{service.url}/callback/juhe",
                "--reloadly-webhook",
                f"{service.url}/callback/reloadly",
                env=CREDENTIALS,
            )
        )
        service.config_path.write_text(CONFIG.format(sim=sim), encoding="utf-8")
        service.start()
        resources.callback(service.stop)
        yield Stack(service, new_partner(service), sim)


def forged_juhe_callback(stack: Stack, reference: str, sta: str) -> httpx.Response:
    """A callback as someone who saw one genuine callback could send it: the sign covers
    only sporder_id and orderid, so theirs still matches with any ``sta``."""
    sporder_id = "J00000000000000000001"
    sign = hashlib.md5((JUHE_KEY + sporder_id + reference).encode()).hexdigest()
    fields = {"sporder_id": sporder_id, "orderid": reference, "sta": sta, "sign": sign}
    if sta == "9":
        fields["err_msg"] = "充值失败"
    return httpx.post(f"{stack.service.url}/callback/juhe", data=fields, timeout=10)


def reloadly_webhook(reference: str, status: str, timestamp: int) -> tuple[bytes, dict]:
    body = json.dumps(
        {
            "id": "evt-1",
            "type": "airtime_transaction.status",
            "data": {"status": status, "customIdentifier": reference},
        }
    ).encode()
    stamp = str(timestamp)
    signature = hmac.new(WEBHOOK_SECRET.encode(), body + b":" + stamp.encode(), hashlib.sha256)
    headers = {
        "Content-Type": "application/json",
        "X-Reloadly-Request-Timestamp": stamp,
        "X-Reloadly-Signature": signature.hexdigest(),
    }
    return body, headers


# -- juhe: a callback only has the order queried ---------------------------------------------


@pytest.mark.parametrize(("last", "status"), [("1", "2"), ("4", "3")])
def test_a_genuine_juhe_callback_settles_the_order_at_once_through_a_query(
    stack: Stack, last: str, status: str
) -> None:
    cstm, order_no = stack.order(phone(last))
    data = stack.final(cstm)  # the scheduled query is a minute away: the callback did it
    assert data["status"] == status
    assert data["fundStatus"] == ("captured" if status == "2" else "released")
    reference, _state, queries = stack.attempt(order_no)
    assert queries == 1, "the callback had the supplier queried once, and that settled it"
    assert stack.transaction(reference)["submits"] == 1


def test_a_callback_that_arrives_while_the_order_is_being_submitted_is_not_lost(
    stack: Stack,
) -> None:
    number = phone("1")
    # The supplier settles at once and calls back before answering the submit (with 充值中):
    # the worker holding the order applies that answer after the callback woke the order.
    stack.fault(number, "early_callback")
    cstm, order_no = stack.order(number)
    assert stack.final(cstm)["status"] == "2"  # the scheduled query is a minute away
    assert stack.attempt(order_no)[2] == 1


def test_a_forged_failure_callback_leaves_a_pending_order_pending_and_its_money_held(
    stack: Stack,
) -> None:
    cstm, order_no = stack.order(phone("6"))  # the supplier never settles it
    reference = stack.wait_for_attempt(order_no, "pending")
    answer = forged_juhe_callback(stack, reference, "9")
    assert answer.text == "success"  # what juhe expects for a callback that verified
    # It woke a status query, which the supplier answered 充值中.
    stack.wait_for_attempt(order_no, "pending", queries=1)
    data = stack.status(cstm)
    assert (data["status"], data["fundStatus"]) == ("1", "held")
    assert stack.ledger(order_no) == ["hold"]
    assert stack.transaction(reference)["submits"] == 1, "the order was sent again"


def test_a_forged_failure_callback_cannot_undo_a_top_up_the_supplier_made(stack: Stack) -> None:
    number = phone("1")
    stack.fault(number, "lose_callback")  # only the forged callback will arrive
    cstm, order_no = stack.order(number)
    reference = stack.wait_for_attempt(order_no, "pending")
    eventually(  # the supplier credited the phone
        lambda: stack.transaction(reference)["paid"] == 1, 20, interval=0.1, what="paid"
    )
    assert forged_juhe_callback(stack, reference, "9").text == "success"
    data = stack.final(cstm)
    assert (data["status"], data["fundStatus"]) == ("2", "captured"), data
    assert stack.ledger(order_no) == ["hold", "capture"]


# -- reloadly: believed, while its timestamp is current ---------------------------------------


@pytest.mark.parametrize("timestamp", [A_DAY_IN_2001, "an hour ahead"])
def test_a_reloadly_webhook_with_an_old_or_future_timestamp_is_refused(
    stack: Stack, timestamp: int | str
) -> None:
    cstm, order_no = stack.order(phone("6"), carrier="中国联通")
    reference = stack.wait_for_attempt(order_no, "pending")
    when = int(time.time()) + 3600 if timestamp == "an hour ahead" else timestamp
    body, headers = reloadly_webhook(reference, "FAILED", when)
    refused = httpx.post(f"{stack.service.url}/callback/reloadly", content=body, headers=headers)
    assert (refused.status_code, refused.text) == (401, "stale timestamp")
    data = stack.status(cstm, "中国联通")  # a webhook is applied before it is answered
    assert (data["status"], data["fundStatus"]) == ("1", "held")
    assert stack.ledger(order_no) == ["hold"]
    # The same webhook, stamped now, is believed: only the timestamp was wrong.
    body, headers = reloadly_webhook(reference, "FAILED", int(time.time()))
    accepted = httpx.post(f"{stack.service.url}/callback/reloadly", content=body, headers=headers)
    assert accepted.status_code == 200
    data = stack.status(cstm, "中国联通")
    assert (data["status"], data["fundStatus"]) == ("3", "released")
