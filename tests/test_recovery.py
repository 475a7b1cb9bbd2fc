"""Recovery in seconds, through real processes: the orders a worker held when it was
killed are taken over once its heartbeat stops, long before their leases end; a live
worker keeps its order however slow its supplier is, even with another process looking."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import new_partner
from tests.fake_suppliers import read_journal
from tests.support import PRODUCTS, eventually, fresh_order_no
from tests.test_lifecycle import calls

PLUGINS_ENV = {"TOPUP_PLUGINS": "tests.fake_suppliers"}
# The promise: an order in flight at a kill -9 is final this soon after the restart.
RECOVERY_SECONDS = 15.0
SLOW_SECONDS = 3.0


def config(journal: Path, script: dict[str, str], heartbeat: str = "") -> str:
    script_toml = ", ".join(f'"{phone}" = "{what}"' for phone, what in script.items())
    return f"""
enabled = ["scripted"]

[dispatch]
query_delays = [0.2, 0.4, 0.8]
call_timeout = 30
# Far beyond each test: only a heartbeat can explain a takeover within it.
lease_seconds = 120
scan_interval = 0.1
{heartbeat}

[plugin.scripted]
journal = "{journal}"
script = {{ {script_toml} }}
slow_seconds = {SLOW_SECONDS}

[suppliers."中国移动"]
route = ["scripted"]
{PRODUCTS}
"""


def test_orders_in_flight_at_a_kill_9_are_final_within_seconds_of_the_restart(
    services, tmp_path: Path
) -> None:
    journal = tmp_path / "journal.jsonl"
    phones = [f"1380000{n:04d}" for n in range(6)]
    # Default heartbeat settings (1 s, taken over after 5 s), as `make run` runs.
    service = services(config(journal, dict.fromkeys(phones, "hang")), env=PLUGINS_ENV)
    partner = new_partner(service)
    orders = {fresh_order_no(): phone for phone in phones}
    numbers = {
        cstm: partner.order(cstm, phone=phone)["data"]["orderNo"] for cstm, phone in orders.items()
    }
    eventually(lambda: all(calls(str(journal), "submit", no) for no in numbers.values()))
    crashed = {call["pid"] for call in read_journal(str(journal))}

    service.kill9()
    restarted = time.monotonic()
    service.start()

    for cstm in numbers:
        remaining = restarted + RECOVERY_SECONDS - time.monotonic()
        assert partner.wait_status(cstm, {"2", "3"}, timeout=remaining)["data"]["status"] == "2"
    for order_no in numbers.values():
        [submit] = calls(str(journal), "submit", order_no)  # never sent again
        queries = calls(str(journal), "query", order_no)
        assert queries and {q["reference"] for q in queries} == {submit["reference"]}
        assert not {q["pid"] for q in queries} & crashed


def test_a_slow_supplier_call_keeps_its_order_while_another_process_looks(
    services, tmp_path: Path
) -> None:
    journal = tmp_path / "journal.jsonl"
    phones = [f"1390000{n:04d}" for n in range(4)]
    # Each submit lasts well beyond the takeover time: a worker judged by the age of its
    # lease, or whose heartbeat waited for its calls, would be taken over by the other
    # process, which would query the order mid-submit.
    heartbeat = "heartbeat_seconds = 0.3\ntakeover_seconds = 1.2"
    settings = config(journal, dict.fromkeys(phones, "slow"), heartbeat)
    first = services(settings, env=PLUGINS_ENV)
    second = services(settings, env=PLUGINS_ENV, database_url=first.database_url)
    partner = new_partner(first)
    numbers = {}
    for n, phone in enumerate(phones):
        cstm = fresh_order_no()
        partner.http.base_url = (first, second)[n % 2].url
        numbers[cstm] = partner.order(cstm, phone=phone)["data"]["orderNo"]

    for cstm in numbers:
        assert partner.wait_status(cstm, {"2", "3"}, timeout=20)["data"]["status"] == "2"
    for order_no in numbers.values():
        [submit] = calls(str(journal), "submit", order_no)
        answered = submit["at"] + SLOW_SECONDS
        queries = calls(str(journal), "query", order_no)
        assert queries, order_no
        # Nobody asked about the order while its submit was under way.
        assert min(q["at"] for q in queries) >= answered - 0.05, (submit, queries)
    for service in (first, second):
        assert "took over the leases" not in service.log()
