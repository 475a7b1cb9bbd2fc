"""GET /metrics of real `topup serve` processes after real orders.

On PostgreSQL `topup serve` runs the HTTP process and a background process: the
outcomes and supplier calls are counted in the latter, so seeing them at /metrics of
the former is the multiprocess path at work.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import new_partner
from tests.support import (
    FAST_DISPATCH,
    PRODUCTS,
    REPO,
    SQLITE,
    ServiceProcess,
    eventually,
    fresh_order_no,
    sandbox_config,
)
from topup.testing import free_port

CARRIER = "中国移动"
Samples = list[tuple[str, dict[str, str], float]]


def scrape(base_url: str, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    reply = httpx.get(f"{base_url}/metrics", headers=headers, timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    ]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        value
        for sample, have, value in samples
        if sample == name and all(have.get(k) == v for k, v in labels.items())
    )


def scrape_until(
    base_url: str, done: Callable[[Samples], bool], token: str | None = None, within: float = 15
) -> Samples:
    """Scrape until ``done``: an outcome is counted just after it is committed, so a
    status query can see the order final a moment before its counter moves."""
    last: list[Samples] = []

    def scraped() -> Samples | None:
        last[:] = [scrape(base_url, token)]
        return last[0] if done(last[0]) else None

    try:
        return eventually(scraped, within, interval=0.1)
    except AssertionError:
        return last[0]  # the caller's assertions say what is missing


def test_metrics_count_real_orders_by_carrier_plugin_route_and_supplier_call(services):
    service = services(sandbox_config())
    partner = new_partner(service)
    phones = {"13800138000": "2", "13800138004": "3", "13800138007": "2"}
    numbers = {phone: fresh_order_no("m") for phone in phones}
    for phone, cstm in numbers.items():
        assert partner.order(cstm, phone=phone)["code"] == "0"
    for phone, cstm in numbers.items():
        assert partner.wait_status(cstm, {"2", "3"})["data"]["status"] == phones[phone]
    # A path nobody routes: counted, but under one label, never as the raw path.
    assert partner.http.get("/sign/api/order/no-such-thing-4711").status_code == 404

    def orders(samples: Samples, state: str) -> float:
        return total(samples, "topup_orders_total", state=state, carrier=CARRIER, plugin="sandbox")

    latency = "topup_supplier_call_duration_seconds"

    def submits_timed(samples: Samples) -> float:
        return total(samples, f"{latency}_count", plugin="sandbox", call="submit")

    # With several processes a scrape reads the counters' file and the histograms' one after
    # the other (prometheus_client's multiprocess mode): a flush of the background process
    # may land between the two, so the wait covers both.
    samples = scrape_until(
        service.url,
        lambda s: (
            orders(s, "succeeded") == 2 and orders(s, "failed") == 1 and submits_timed(s) == 3
        ),
    )
    assert orders(samples, "accepted") == 3
    assert orders(samples, "succeeded") == 2
    assert orders(samples, "failed") == 1
    assert orders(samples, "review") == 0

    calls = "topup_supplier_calls_total"
    assert total(samples, calls, plugin="sandbox", call="submit", outcome="succeeded") == 1
    assert total(samples, calls, call="submit", outcome="failed", code="SANDBOX_DECLINED") == 1
    assert total(samples, calls, call="submit", outcome="unknown", code="TIMEOUT") == 1
    assert total(samples, calls, plugin="sandbox", call="query", outcome="succeeded") >= 1
    assert submits_timed(samples) == 3
    # The "7" submit hangs for timeout_after = 0.3 s before it gives up: the histogram
    # holds real call times (the event loop's timers may fire a hair early).
    assert total(samples, f"{latency}_sum", call="submit", outcome="unknown") >= 0.25
    assert total(samples, f"{latency}_bucket", call="submit", outcome="unknown", le="0.1") == 0
    assert total(samples, f"{latency}_bucket", call="submit", outcome="unknown", le="+Inf") == 1

    route = "/sign/api/order"
    assert total(samples, "topup_http_requests_total", route=route, method="POST") == 3
    assert total(samples, "topup_http_requests_total", route=route, status="200") == 3
    duration = "topup_http_request_duration_seconds"
    assert total(samples, f"{duration}_count", route=route) == 3
    assert total(samples, f"{duration}_bucket", route=route, le="+Inf") == 3
    assert 0 < total(samples, f"{duration}_sum", route=route) < 30
    assert total(samples, "topup_http_requests_total", route="unmatched", status="404") >= 1
    label_values = {value for _, labels, _ in samples for value in labels.values()}
    assert not [value for value in label_values if "no-such-thing" in value]

    assert total(samples, "topup_group_commit_batch_size_count") > 0
    assert total(samples, "topup_group_commit_duration_seconds_count") > 0
    assert ("topup_circuit_open", {"plugin": "sandbox"}, 0.0) in samples
    assert total(samples, "topup_database_up") == 1
    assert total(samples, "topup_review_orders") == 0
    assert total(samples, "topup_notifications_pending") == 0

    # Every series the Grafana dashboard plots is one this service exposes.
    dashboard = json.loads((REPO / "deploy" / "grafana-topup.json").read_text(encoding="utf-8"))
    plotted = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in re.findall(r"topup_[a-z_]+", target["expr"])
    }
    assert plotted and plotted <= {name for name, _, _ in samples}


def test_metrics_show_a_circuit_opening_and_the_plugin_failed_over_to(services, tmp_path: Path):
    """The scripted plugin refuses (failover allowed) the number below; after two
    refusals its circuit opens, and the orders succeed with the backup plugin."""
    journal = tmp_path / "journal.jsonl"
    config = f"""
