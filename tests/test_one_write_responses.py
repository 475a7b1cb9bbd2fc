"""Each response leaves the server in one write (service/http_protocol.py, CoalescedWrites).

uvicorn writes a response's head and body separately; topup's protocol joins them, so a
client gets each response in one TCP segment. Observed from the client's side of a real
connection to ``topup serve``: Linux counts the segments that carried data (TCP_INFO).
"""

from __future__ import annotations

import json
import socket
import struct

import pytest

from tests.support import ServiceProcess

# struct tcp_info (linux/tcp.h): tcpi_data_segs_in, the segments received that carried data.
DATA_SEGMENTS_IN_OFFSET = 152
TCP_INFO_SIZE = 256

pytestmark = pytest.mark.skipif(
    not hasattr(socket, "TCP_INFO"), reason="segment counts come from Linux's TCP_INFO"
)

REQUESTS = {
    "a partner call's envelope": b"GET /sign/api/order/status HTTP/1.1\r\nHost: topup\r\n\r\n",
    "a partner order refused": (
        b"POST /sign/api/order HTTP/1.1\r\nHost: topup\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\nappID=x"
    ),
    "a Litestar route": b"GET /healthz HTTP/1.1\r\nHost: topup\r\n\r\n",
}


def data_segments_in(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
    return struct.unpack_from("I", info, DATA_SEGMENTS_IN_OFFSET)[0]


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[bytes, bytes]:
    """One response's head and body, read by its content-length; the rest stays in buffer."""
    while b"\r\n\r\n" not in buffer:
        buffer += receive(sock)
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        rest += receive(sock)
    buffer[:] = rest[length:]
    return head, rest[:length]


def receive(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    assert chunk, "the server closed the connection before the response was complete"
    return chunk


@pytest.mark.parametrize("request_bytes", REQUESTS.values(), ids=REQUESTS.keys())
def test_each_response_arrives_in_one_segment(
    sqlite_service: ServiceProcess, request_bytes: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", sqlite_service.port), timeout=20) as sock:
        buffer = bytearray()
        for _ in range(3):  # on one kept-alive connection, each response alike
            before = data_segments_in(sock)
            sock.sendall(request_bytes)
            head, body = read_response(sock, buffer)
            assert head.startswith(b"HTTP/1.1 200"), head
            assert body
            assert data_segments_in(sock) - before == 1


def test_a_response_followed_by_close_is_sent_whole_first(
    sqlite_service: ServiceProcess,
) -> None:
    request = b"GET /sign/api/order/status HTTP/1.1\r\nHost: topup\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", sqlite_service.port), timeout=20) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    refusal = json.loads(body)
    assert refusal["code"] == "1"
    assert refusal["errorCode"] == "MISSING_PARAMETER"


def test_pipelined_requests_are_answered_in_order(sqlite_service: ServiceProcess) -> None:
    first = b"GET /healthz HTTP/1.1\r\nHost: topup\r\n\r\n"
    second = b"GET /sign/api/order/status HTTP/1.1\r\nHost: topup\r\n\r\n"
    with socket.create_connection(("127.0.0.1", sqlite_service.port), timeout=20) as sock:
        sock.sendall(first + second)
        buffer = bytearray()
        _head, health = read_response(sock, buffer)
        _head, envelope = read_response(sock, buffer)
    assert "code" not in json.loads(health)
    assert json.loads(envelope)["errorCode"] == "MISSING_PARAMETER"


def test_a_client_that_expects_100_continue_gets_it_before_sending_its_body(
    sqlite_service: ServiceProcess,
) -> None:
    """ "100 Continue" is a write with nothing after it in its turn: it must still leave
    (curl sends Expect: 100-continue with bodies over 1 KiB and waits for it)."""
    body = b"appID=x"
    head = (
        b"POST /sign/api/order HTTP/1.1\r\nHost: topup\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    with socket.create_connection(("127.0.0.1", sqlite_service.port), timeout=20) as sock:
        sock.sendall(head)
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += receive(sock)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), interim
        sock.sendall(body)
        buffer = bytearray(interim.removeprefix(b"HTTP/1.1 100 Continue\r\n\r\n"))
        _head, envelope = read_response(sock, buffer)
    assert json.loads(envelope)["errorCode"] == "MISSING_PARAMETER"
