"""The README's pictures of the console: ``make screenshots``.

Starts the supplier simulator and a service on a throwaway SQLite database, places a
morning's worth of orders through the partner API (most succeed, two fail, one never
settles and goes to manual review), signs in as an operator in headless chromium and saves
``docs/images/console-overview.png`` and ``docs/images/console-order.png``, 1280 wide.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

from tests.browser import VIEWPORT, launch
from tests.support import (
    OPERATOR_PASSWORD,
    REPO,
    Partner,
    ServiceProcess,
    eventually,
    fresh_order_no,
)
from tests.test_conformance import CREDENTIALS
from topup.testing import running_simulator

IMAGES = REPO / "docs" / "images"

# The simulator decides by the last digit: 4 fails, 6 never settles; anything else succeeds.
ORDERS = [
    ("中国移动", "YD50", "13812345671"),
    ("中国移动", "YD10", "13912345682"),
    ("中国联通", "LT10", "13012345673"),
    ("中国移动", "YD10", "13512345694"),
    ("中国移动", "YD100", "13712345618"),
    ("中国联通", "LT10", "18612345679"),
    ("中国移动", "YD50", "15012345620"),
    ("中国移动", "YD10", "15912345636"),
    ("中国联通", "LT50", "13112345641"),
    ("中国移动", "YD10", "18812345654"),
    ("中国移动", "YD50", "13612345662"),
    ("中国联通", "LT10", "15612345673"),
]
MOBILE = [("YD10", "移动10元", 10), ("YD50", "移动50元", 50), ("YD100", "移动100元", 100)]
UNICOM = [("LT10", "联通10元", 10), ("LT50", "联通50元", 50)]
# The order the order-page picture shows: a success, with its callback and notification.
SHOWN = "13812345671"


def config(simulator: str, service: str) -> str:
    return f"""
enabled = ["juhe", "reloadly"]

[dispatch]
query_delays = [1.0, 1.0]
max_queries = 2
call_timeout = 2
lease_seconds = 5
scan_interval = 0.1

[plugin.juhe]
base_url = "{simulator}"
timeout = 2.0

[plugin.reloadly]
base_url = "{simulator}"
auth_url = "{simulator}"
operators = {{ "中国移动" = 11, "中国联通" = 12 }}
timeout = 2.0

[suppliers."中国移动"]
route = [{{ plugin = "juhe", weight = 3 }}, {{ plugin = "reloadly", weight = 1 }}]
{products("中国移动", MOBILE)}
[suppliers."中国联通"]
route = ["reloadly", "juhe"]
{products("中国联通", UNICOM)}
"""


def products(carrier: str, items: list[tuple[str, str, int]]) -> str:
    """Price to partners 0.5% under face value; juhe and reloadly each a little under that."""
    tables = []
    for product_id, name, face in items:
        price, juhe, reloadly = (
            Decimal(face) * Decimal(rate) for rate in ("0.995", "0.991", "0.992")
        )
        tables.append(
            f'[[suppliers."{carrier}".products]]\n'
            f'product_id = "{product_id}"\nname = "{name}"\nface_value = "{face}"\n'
            f'price = "{price:.2f}"\n'
            f'cost = {{ juhe = "{juhe:.2f}", reloadly = "{reloadly:.2f}" }}\n'
        )
    return "\n".join(tables)


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="topup-screenshots-") as folder:
        workdir = Path(folder)
        service = ServiceProcess(workdir, "", env=CREDENTIALS)
        common = ["--settle", "0.5", "--callback-interval", "0.5"]
        hooks = [
            f"--juhe-callback={service.url}/callback/juhe",
            f"--reloadly-webhook={service.url}/callback/reloadly",
        ]
        with (
            running_simulator(*common, *hooks, env=CREDENTIALS) as simulator,
            partner_server() as notify_url,
        ):
            service.config_path.write_text(config(simulator, service.url), encoding="utf-8")
            service.start()
            try:
                order_no = place_orders(service, notify_url)
                photograph(service, order_no)
            finally:
                service.stop()


@contextmanager
def partner_server() -> Iterator[str]:
    """The partner's notify endpoint: answers every notification ``success``."""

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"success")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/topup/notify"
    finally:
        server.shutdown()


def place_orders(service: ServiceProcess, notify_url: str) -> str:
    """The morning's orders, settled (or in review) and notified; the orderNo to show."""
    app = ["app", "set", "caishenghuo", "--notify-url", notify_url, "--allow-private"]
    secret = service.cli_many(
        [
            ["app", "add", "caishenghuo", "--company", "彩生活物业", "--sign-type", "hmac-sha256"],
            ["app", "credit", "caishenghuo", "5000", "--reason", "预付款 2024-06 第一笔"],
            [*app, "--reason", "合作方提供的回调地址"],
            ["operator", "add", "wangfang", "--role", "operator", "--password-stdin"],
        ],
        input=OPERATOR_PASSWORD + "\n",
    ).splitlines()[0]
    partner = Partner(service.url, "caishenghuo", secret.strip(), "彩生活物业")
    shown = ""
    try:
        for carrier, product, phone in ORDERS:
            reply = partner.order(fresh_order_no("CSH"), phone, Supplier=carrier, productId=product)
            assert reply["code"] == "0", reply
            if phone == SHOWN:
                shown = reply["data"]["orderNo"]
    finally:
        partner.close()
    # Every order final, but the one that never settles, which waits in review; and the
    # partner told of each final one.
    waiting = (
        "SELECT (SELECT count(*) FROM orders WHERE state NOT IN ('succeeded', 'failed', 'review'))"
        " + (SELECT count(*) FROM notifications WHERE delivered_at IS NULL)"
    )
    eventually(lambda: service.sql(waiting) == [(0,)], 60, interval=0.2, what="orders settled")
    return shown


def photograph(service: ServiceProcess, order_no: str) -> None:
    with sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page(viewport=VIEWPORT, locale="zh-CN")
        page.goto(f"{service.url}/console/login")
        page.get_by_label("用户名").fill("wangfang")
        page.get_by_label("密码").fill(OPERATOR_PASSWORD)
        with page.expect_navigation():
            page.get_by_role("button", name="登录").click()
        save(page, f"{service.url}/console", "console-overview.png")
        save(page, f"{service.url}/console/orders/{order_no}", "console-order.png")
        browser.close()


def save(page: Page, url: str, name: str) -> None:
    reply = page.goto(url)
    assert reply is not None and reply.ok, f"{url}: {reply and reply.status}"
    page.wait_for_load_state("networkidle")
    page.screenshot(path=IMAGES / name, full_page=True)
    print(f"saved {IMAGES / name}")


if __name__ == "__main__":
    main()
