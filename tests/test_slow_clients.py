"""Slow clients: a connection that does not deliver a complete request in time is closed.

Through a real ``topup serve`` with a short request timeout (README: Slow clients). The
timeout is a property of the HTTP server, not of the storage, so SQLite is enough.
"""

from __future__ import annotations

import http.client
import inspect
import json
import os
import resource
import selectors
import socket
import subprocess
import time
from collections.abc import Iterator
from urllib.parse import urlencode

import httpx
import pytest
import uvicorn
from uvicorn.protocols.http import httptools_impl

from service import http_protocol
from tests.conftest import new_partner
from tests.support import TOPUP, Partner, ServiceProcess, fresh_order_no, sandbox_config
from topup.testing import free_port

# Long enough for a partner call made while the slow clients wait, short enough for a
# quick test.
TIMEOUT = 2
# How long the test waits for the server to act: generous, for a loaded machine.
WITHIN = 20.0
SLOW_CLIENTS = 500
HALF_HEADER = b"POST /sign/api/order HTTP/1.1\r\nHost: topup\r\nContent-"


@pytest.fixture(scope="module")
def strict_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    allow_open_files(SLOW_CLIENTS + 200)  # inherited by the service
    proc = ServiceProcess(
        tmp_path_factory.mktemp("slow-clients"),
        sandbox_config(),
        # The option wins over the environment.
        env={"TOPUP_REQUEST_TIMEOUT": "300"},
        serve_args=("--request-timeout", str(TIMEOUT)),
    )
    proc.start()
    yield proc
    proc.stop()
    proc.drop_database()


@pytest.fixture(scope="module")
def partner(strict_service: ServiceProcess) -> Iterator[Partner]:
    """A partner app on this module's service (instead of conftest's shared one)."""
    client = new_partner(strict_service)
    client.token()
    yield client
    client.close()


