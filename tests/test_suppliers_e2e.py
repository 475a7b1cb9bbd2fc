"""Real-protocol plugins end to end: partner API -> service -> plugin -> simulator (its own
process) -> callback or poll -> partner. For every fault: each acknowledged order reaches
exactly one terminal state (or manual review), and no order is paid twice.

Two simulators stand for two suppliers: A speaks juhe, B speaks reloadly and acme.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import new_partner
from tests.support import Backend, Partner, ServiceProcess, eventually, fresh_order_no
from tests.test_conformance import CREDENTIALS
from topup.testing import running_simulator

ROUTES = """
[suppliers."中国移动"]
route = ["juhe", "reloadly"]
products = [{{ product_id = "YD10", face_value = "10", price = "9.95" }}]

[suppliers."中国联通"]
route = ["reloadly"]
products = [{{ product_id = "LT10", face_value = "10", price = "9.95" }}]

[suppliers."中国电信"]
route = ["acme"]
products = [{{ product_id = "DX10", face_value = "10", price = "9.95" }}]
"""


def config(sim_a: str, sim_b: str, callback_base: str, routes: str = ROUTES) -> str:
    return f"""
enabled = ["juhe", "reloadly", "acme"]

[dispatch]
# The first query comes after the simulator's callback would (settle 0.3 s), so a
# test can tell which of the two settled an order.
query_delays = [1.5, 0.5]
max_queries = 4
call_timeout = 2.5
resend_margin = 1
lease_seconds = 5
scan_interval = 0.1
breaker_threshold = 3
breaker_cooldown = 4

[plugin.juhe]
base_url = "{sim_a}"
timeout = 1.0

[plugin.reloadly]
base_url = "{sim_b}"
auth_url = "{sim_b}"
operators = {{ "中国移动" = 11, "中国联通" = 12 }}
timeout = 1.0

[plugin.acme]
base_url = "{sim_b}"
callback_url = "{callback_base}/callback/acme"
timeout = 1.0
{routes.format()}
"""


@dataclass
class Stack:
    service: ServiceProcess
    partner: Partner
    sim_a: str
    sim_b: str
    placed: dict[str, tuple[str, str]] = field(default_factory=dict)  # cstm -> (orderNo, carrier)

    def order(self, phone: str, carrier: str = "中国移动") -> tuple[str, str]:
        product = {"中国移动": "YD10", "中国联通": "LT10", "中国电信": "DX10"}[carrier]
        cstm = fresh_order_no()
        reply = self.partner.order(cstm, phone=phone, Supplier=carrier, productId=product)
        assert reply["code"] == "0", reply
        self.placed[cstm] = (reply["data"]["orderNo"], carrier)
        return cstm, reply["data"]["orderNo"]

    def final(self, cstm: str, timeout: float = 20.0) -> dict:
        carrier = self.placed[cstm][1]

        def final() -> dict:
            reply = self.partner.status(cstm, supplier=carrier)
            assert reply["data"]["status"] in ("2", "3"), reply
            return reply["data"]

        return eventually(final, timeout, interval=0.1, what=f"{cstm} final")

    def fault(self, sim: str, phone: str, fault: str, seconds: float | None = None) -> None:
        body = {"phone_no": phone, "fault": fault, **({"seconds": seconds} if seconds else {})}
        httpx.post(f"{sim}/_sim/faults", json=body, timeout=5).raise_for_status()

    def clear_faults(self) -> None:
        for sim in (self.sim_a, self.sim_b):
            httpx.delete(f"{sim}/_sim/faults", timeout=5).raise_for_status()

    def upstream(self, order_no: str) -> list[dict]:
        """Every transaction any supplier holds for this order, whatever the attempt."""
        found = []
        for sim in (self.sim_a, self.sim_b):
            transactions = httpx.get(f"{sim}/_sim/transactions", timeout=5).json()
            found += [t for t in transactions if t["reference"].startswith(order_no + "A")]
        return found

    def queries(self, order_no: str) -> list[int]:
        rows = self.service.sql("SELECT queries FROM attempts WHERE order_no = ?", order_no)
        return [queries for (queries,) in rows]

    def paid(self, order_no: str) -> int:
        return sum(t["paid"] for t in self.upstream(order_no))


_counter = iter(range(10_000, 99_999))


def phone(last: str = "1") -> str:
    """A fresh number per test, ending in the digit that picks the simulator's outcome."""
    return f"1390{next(_counter):05d}0{last}"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, example_plugin: None, backend: Backend
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp(f"e2e-{backend.name}")
    with ExitStack() as resources:
        service = ServiceProcess(workdir, "", env=CREDENTIALS, backend=backend)
        resources.callback(service.drop_database)
        callback_base = service.url
        common = ["--settle", "0.3", "--callback-interval", "0.3", "--token-ttl", "3"]
        sim_a = resources.enter_context(
            running_simulator(
                *common, "--juhe-callback", f"{callback_base}/callback/juhe", env=CREDENTIALS
            )
        )
        sim_b = resources.enter_context(
            running_simulator(
                *common,
                "--reloadly-webhook",
                f"{callback_base}/callback/reloadly",
                env=CREDENTIALS,
            )
        )
        service.config_path.write_text(config(sim_a, sim_b, callback_base), encoding="utf-8")
        service.start()
        resources.callback(service.stop)
        stack = Stack(service, new_partner(service), sim_a, sim_b)
        yield stack
        # Across every order of the module: paid at most once, and the partner saw the truth.
        for cstm, (order_no, _carrier) in stack.placed.items():
            status = stack.partner.status(cstm, supplier=stack.placed[cstm][1])["data"]["status"]
            paid = stack.paid(order_no)
            assert paid <= 1, f"{order_no} paid {paid} times"
            if status == "2":
                assert paid == 1, f"{order_no} reported success but nothing was paid"
            if status == "3":
                assert paid == 0, f"{order_no} reported failure but was paid"


