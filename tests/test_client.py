"""topup.client, the Python library for partners, against a real ``topup serve``."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import httpx
import msgspec
import pytest

from tests.conftest import new_partner
from tests.support import Partner, Service, ServiceProcess, eventually, fresh_order_no
from tests.support import sandbox_config as sandbox
from topup.client import (
    AsyncTopupClient,
    InvalidNotification,
    Notification,
    OrderMayExist,
    OrderState,
    OrderStillPending,
    Retries,
    TopupClient,
    TopupRefused,
    TopupUnavailable,
    verify_notification,
)

MOBILE = "中国移动"
# Retries that wait a few milliseconds: the tests lose answers on purpose.
QUICK = Retries(attempts=4, first_delay=0.02, max_delay=0.05)


def client_for(partner: Partner, url: str | None = None, **options) -> TopupClient:
    return TopupClient(
        url or partner.base_url,
        app_id=partner.app_id,
        secret=partner.secret,
        company=partner.company,
        sign_type=partner.sign_type,
        **options,
    )


def async_client_for(partner: Partner, url: str | None = None, **options) -> AsyncTopupClient:
    return AsyncTopupClient(
        url or partner.base_url,
        app_id=partner.app_id,
        secret=partner.secret,
        company=partner.company,
        sign_type=partner.sign_type,
        **options,
    )


def order(client: TopupClient, cstm_order_no: str, phone_no: str = "13800138000", **extra: str):
    fields = {
        "supplier": MOBILE,
        "phone_no": phone_no,
        "product_id": "YD10",
        "cstm_order_no": cstm_order_no,
        "cstm_order_name": "物业缴费",
    }
    return client.place_order(**(fields | extra))


def orders_of(service: Service, app_id: str) -> list[tuple]:
    return service.sql("SELECT order_no, cstm_order_no FROM orders WHERE app_id = ?", app_id)


class Recording(httpx.HTTPTransport):
    """httpx's transport, noting each request's path, and each answer's status, time and
    Retry-After."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int, float, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        retry_after = response.headers.get("retry-after", "")
        self.calls.append((request.url.path, response.status_code, time.monotonic(), retry_after))
        return response

    def count(self, path: str) -> int:
        return sum(1 for called, *_answer in self.calls if called == path)


