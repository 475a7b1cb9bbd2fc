"""Several instances on one PostgreSQL: shared work, duplicate orders across instances,
and an instance killed mid-run. Every acknowledged order reaches exactly one final
state, none is paid twice, and the books agree."""

from __future__ import annotations

import itertools
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from core.clock import BEIJING
from tests.conftest import new_partner
from tests.support import Partner, ServiceProcess, eventually, postgres_or_reason
from tests.test_conformance import CREDENTIALS
from topup.testing import running_simulator

ORDERS = 2000
SHARED = 100  # cstmOrderNos sent to several instances at once


def config(simulator: str) -> str:
    return f"""
enabled = ["juhe"]

[dispatch]
query_delays = [0.3, 0.5, 1.0]
# Room for a simulator slowed by a busy machine (CI runs this beside the rest of the
# suite): a query that times out counts as one, and 12 were once not enough.
max_queries = 40
call_timeout = 5
# juhe refuses a reused orderid: an attempt the killed instance recorded but never sent
# is sent again once its "no such order" comes this long after call_timeout.
resend_margin = 1
lease_seconds = 6
scan_interval = 0.1

[plugin.juhe]
base_url = "{simulator}"
# A simulator starved past this drops the request unread (its client is gone), which is
# an unanswered send like any other: room for the rest of the suite running beside it.
timeout = 4.0

[suppliers."中国移动"]
route = ["juhe"]
products = [
  {{ product_id = "YD10", face_value = "10", price = "9.95", cost = {{ juhe = "9.97" }} }},
]
"""


@pytest.fixture
def postgres():
    found = postgres_or_reason()
    if isinstance(found, str):
        pytest.skip(found)
    return found


@pytest.mark.slow
def test_three_instances_one_killed_mid_run(tmp_path: Path, postgres) -> None:
    database_url = postgres.new_database(tmp_path)
    instances: list[ServiceProcess] = []
    try:
        with running_simulator(
            "--settle", "0.2", "--callback-interval", "0.2", env=CREDENTIALS
        ) as simulator:
            for n in range(3):
                workdir = tmp_path / f"instance{n}"
                workdir.mkdir()
                instances.append(
                    ServiceProcess(
                        workdir,
                        config(simulator),
                        env=CREDENTIALS,
                        backend=postgres,
                        database_url=database_url,
                    ).start()
                )
            partner = new_partner(instances[0], funds="30000")
            acknowledged = fire(partner, instances)
            settle_everything(instances[1], len(acknowledged), simulator)
            check_outcomes(instances[1], partner, acknowledged, simulator)
            for survivor in instances[:2]:
                # A callback settling an order a worker holds is routine, not an error.
                assert "no open attempt" not in survivor.log()
    finally:
        for instance in instances:
            instance.stop()
        postgres.drop(database_url)


def fire(partner: Partner, instances: list[ServiceProcess]) -> dict[str, str]:
    """2,000 orders round-robin, some sent to several instances at once; kills one instance
    after a third of them. Returns cstmOrderNo -> orderNo for every acknowledged order."""
    token = partner.token()
    acknowledged: dict[str, set[str]] = {}
    refused: list[dict] = []  # by an instance still alive: e.g. a deadlock as a 503
    lock = threading.Lock()
    victim = instances[2]
    sent = itertools.count()
    # A client per sending thread, as a partner's would be: building one costs more CPU
    # than the order it sends (its TLS context), and the test shares the cores.
    clients = threading.local()
    opened: list[httpx.Client] = []

    def send(cstm: str, phone: str, instance: ServiceProcess) -> None:
        params = partner.signed(partner.order_params(cstm, phone=phone, access_token=token))
        if not hasattr(clients, "http"):
            clients.http = httpx.Client(timeout=30)
            opened.append(clients.http)
        try:
            reply = clients.http.post(f"{instance.url}/sign/api/order", data=params).json()
        except (httpx.TransportError, ValueError):
            return  # the killed instance; the partner would retry elsewhere
        with lock:
            if reply["code"] == "0":
                acknowledged.setdefault(cstm, set()).add(reply["data"]["orderNo"])
            elif instance is not victim:
                refused.append(reply)
        if next(sent) == ORDERS // 3 and victim.proc is not None:
            victim.kill9()

    jobs = []
    for i in range(ORDERS):
        cstm = f"so-{time.time_ns()}-{i}"
        phone = f"1390000{i:04d}"[:10] + random.choice("1111111114")
        targets = instances if i < SHARED else [instances[i % 3]]
        jobs += [(cstm, phone, target) for target in targets]
    random.shuffle(jobs)
    with ThreadPoolExecutor(max_workers=24) as pool:
        list(pool.map(lambda job: send(*job), jobs))
    for client in opened:
        client.close()
    assert not refused, refused[:3]
    duplicates = {cstm: numbers for cstm, numbers in acknowledged.items() if len(numbers) > 1}
    assert not duplicates, f"one cstmOrderNo, several orders: {list(duplicates.items())[:3]}"
    assert len(acknowledged) > ORDERS // 2
    return {cstm: numbers.pop() for cstm, numbers in acknowledged.items()}