def allow_open_files(count: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < count:
        wanted = count if hard == resource.RLIM_INFINITY else min(count, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def connect(service: ServiceProcess, first_bytes: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=WITHIN)
    if first_bytes:
        sock.sendall(first_bytes)
    return sock


def wait_until_closed(socks: list[socket.socket]) -> list[bytes]:
    """What the server sent on each socket before closing it; fails if it does not close
    them all within WITHIN seconds."""
    received = {sock: b"" for sock in socks}
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + WITHIN
        while selector.get_map():
            still_open = len(selector.get_map())
            assert time.monotonic() < deadline, f"{still_open} of {len(socks)} still open"
            for key, _events in selector.select(timeout=0.5):
                data = read_some(key.fileobj)
                received[key.fileobj] += data
                if not data:
                    selector.unregister(key.fileobj)
    for sock in socks:
        sock.close()
    return [received[sock] for sock in socks]


def read_some(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def assert_request_timeout(reply: bytes) -> None:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), reply
    envelope = json.loads(body)
    assert envelope["code"] == "1" and envelope["errorCode"] == "REQUEST_TIMEOUT", envelope
    assert f"{TIMEOUT} 秒" in envelope["message"], envelope


def order_request(body: str, content_length: int | None = None) -> tuple[bytes, bytes]:
    raw = body.encode()
    head = (
        "POST /sign/api/order HTTP/1.1\r\nHost: topup\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {content_length or len(raw)}\r\n\r\n"
    )
    return head.encode(), raw


def test_half_sent_requests_are_closed_while_partners_are_served(
    strict_service: ServiceProcess, partner: Partner
) -> None:
    slow = [connect(strict_service, HALF_HEADER) for _ in range(SLOW_CLIENTS)]
    silent = [connect(strict_service, b"") for _ in range(20)]
    # While they wait (for up to TIMEOUT seconds), a partner's order goes through.
    reply = partner.order(fresh_order_no("busy"))
    assert reply["code"] == "0", reply

    replies = wait_until_closed(slow + silent)
    for reply_bytes in replies[:SLOW_CLIENTS]:
        assert_request_timeout(reply_bytes)
    # A connection that never began a request is closed without an answer.
    assert replies[SLOW_CLIENTS:] == [b""] * len(silent)
    assert partner.order(fresh_order_no("after"))["code"] == "0"


def test_a_body_that_stops_coming_is_cut_off_and_nothing_is_accepted(
    strict_service: ServiceProcess, partner: Partner
) -> None:
    cstm_order_no = fresh_order_no("stalled")
    body = urlencode(partner.signed(partner.order_params(cstm_order_no)))
    # Every parameter, signed, but 10 bytes short of the announced length.
    head, raw = order_request(body, content_length=len(body) + 10)
    [reply] = wait_until_closed([connect(strict_service, head + raw)])
    assert_request_timeout(reply)

    # The cut-off request left no order: the same cstmOrderNo with another phone is a
    # new order, not an ORDER_CONFLICT.
    again = partner.order(cstm_order_no, phone="13900139000")
    assert again["code"] == "0", again
    status = partner.status(cstm_order_no)
    assert status["data"]["phoneNo"] == "13900139000", status


def test_a_body_cut_short_by_the_client_leaves_no_order(
    strict_service: ServiceProcess, partner: Partner
) -> None:
    cstm_order_no = fresh_order_no("gone")
    body = urlencode(partner.signed(partner.order_params(cstm_order_no)))
    head, raw = order_request(body, content_length=len(body) + 10)
    sock = connect(strict_service, head + raw)
    sock.shutdown(socket.SHUT_WR)  # the client leaves before its body is complete
    wait_until_closed([sock])

    again = partner.order(cstm_order_no, phone="13900139000")
    assert again["code"] == "0", again


def test_a_supplier_callback_whose_body_stops_coming_is_cut_off_quietly(
    strict_service: ServiceProcess,
) -> None:
    log_before = len(strict_service.log())
    head = (
        b"POST /callback/sandbox HTTP/1.1\r\nHost: topup\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
    )
    [reply] = wait_until_closed([connect(strict_service, head + b"orderNo=1")])
    assert_request_timeout(reply)
    # Served after the cut-off callback's handler has run: a client that left is no error.
    assert httpx.get(f"{strict_service.url}/healthz").status_code == 200
    assert "Traceback" not in strict_service.log()[log_before:]


def test_a_keep_alive_client_with_pauses_shorter_than_the_timeout_is_not_cut(
    strict_service: ServiceProcess, partner: Partner
) -> None:
    sock = connect(strict_service, b"")
    try:
        pause = TIMEOUT / 5
        started = time.monotonic()
        for number in range(3):
            body = urlencode(partner.signed(partner.order_params(fresh_order_no(f"ka{number}"))))
            head, raw = order_request(body)
            # Headers, a pause, then the body: slow, but each request in time.
            sock.sendall(head)
            time.sleep(pause)
            sock.sendall(raw)
            response = http.client.HTTPResponse(sock)
            response.begin()
            reply = json.loads(response.read())
            assert response.status == 200 and reply["code"] == "0", reply
            assert response.getheader("connection") != "close"
            time.sleep(pause)
        # All on one connection, which lived longer than one request timeout.
        assert time.monotonic() - started > TIMEOUT
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("option", "environment", "complaint"),
    [
        (["--request-timeout", "0"], "", "Invalid value for '--request-timeout'"),
        ([], "-1", "TOPUP_REQUEST_TIMEOUT='-1'"),
    ],
)
def test_serve_refuses_a_request_timeout_that_is_not_positive_seconds(
    option: list[str], environment: str, complaint: str
) -> None:
    env = {**os.environ, "TOPUP_REQUEST_TIMEOUT": environment}
    # A timeout on the command too: a serve that accepted the value would run on.
    result = subprocess.run(
        [TOPUP, "serve", "--port", str(free_port()), *option],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert complaint in result.stderr, result.stderr


def test_the_uvicorn_internals_the_deadline_extends_are_still_there() -> None:
    """service/http_protocol.py extends uvicorn's httptools protocol. If this fails after
    an upgrade of uvicorn, review that module against the new uvicorn before raising
    the pin in pyproject.toml."""
    assert uvicorn.__version__.startswith("0.54."), uvicorn.__version__
    protocol = httptools_impl.HttpToolsProtocol
    for method in http_protocol.EXTENDED_METHODS:
        assert callable(getattr(protocol, method, None)), method
    protocol_source = inspect.getsource(protocol)
    for attribute in ("self.cycle", "self.transport", "self.loop", "self.server_state"):
        assert f"{attribute} =" in protocol_source, attribute
    cycle_source = inspect.getsource(httptools_impl.RequestResponseCycle)
    for attribute in ("response_started", "response_complete", "disconnected"):
        assert f"self.{attribute} =" in cycle_source, attribute
    # connection_lost wakes a handler waiting for the body with a disconnect.
    assert "message_event.set()" in inspect.getsource(protocol.connection_lost)
    assert httptools_impl.STATUS_LINE[408].startswith(b"HTTP/1.1 408")