class AsyncRecording(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return await super().handle_async_request(request)


class FakeClock:
    """The client's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- calls -------------------------------------------------------------------------------------


def test_an_order_succeeds_and_the_account_shows_it(service: Service) -> None:
    partner = new_partner(service, funds="100")
    with client_for(partner) as topup:
        accepted = order(topup, "c-1")
        assert accepted.status is OrderState.ACCEPTED and accepted.cstm_order_no == "c-1"
        # Taken from what is available at once: held while the order is in flight, or
        # already captured if the sandbox finished it before this call.
        at_acceptance = topup.balance()
        assert at_acceptance.available == Decimal("90.05")
        assert at_acceptance.held in (Decimal("9.95"), Decimal("0.00"))

        final = topup.wait_for_final("c-1", supplier=MOBILE, first_poll=0.1)
        assert final.status is OrderState.SUCCEEDED and final.status_desc == "充值成功"
        assert final.order_no == accepted.order_no and final.order_id == accepted.order_id
        assert (final.phone_no, final.product_id) == ("13800138000", "YD10")
        assert (final.face_value, final.price, final.fund_status) == (
            Decimal("10.00"),
            Decimal("9.95"),
            "captured",
        )
        assert final.finish_time and final.fail_reason == ""
        queried = topup.status("c-1", supplier=MOBILE, order_no=accepted.order_no)
        assert queried == final

        balance = topup.balance()
        assert (balance.balance, balance.held) == (Decimal("90.05"), Decimal("0.00"))
        assert balance.available == balance.balance + balance.credit_limit


def test_products(service: Service, partner: Partner) -> None:
    with client_for(partner) as topup:
        listed = topup.products(supplier=MOBILE)
        with pytest.raises(ValueError, match="exactly one"):
            topup.products()
        with pytest.raises(ValueError, match="exactly one"):
            topup.products(supplier=MOBILE, phone_no="13800138000")
    assert (listed.supplier, listed.carrier_source) == (MOBILE, None)
    assert [(p.product_id, p.product_name, p.face_value, p.price) for p in listed.products] == [
        ("YD10", "移动10元", Decimal("10.00"), Decimal("9.95")),
        ("YD50", "移动50元", Decimal("50.00"), Decimal("49.75")),
    ]


def test_products_for_a_phone_number(service: Service, partner: Partner) -> None:
    with client_for(partner) as topup:
        listed = topup.products(phone_no="13800138000")
    assert (listed.supplier, listed.carrier_source) == (MOBILE, "segment")
    assert [p.product_id for p in listed.products] == ["YD10", "YD50"]


def test_a_legacy_md5_partner(service: Service) -> None:
    partner = new_partner(service, sign_type="md5")
    with client_for(partner) as topup:
        accepted = order(topup, "md5-1", product_id="YD50")
        final = topup.wait_for_final("md5-1", supplier=MOBILE, first_poll=0.1)
    assert final.order_no == accepted.order_no and final.status is OrderState.SUCCEEDED


def test_refusals_raise_with_their_error_code(service: Service, partner: Partner) -> None:
    cstm = fresh_order_no()
    with client_for(partner) as topup:
        order(topup, cstm)
        with pytest.raises(TopupRefused) as conflict:
            order(topup, cstm, phone_no="13900139000")
        with pytest.raises(TopupRefused) as unknown:
            order(topup, fresh_order_no(), product_id="YD999")
        with pytest.raises(TopupRefused) as missing:
            topup.status(fresh_order_no(), supplier=MOBILE)
    assert (conflict.value.error_code, conflict.value.http_status) == ("ORDER_CONFLICT", 200)
    assert cstm in conflict.value.message and "原订单未改变" in conflict.value.message
    assert unknown.value.error_code == "UNKNOWN_PRODUCT"
    assert missing.value.error_code == "ORDER_NOT_FOUND"
    assert [cstm] == [c for _no, c in orders_of(service, partner.app_id) if c == cstm]

    wrong = Partner(partner.base_url, partner.app_id, "not-the-secret-at-all", partner.company)
    with client_for(wrong) as topup, pytest.raises(TopupRefused) as refused:
        topup.balance()
    assert refused.value.error_code == "BAD_SIGNATURE" and refused.value.http_status == 200


def test_wait_for_final_gives_up_at_its_deadline(service: Service, partner: Partner) -> None:
    cstm = fresh_order_no()
    with client_for(partner) as topup:
        order(topup, cstm, phone_no="13800138007")  # the sandbox settles it only later
        with pytest.raises(OrderStillPending) as pending:
            topup.wait_for_final(cstm, supplier=MOBILE, timeout=0)
        assert not pending.value.last.final and pending.value.last.cstm_order_no == cstm
        assert topup.wait_for_final(cstm, supplier=MOBILE, first_poll=0.1).final


async def test_the_async_client_orders_and_waits(service: Service) -> None:
    partner = new_partner(service)
    async with async_client_for(partner) as topup:
        ok, ko = fresh_order_no("ok"), fresh_order_no("ko")
        for cstm, phone in ((ok, "13800138000"), (ko, "13800138004")):
            await topup.place_order(
                supplier=MOBILE,
                phone_no=phone,
                product_id="YD10",
                cstm_order_no=cstm,
                cstm_order_name="物业缴费",
            )
        succeeded, failed = await asyncio.gather(
            topup.wait_for_final(ok, supplier=MOBILE, first_poll=0.1),
            topup.wait_for_final(ko, supplier=MOBILE, first_poll=0.1),
        )
        assert succeeded.status is OrderState.SUCCEEDED
        assert failed.status is OrderState.FAILED and failed.fail_reason
        assert failed.fund_status == "released"
        assert [p.product_id for p in (await topup.products(MOBILE)).products] == ["YD10", "YD50"]
        assert (await topup.balance()).held == Decimal("0.00")


# -- the access token --------------------------------------------------------------------------


def test_the_token_is_refreshed_before_it_expires(service: Service, partner: Partner) -> None:
    clock, transport = FakeClock(), Recording()
    with client_for(partner, clock=clock, transport=transport, token_margin=300) as topup:
        topup.balance()
        clock.now += 3600
        topup.balance()
        assert transport.count("/sign/api/token") == 1, "the token was still good for an hour"
        clock.now += 7200 - 3600 - 299  # under 300 s left by the client's reckoning
        topup.balance()
        assert transport.count("/sign/api/token") == 2
        assert transport.count("/sign/api/balance") == 3


def test_concurrent_calls_share_one_token_fetch(service: Service, partner: Partner) -> None:
    transport = Recording()
    with client_for(partner, transport=transport) as topup, ThreadPoolExecutor(8) as pool:
        balances = list(pool.map(lambda _: topup.balance(), range(16)))
    assert len(balances) == 16 and transport.count("/sign/api/token") == 1


async def test_concurrent_tasks_share_one_token_fetch(service: Service, partner: Partner) -> None:
    clock, transport = FakeClock(), AsyncRecording()
    async with async_client_for(partner, transport=transport, clock=clock) as topup:
        await asyncio.gather(*(topup.balance() for _ in range(16)))
        clock.now += 7200
        await asyncio.gather(*(topup.balance() for _ in range(16)))
    assert transport.paths.count("/sign/api/token") == 2
    assert transport.paths.count("/sign/api/balance") == 32


@pytest.fixture
def own_service(tmp_path: Path) -> Iterator:
    """Starts a service of the test's own, on SQLite: the client behaviours these tests
    check do not depend on the storage, so they are not run twice."""
    started: list[ServiceProcess] = []

    def start(config: str, env: dict[str, str] | None = None) -> ServiceProcess:
        started.append(ServiceProcess(tmp_path, config, env=env).start())
        return started[-1]

    yield start
    for service in started:
        service.stop()


def test_a_token_the_service_no_longer_takes_is_fetched_again(own_service) -> None:
    service = own_service(sandbox(), env={"TOPUP_TOKEN_SECRET": "first-token-key"})
    partner = new_partner(service)
    transport = Recording()
    with client_for(partner, transport=transport, retries=QUICK) as topup:
        topup.balance()
        service.stop()  # changing the token key ends every token (README, Tokens)
        service.env["TOPUP_TOKEN_SECRET"] = "second-token-key"
        service.start()
        assert topup.balance().balance == Decimal("100000.00")
    balance_answers = [call for call in transport.calls if call[0] == "/sign/api/balance"]
    assert transport.count("/sign/api/token") == 2 and len(balance_answers) == 3


def test_rate_limited_calls_wait_for_retry_after(own_service) -> None:
    limits = "[limits]\napp_rate = 1\napp_burst = 1\n"
    service = own_service(sandbox(extra=limits))
    partner = new_partner(service)
    transport = Recording()
    with client_for(partner, transport=transport, retries=QUICK) as topup:
        topup.balance()  # the token took the only request the app had
    [(token, _s, _t, _r), (first, refused, refused_at, retry_after), (retry, answered, at, _r)] = (
        transport.calls
    )
    assert (token, first, retry) == ("/sign/api/token", "/sign/api/balance", "/sign/api/balance")
    assert (refused, answered) == (429, 200)
    assert at - refused_at >= float(retry_after) >= 1, "sent again before Retry-After"


def test_a_retry_after_beyond_the_patience_fails_at_once(own_service) -> None:
    service = own_service(sandbox(extra="[limits]\napp_rate = 0.01\napp_burst = 1\n"))
    partner = new_partner(service)
    transport = Recording()
    with (
        client_for(partner, transport=transport, retries=Retries(max_retry_after=60)) as topup,
        pytest.raises(TopupUnavailable) as unavailable,
    ):
        topup.balance()  # the token took the only request the app had for 100 s
    assert (unavailable.value.error_code, unavailable.value.http_status) == ("RATE_LIMITED", 429)
    assert "Retry-After" in str(unavailable.value)
    assert [status for _path, status, *_ in transport.calls] == [200, 429]


# -- lost answers ------------------------------------------------------------------------------


class LossyHop:
    """A TCP hop in front of the service that loses the answers to the first ``lose`` order
    requests: it forwards such a request, reads the service's whole answer, keeps it, and
    closes the client's connection instead of relaying it. Everything else passes."""

    def __init__(self, upstream: str, lose: int = 1) -> None:
        self.upstream_port = int(upstream.rsplit(":", 1)[1])
        self.lose = lose
        self.orders = 0
        self.lost: list[dict] = []
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        started.wait(5)
        self.url = f"http://127.0.0.1:{self.port}"

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._relay, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        started.set()
        self._loop.run_forever()

    async def _relay(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter):
        service, to_service = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            while request := await read_message(client):
                to_service.write(request)
                await to_service.drain()
                answer = await read_message(service)
                if request.startswith(b"POST /sign/api/order "):
                    self.orders += 1
                    if self.lose > 0:
                        self.lose -= 1
                        self.lost.append(msgspec.json.decode(answer.split(b"\r\n\r\n", 1)[1]))
                        return  # the order is on the service's disk; its answer is lost
                to_client.write(answer)
                await to_client.drain()
        finally:
            to_client.close()
            to_service.close()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _shutdown(self) -> None:
        self._server.close()
        relays = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in relays:
            task.cancel()
        await asyncio.gather(*relays, return_exceptions=True)


async def read_message(stream: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 message (headers and a Content-Length or chunked body), or b"" at EOF."""
    try:
        head = await stream.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
    }
    if headers.get(b"transfer-encoding") == b"chunked":
        body = b""
        while True:
            size_line = await stream.readuntil(b"\r\n")
            chunk = await stream.readexactly(int(size_line.split(b";")[0], 16) + 2)
            body += size_line + chunk
            if size_line.startswith(b"0"):
                return head + body
    return head + await stream.readexactly(int(headers.get(b"content-length", b"0")))


@pytest.fixture
def lossy(service: Service) -> Iterator[LossyHop]:
    hop = LossyHop(service.url)
    yield hop
    hop.close()


def test_a_lost_answer_is_retried_and_makes_one_order(service: Service, lossy: LossyHop) -> None:
    partner = new_partner(service)
    with client_for(partner, lossy.url, retries=QUICK) as topup:
        accepted = order(topup, "lost-1")
    [lost] = lossy.lost
    assert lossy.orders == 2, "the order was not sent again"
    assert accepted.order_no == lost["data"]["orderNo"], "the retry made a new order"
    assert orders_of(service, partner.app_id) == [(accepted.order_no, "lost-1")]


async def test_the_async_client_retries_a_lost_answer_too(
    service: Service, lossy: LossyHop
) -> None:
    partner = new_partner(service)
    async with async_client_for(partner, lossy.url, retries=QUICK) as topup:
        accepted = await topup.place_order(
            supplier=MOBILE,
            phone_no="13800138000",
            product_id="YD10",
            cstm_order_no="lost-2",
            cstm_order_name="物业缴费",
        )
        assert (await topup.status("lost-2", supplier=MOBILE)).order_no == accepted.order_no
    assert lossy.orders == 2 and accepted.order_no == lossy.lost[0]["data"]["orderNo"]
    # (PostgreSQL is read with asyncio.run: outside this test's event loop.)
    in_storage = await asyncio.to_thread(orders_of, service, partner.app_id)
    assert in_storage == [(accepted.order_no, "lost-2")]


def test_out_of_retries_the_order_may_exist_and_a_repeat_returns_it(
    service: Service, lossy: LossyHop
) -> None:
    partner = new_partner(service)
    lossy.lose = 99
    with (
        client_for(partner, lossy.url, retries=QUICK) as topup,
        pytest.raises(OrderMayExist) as may_exist,
    ):
        order(topup, "lost-3")
    assert may_exist.value.cstm_order_no == "lost-3"
    assert "may have been placed" in str(may_exist.value) and "same cstm_order_no" in str(
        may_exist.value
    )
    assert lossy.orders == QUICK.attempts
    assert len({answer["data"]["orderNo"] for answer in lossy.lost}) == 1
    with client_for(partner) as topup:
        again = order(topup, "lost-3")
    assert again.order_no == lossy.lost[0]["data"]["orderNo"]
    assert orders_of(service, partner.app_id) == [(again.order_no, "lost-3")]


def test_an_unreachable_service_is_unavailable(partner: Partner) -> None:
    with (
        nobody_listening() as url,
        client_for(partner, url, retries=QUICK) as topup,
        pytest.raises(TopupUnavailable) as unavailable,
    ):
        order(topup, "nowhere-1")
    # Not even a token could be had, so the order was never sent: it cannot exist.
    assert not isinstance(unavailable.value, OrderMayExist)
    assert "/sign/api/token" in str(unavailable.value) and "ConnectError" in str(unavailable.value)
    assert isinstance(unavailable.value.__cause__, httpx.ConnectError)


@contextmanager
def nobody_listening() -> Iterator[str]:
    """A local address that refuses connections: bound, never listening."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{bound.getsockname()[1]}"


# -- notifications -----------------------------------------------------------------------------


class VerifyingReceiver:
    """A partner's notify URL that checks each notification with verify_notification and
    answers ``success`` only to those that check out; keeps the raw bodies."""

    def __init__(self, secret: str, sign_type: str) -> None:
        self.bodies: list[bytes] = []
        self.verified: list[Notification] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                receiver.bodies.append(body)
                try:
                    receiver.verified.append(verify_notification(body, secret, sign_type))
                except InvalidNotification:
                    self._answer(400, b"bad sign")
                else:
                    self._answer(200, b"success")

            def _answer(self, status: int, reply: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/topup/notify"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_a_real_notification_verifies_and_a_tampered_one_does_not(service: Service) -> None:
    partner = new_partner(service)
    receiver = VerifyingReceiver(partner.secret, partner.sign_type)
    try:
        service.cli("app", "set", partner.app_id, "--notify-url", receiver.url, "--allow-private")
        with client_for(partner) as topup:
            accepted = order(topup, "notified-1")
        notification = eventually(lambda: receiver.verified, 20, what="a notification")[0]
    finally:
        receiver.close()
    assert notification.order_no == accepted.order_no and notification.cstm_order_no == (
        "notified-1"
    )
    assert notification.status is OrderState.SUCCEEDED and notification.final
    assert (notification.app_id, notification.company, notification.supplier) == (
        partner.app_id,
        partner.company,
        MOBILE,
    )
    assert notification.price == Decimal("9.95") and notification.ts > 0

    body = receiver.bodies[0]
    fields = dict(parse_qsl(body.decode(), keep_blank_values=True))
    # The same notification from a framework's parsed form, and with the secret among others.
    assert verify_notification(fields, partner.secret, partner.sign_type) == notification
    assert verify_notification(body, ["an-older-secret", partner.secret], partner.sign_type)
    with pytest.raises(InvalidNotification, match="older than"):
        verify_notification(body, partner.secret, partner.sign_type, max_age=-1)
    for tampered in (
        {**fields, "status": "3"},
        {**fields, "phoneNo": "13900139000"},
        {**fields, "extra": "signed too"},
    ):
        with pytest.raises(InvalidNotification, match="does not match"):
            verify_notification(urlencode(tampered), partner.secret, partner.sign_type)
    with pytest.raises(InvalidNotification, match="does not match"):
        verify_notification(body, "somebody-elses-secret", partner.sign_type)
    with pytest.raises(InvalidNotification, match="no sign"):
        verify_notification({k: v for k, v in fields.items() if k != "sign"}, partner.secret)
    with pytest.raises(InvalidNotification, match="not form data"):
        verify_notification(b"\xff\xfe", partner.secret)