@pytest.fixture(autouse=True)
def no_faults_left(stack: Stack) -> Iterator[None]:
    yield
    stack.clear_faults()


# -- outcomes --------------------------------------------------------------------------


def test_success_through_juhe_with_its_callback(stack: Stack) -> None:
    cstm, order_no = stack.order(phone("1"))
    assert stack.final(cstm)["status"] == "2"
    [transaction] = stack.upstream(order_no)
    assert (transaction["protocol"], transaction["submits"], transaction["paid"]) == ("juhe", 1, 1)
    # juhe's callback is not believed by itself (its sign does not cover the outcome): it has
    # the order queried, and the query settles it (tests/test_callback_trust.py).
    assert stack.queries(order_no) == [1]


def test_success_through_reloadly(stack: Stack) -> None:
    cstm, order_no = stack.order(phone("2"), carrier="中国联通")
    assert stack.final(cstm)["status"] == "2"
    assert [t["protocol"] for t in stack.upstream(order_no)] == ["reloadly"]
    assert stack.queries(order_no) == [0], "the signed webhook settled it"


def test_failure_after_acceptance_is_reported_and_not_rerouted(stack: Stack) -> None:
    cstm, order_no = stack.order(phone("4"))
    data = stack.final(cstm)
    # juhe's own err_msg stays with the attempt, for operators.
    assert data["status"] == "3" and data["failReason"] == "充值失败，款项已退回"
    assert [t["protocol"] for t in stack.upstream(order_no)] == ["juhe"]


def test_definitive_rejection_fails_over_to_the_next_supplier(stack: Stack) -> None:
    number = phone("1")
    stack.fault(stack.sim_a, number, "reject")  # supplier A's balance is exhausted
    cstm, order_no = stack.order(number)
    assert stack.final(cstm)["status"] == "2"
    upstream = {t["protocol"]: t for t in stack.upstream(order_no)}
    assert upstream["juhe"]["paid"] == 0 and upstream["reloadly"]["paid"] == 1
    assert upstream["juhe"]["reference"] != upstream["reloadly"]["reference"]


def test_rejected_everywhere_fails_with_nothing_paid(stack: Stack) -> None:
    cstm, order_no = stack.order(phone("5"))
    assert stack.final(cstm)["status"] == "3"
    assert stack.paid(order_no) == 0


def test_third_party_plugin_from_an_entry_point_is_routed_to(stack: Stack) -> None:
    cstm, order_no = stack.order(phone("3"), carrier="中国电信")
    assert stack.final(cstm)["status"] == "2"
    assert [t["protocol"] for t in stack.upstream(order_no)] == ["acme"]
    assert stack.queries(order_no) == [0], "its callback settled it"
    listing = stack.service.cli("plugins").stdout
    assert "acme" in listing and "topup-acme" in listing


# -- faults: unknown outcomes are resolved by query, never resent or rerouted ---------------


# Each carrier's route starts with a different protocol: juhe on A, reloadly on B.
PROTOCOLS = [("中国移动", "sim_a", "juhe"), ("中国联通", "sim_b", "reloadly")]