def settle_everything(survivor: ServiceProcess, expected: int, simulator: str) -> None:
    """Wait until every order is final. An attempt the killed instance recorded but never
    sent is sent again, once, with the same reference (juhe refuses a reused one, so its
    "no such order" proves the first never arrived); only an order whose resend went
    unanswered as well needs an operator."""
    open_states = ("accepted", "submitting", "pending", "unknown", "retrying")

    def none_open() -> bool:
        by_state = survivor.sql("SELECT state, count(*) FROM orders GROUP BY state")
        assert not any(state in open_states for state, _count in by_state), by_state
        return True

    eventually(none_open, 120, interval=0.5, what="every order final or in review")
    in_review = survivor.sql(
        "SELECT o.order_no, a.reference, a.state, a.code, a.queries, a.resent FROM orders o"
        " JOIN attempts a ON a.order_no = o.order_no WHERE o.state = 'review'"
    )
    held = simulator_transactions(simulator)
    for order_no, reference, _state, _code, _queries, resent in in_review:
        # The only order an operator may see: its one resend went unanswered as well, so
        # the supplier never got it twice (a starved simulator drops a request whose
        # client gave up before it was read). The operator fails it on the supplier's word.
        assert resent and reference not in held, review_story(survivor, in_review, held)
        survivor.cli(
            "orders", "review", order_no, "--resolve", "failed", "--reason", "供应商查无此单"
        )
    [(stored,)] = survivor.sql("SELECT count(*) FROM orders")
    assert stored >= expected
    assert survivor.sql(
        "SELECT count(*) FROM orders WHERE state NOT IN ('succeeded', 'failed')"
    ) == [(0,)]


def simulator_transactions(simulator: str) -> dict[str, dict]:
    """What the supplier holds, by our reference."""
    return {
        tx["reference"]: tx for tx in httpx.get(f"{simulator}/_sim/transactions", timeout=10).json()
    }


def review_story(survivor: ServiceProcess, in_review: list[tuple], held: dict) -> str:
    """What happened to each order in review: its attempt, its timeline, and what the
    simulator holds for its reference."""
    lines = []
    for order_no, reference, *attempt in in_review:
        lines.append(f"{order_no} {reference} attempt={attempt} simulator={held.get(reference)}")
        for row in survivor.sql(
            "SELECT at, kind, detail FROM order_events WHERE order_no = ? ORDER BY id", order_no
        ):
            lines.append(f"    {row}")
    return "\n".join(lines)


def check_outcomes(
    survivor: ServiceProcess, partner: Partner, acknowledged: dict[str, str], simulator: str
) -> None:
    stored = {
        cstm: (no, state, price)
        for cstm, no, state, price in survivor.sql(
            "SELECT cstm_order_no, order_no, state, price FROM orders"
        )
    }
    for cstm, order_no in acknowledged.items():
        assert stored[cstm][0] == order_no, f"{cstm}: acknowledged order not stored"
    paid: dict[str, int] = {}
    for transaction in httpx.get(f"{simulator}/_sim/transactions", timeout=10).json():
        # Taken over after the crash by querying, never by sending the attempt again.
        assert transaction["submits"] == 1, transaction
        order_no = transaction["reference"].rsplit("A", 1)[0]
        paid[order_no] = paid.get(order_no, 0) + transaction["paid"]
    for _cstm, (order_no, state, _price) in stored.items():
        assert paid.get(order_no, 0) <= 1, f"{order_no} paid {paid[order_no]} times"
        assert paid.get(order_no, 0) == (1 if state == "succeeded" else 0), (order_no, state)
    # The books: what succeeded was captured, nothing is held, the ledger adds up.
    captured = sum(price for _no, state, price in stored.values() if state == "succeeded")
    [(account_captured, held)] = survivor.sql(
        "SELECT captured, held FROM accounts WHERE app_id = ?", partner.app_id
    )
    assert (account_captured, held) == (captured, 0)
    assert "ledger:       consistent" in survivor.cli("app", "show", partner.app_id).stdout
    # Order numbers from three instances carry the moment each order was accepted, which
    # is the order's stored creation time: the day in a number is its statement's day.
    for order_no, created_at in survivor.sql("SELECT order_no, created_at FROM orders"):
        assert number_time(order_no) == created_at, (order_no, created_at)


def number_time(order_no: str) -> int:
    """Unix milliseconds from an order number's ``TP`` + Beijing time prefix."""
    stamp = datetime.strptime(order_no[2:16], "%Y%m%d%H%M%S").replace(tzinfo=BEIJING)
    return int(stamp.timestamp()) * 1000 + int(order_no[16:19])