enabled = ["scripted", "backup"]
{FAST_DISPATCH}breaker_threshold = 2
breaker_cooldown = 600
[plugin.scripted]
journal = "{journal}"
script = {{ "13800000001" = "reject" }}
[plugin.backup]
journal = "{journal}"
[suppliers."{CARRIER}"]
route = ["scripted", "backup"]
{PRODUCTS}
"""
    service = services(config, env={"TOPUP_PLUGINS": "tests.fake_suppliers"})
    partner = new_partner(service)
    numbers = [fresh_order_no("c") for _ in range(2)]
    for cstm in numbers:
        assert partner.order(cstm, phone="13800000001")["code"] == "0"
    for cstm in numbers:
        assert partner.wait_status(cstm, {"2", "3"})["data"]["status"] == "2"

    def opened(samples: Samples) -> bool:
        return (
            total(samples, "topup_circuit_open", plugin="scripted") == 1
            and total(samples, "topup_orders_total", state="succeeded") == 2
        )

    samples = scrape_until(service.url, opened)
    assert total(samples, "topup_circuit_open", plugin="scripted") == 1
    assert total(samples, "topup_circuit_openings_total", plugin="scripted") == 1
    assert total(samples, "topup_circuit_open", plugin="backup") == 0
    refused = dict(plugin="scripted", call="submit", outcome="failed", code="NO_BALANCE")
    assert total(samples, "topup_supplier_calls_total", **refused) == 2
    # Accepted by the plugin the route tries first; succeeded by the one that did it.
    assert total(samples, "topup_orders_total", state="accepted", plugin="scripted") == 2
    assert total(samples, "topup_orders_total", state="succeeded", plugin="backup") == 2
    assert total(samples, "topup_orders_total", state="failed") == 0


REVIEW_CONFIG = f"""
enabled = ["sandbox"]
[dispatch]
query_delays = [0.2]
max_queries = 1
call_timeout = 2
lease_seconds = 3
scan_interval = 0.1
[notify]
schedule = [60]
scan_interval = 0.1
[plugin.sandbox]
timeout_after = 0.3
settle_seconds = 3600
[suppliers."{CARRIER}"]
route = ["sandbox"]
{PRODUCTS}
"""


def test_metrics_show_the_review_queue_and_the_notification_backlog_behind_a_token(services):
    """The sandbox settles nothing within the hour (only a "7" order, whose submit timed
    out, is answered by its query): one status query later the other goes to review."""
    token = "metrics-token-for-the-test"
    service = services(REVIEW_CONFIG, env={"TOPUP_METRICS_TOKEN": token})
    partner = new_partner(service)
    # Nothing listens there: the notification fails and waits for its retry in 60 s.
    dead_end = f"http://127.0.0.1:{free_port()}/notify"
    service.cli("app", "set", partner.app_id, "--notify-url", dead_end, "--allow-private")
    in_review, notified = fresh_order_no("r"), fresh_order_no("n")
    assert partner.order(in_review, phone="13800138000")["code"] == "0"
    assert partner.order(notified, phone="13800138007")["code"] == "0"
    assert partner.wait_status(notified, {"2"})
    order_no = partner.status(in_review)["data"]["orderNo"]
    service.wait_for_state(order_no, "review")

    assert httpx.get(f"{service.url}/metrics").status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert httpx.get(f"{service.url}/metrics", headers=wrong).status_code == 401

    def settled(samples: Samples) -> bool:
        counted = total(samples, "topup_orders_total", state="review", carrier=CARRIER)
        return counted == 1 and total(samples, "topup_notifications_pending") == 1

    samples = scrape_until(service.url, settled, token=token)
    assert total(samples, "topup_orders_total", state="review", plugin="sandbox") == 1
    assert total(samples, "topup_orders_total", state="succeeded", plugin="sandbox") == 1
    assert total(samples, "topup_review_orders") == 1
    assert total(samples, "topup_review_oldest_age_seconds") > 0
    assert total(samples, "topup_notifications_pending") == 1
    assert total(samples, "topup_notifications_due") == 0  # its retry is a minute away
    assert total(samples, "topup_supplier_calls_total", call="query", outcome="pending") == 1


def test_metrics_of_several_http_workers_add_up_and_their_directory_goes_with_them(
    tmp_path: Path,
):
    """--workers 2: two HTTP processes (SQLite: each with its own dispatcher) share one
    metrics directory that `topup serve` made, and removes when it stops."""
    service = ServiceProcess(tmp_path, sandbox_config(), serve_args=("--workers", "2"))
    service.start()
    try:
        partner = new_partner(service)
        numbers = [fresh_order_no("w") for _ in range(6)]
        for cstm in numbers:
            assert partner.order(cstm)["code"] == "0"
        for cstm in numbers:
            partner.wait_status(cstm, {"2"})

        def counted(samples: Samples) -> tuple[float, float, float]:
            return (
                total(samples, "topup_orders_total", state="accepted", plugin="sandbox"),
                total(samples, "topup_orders_total", state="succeeded", plugin="sandbox"),
                total(samples, "topup_http_requests_total", route="/sign/api/order", method="POST"),
            )

        # The worker not scraped hands its HTTP counts over within a second (FLUSH_SECONDS).
        samples = scrape_until(service.url, lambda s: counted(s) == (6, 6, 6))
        assert counted(samples) == (6, 6, 6)
        directories = _metrics_directories(service)
        assert len(directories) == 1 and directories[0].is_dir()
        assert list(directories[0].glob("*.db"))
    finally:
        service.stop()
    assert not directories[0].exists()


def _metrics_directories(service: ServiceProcess) -> list[Path]:
    """PROMETHEUS_MULTIPROC_DIR as the service's worker processes see it."""
    assert service.proc is not None
    children = subprocess.run(
        ["pgrep", "-P", str(service.proc.pid)], capture_output=True, text=True
    ).stdout
    found = set()
    for pid in children.split():
        for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
                found.add(Path(entry.split(b"=", 1)[1].decode()))
    return sorted(found)


def test_metrics_can_be_turned_off(tmp_path: Path):
    service = ServiceProcess(tmp_path, sandbox_config(), env={"TOPUP_METRICS": "0"}, backend=SQLITE)
    service.start()
    try:
        partner = new_partner(service)
        cstm = fresh_order_no("off")
        assert partner.order(cstm)["code"] == "0"
        assert partner.wait_status(cstm, {"2"})
        assert httpx.get(f"{service.url}/metrics").status_code == 404
        assert httpx.get(f"{service.url}/readyz").status_code == 200
    finally:
        service.stop()