@pytest.mark.parametrize(("carrier", "sim", "protocol"), PROTOCOLS)
@pytest.mark.parametrize("fault", ["timeout", "error_after_topup", "garbage"])
def test_no_proper_answer_is_resolved_by_query(
    stack: Stack, fault: str, carrier: str, sim: str, protocol: str
) -> None:
    number = phone("1")
    stack.fault(getattr(stack, sim), number, fault, seconds=30 if fault == "timeout" else None)
    cstm, order_no = stack.order(number, carrier)
    assert stack.final(cstm)["status"] == "2"
    [transaction] = stack.upstream(order_no)  # never rerouted to another supplier
    assert transaction["protocol"] == protocol
    assert transaction["submits"] == 1 and transaction["paid"] == 1


@pytest.mark.parametrize(
    ("carrier", "sim", "protocol"),
    [("中国移动", "sim_a", "juhe"), ("中国联通", "sim_b", "reloadly")],
)
def test_a_submit_lost_on_the_way_is_sent_again_once_with_the_same_reference(
    stack: Stack, carrier: str, sim: str, protocol: str
) -> None:
    # juhe and reloadly refuse a reused reference, so their "no such order" (asked well
    # after call_timeout) proves the first submit never arrived: the attempt goes again.
    number = phone("1")
    stack.fault(getattr(stack, sim), number, "lose_submit")
    cstm, order_no = stack.order(number, carrier)
    assert stack.final(cstm)["status"] == "2"
    [transaction] = stack.upstream(order_no)
    assert transaction["protocol"] == protocol
    assert transaction["reference"] == f"{order_no}A1" and transaction["paid"] == 1
    [(resent,)] = stack.service.sql("SELECT resent FROM attempts WHERE order_no = ?", order_no)
    assert resent
    assert "resent by system" in stack.service.cli("orders", "show", order_no).stdout


def test_slow_answer_within_the_timeout(stack: Stack) -> None:
    number = phone("1")
    stack.fault(stack.sim_a, number, "slow", seconds=0.5)
    cstm, order_no = stack.order(number)
    assert stack.final(cstm)["status"] == "2"
    assert stack.paid(order_no) == 1


@pytest.mark.parametrize(("carrier", "sim", "protocol"), PROTOCOLS)
@pytest.mark.parametrize(
    ("fault", "settled_by_query"),
    [
        ("lose_callback", True),
        ("duplicate_callback", False),
        ("early_callback", False),
        ("bad_signature_callback", True),
    ],
)
def test_callback_faults(
    stack: Stack, fault: str, settled_by_query: bool, carrier: str, sim: str, protocol: str
) -> None:
    number = phone("1")
    stack.fault(getattr(stack, sim), number, fault)
    cstm, order_no = stack.order(number, carrier)
    assert stack.final(cstm)["status"] == "2"
    assert stack.paid(order_no) == 1
    # A juhe callback only has the order queried, so a query settles it either way.
    assert (stack.queries(order_no)[0] > 0) is (settled_by_query or protocol == "juhe")


def test_early_failure_callback_is_not_undone_by_the_submit_answer(stack: Stack) -> None:
    number = phone("4")
    stack.fault(stack.sim_a, number, "early_callback")
    cstm, _order_no = stack.order(number)
    assert stack.final(cstm)["status"] == "3"
    # Kept as a sleep: the submit answer reaching an order already final changes nothing and
    # so leaves no row or log line to await; a second is ample for it to have arrived.
    time.sleep(1)
    assert stack.partner.status(cstm)["data"]["status"] == "3"


def test_forged_callbacks_are_refused_as_each_protocol_expects(stack: Stack) -> None:
    cstm, order_no = stack.order(phone("1"))
    stack.final(cstm)
    reference = stack.upstream(order_no)[0]["reference"]
    forged = httpx.post(
        f"{stack.service.url}/callback/juhe",
        data={"sporder_id": "X", "orderid": reference, "sta": "9", "sign": "0" * 32},
    )
    assert forged.text == "fail"
    webhook = httpx.post(
        f"{stack.service.url}/callback/reloadly",
        content=b'{"data": {"status": "FAILED", "customIdentifier": "%s"}}' % reference.encode(),
        headers={"X-Reloadly-Signature": "0" * 64, "X-Reloadly-Request-Timestamp": "1"},
    )
    assert webhook.status_code == 401
    assert stack.partner.status(cstm)["data"]["status"] == "2"
    assert httpx.post(f"{stack.service.url}/callback/nosuch", content=b"x").status_code == 404


# -- manual review -----------------------------------------------------------------------


def test_an_order_that_never_settles_goes_to_review_and_an_operator_resolves_it(
    stack: Stack,
) -> None:
    cstm, order_no = stack.order(phone("6"))
    stack.service.wait_for_state(order_no, "review")
    assert order_no in stack.service.cli("orders", "review").stdout
    assert stack.partner.status(cstm)["data"]["status"] == "1"  # 充值中 to the partner
    refused = stack.service.cli("orders", "review", order_no, "--resolve", "succeeded", check=False)
    assert refused.returncode != 0 and "--reason" in refused.stderr
    # The supplier's statement says it was delivered: make its record agree, then settle.
    stack.service.cli(
        "orders",
        "review",
        order_no,
        "--resolve",
        "succeeded",
        "--reason",
        "供应商对账单确认已到账",
        "--operator",
        "alice",
    )
    data = stack.partner.status(cstm)["data"]
    assert data["status"] == "2"
    shown = stack.service.cli("orders", "show", order_no).stdout
    assert "resolved by alice: succeeded: 供应商对账单确认已到账" in shown
    assert "review by system" in shown
    assert order_no not in stack.service.cli("orders", "review").stdout
    stack.placed.pop(cstm)  # the simulator never paid it: the operator's word stands


def test_requery_sends_an_order_back_to_polling(stack: Stack) -> None:
    cstm, order_no = stack.order(phone("6"))

    stack.service.wait_for_state(order_no, "review")
    assert order_no in stack.service.cli("orders", "review").stdout
    stack.service.cli("orders", "review", order_no, "--requery", "--reason", "API back")
    # Queried afresh, still unsettled, so it goes to review a second time.
    stack.service.wait_for_log(f"order {order_no} -> review", count=2, timeout=20)
    assert stack.queries(order_no) == [4]
    stack.service.cli("orders", "review", order_no, "--resolve", "failed", "--reason", "对账无此单")
    assert stack.final(cstm)["status"] == "3"
    assert "requeried by" in stack.service.cli("orders", "show", order_no).stdout


# -- the circuit breaker -------------------------------------------------------------------


def test_a_failing_supplier_is_skipped_and_recovers_by_itself(stack: Stack) -> None:
    httpx.post(f"{stack.sim_a}/_sim/faults", json={"phone_no": "*", "fault": "reject"})
    first = [stack.order(phone("1")) for _ in range(3)]
    for cstm, _ in first:
        assert stack.final(cstm)["status"] == "2"  # failed over to supplier B
    # The circuit is open now: supplier A is not even asked.
    cstm, order_no = stack.order(phone("1"))
    assert stack.final(cstm)["status"] == "2"
    assert [t["protocol"] for t in stack.upstream(order_no)] == ["reloadly"]
    stack.clear_faults()
    time.sleep(4.5)  # the cool-down: a span of time to let pass, not an event to await
    cstm, order_no = stack.order(phone("1"))
    assert stack.final(cstm)["status"] == "2"
    assert [t["protocol"] for t in stack.upstream(order_no)] == ["juhe"]


# -- configuration reload --------------------------------------------------------------------


def test_reload_switches_suppliers_without_a_restart_or_a_lost_order(
    stack: Stack, tmp_path: Path
) -> None:
    original = stack.service.config_path.read_text(encoding="utf-8")
    pid = stack.service.proc.pid
    try:
        rerouted = original.replace('route = ["juhe", "reloadly"]', 'route = ["reloadly"]')
        placed_during = []
        stack.service.config_path.write_text(rerouted, encoding="utf-8")
        reloaded = stack.service.cli("reload")
        assert "reload requested" in reloaded.stdout
        for _ in range(10):
            placed_during.append(stack.order(phone("1")))
            time.sleep(0.15)
        for cstm, _order_no in placed_during:
            assert stack.final(cstm)["status"] == "2"
        cstm, order_no = stack.order(phone("1"))
        assert stack.final(cstm)["status"] == "2"
        assert [t["protocol"] for t in stack.upstream(order_no)] == ["reloadly"]
        assert stack.service.proc.pid == pid

        stack.service.config_path.write_text("enabled = [", encoding="utf-8")
        refused = stack.service.cli("reload", check=False)
        assert refused.returncode != 0 and "invalid configuration" in refused.stderr
        # A reload requested from elsewhere while the file is broken: the instance refuses too.
        stack.service.sql("UPDATE control SET value = value + 1 WHERE name = 'config_generation'")
        stack.service.wait_for_log("configuration reload refused", timeout=20)
        cstm, order_no = stack.order(phone("1"))
        assert stack.final(cstm)["status"] == "2"
        assert [t["protocol"] for t in stack.upstream(order_no)] == ["reloadly"]
    finally:
        stack.service.config_path.write_text(original, encoding="utf-8")
        restored = re.search(r"generation (\d+)", stack.service.cli("reload").stdout)
        assert restored, "topup reload names no generation"
        # The next test starts once every process of the service runs the original again.
        processes = 2 if stack.service.backend.name == "postgres" else 1
        stack.service.wait_for_log(f"(generation {restored[1]})", count=processes, timeout=20)
