"""``topup.exchange``: what a transport failure says about an order, against a real socket.

A request that provably never left is not sent (the core may try the next supplier); one
that may have arrived is unknown (only a status query can tell); an HTTP answer, 5xx
included, goes back to the plugin to read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

import topup
from topup.testing import free_port

ANSWER_500 = (
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n"
    b'content-length: 17\r\nconnection: close\r\n\r\n{"error_code": 1}'
)


class Upstream:
    """A TCP server that reads each HTTP request and then does what ``behaviour`` says:
    ``hold`` (never answer), ``drop`` (close the connection) or ``fail`` (answer 500)."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.requests = 0
        self.received = asyncio.Event()
        self._release = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        self.requests += 1
        self.received.set()
        if self.behaviour == "hold":
            await self._release.wait()
        elif self.behaviour == "fail":
            writer.write(ANSWER_500)
            await writer.drain()
        writer.close()

    def release(self) -> None:
        self._release.set()


@asynccontextmanager
async def upstream(behaviour: str) -> AsyncIterator[tuple[Upstream, str]]:
    server_state = Upstream(behaviour)
    server = await asyncio.start_server(server_state.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield server_state, f"http://127.0.0.1:{port}"
    finally:
        server_state.release()
        server.close()
        await server.wait_closed()


async def test_a_refused_connection_is_not_sent() -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{free_port()}") as client:
        result = await topup.exchange(client, "POST", "/topup", plugin="acme", json={})
    assert isinstance(result, topup.SupplierResult)
    assert (result.outcome, result.code, result.failover) == (
        topup.Outcome.FAILED,
        "NOT_SENT",
        True,
    )
    assert result.message == "acme unreachable: ConnectError"


async def test_no_free_connection_is_not_sent_and_nothing_reaches_the_supplier() -> None:
    timeout = httpx.Timeout(5.0, pool=0.2)
    limits = httpx.Limits(max_connections=1)
    async with (
        upstream("hold") as (server, url),
        httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client,
    ):
        first = asyncio.create_task(topup.exchange(client, "GET", "/first", plugin="acme"))
        await server.received.wait()  # the one connection is busy with the first request
        second = await topup.exchange(client, "GET", "/second", plugin="acme")
        assert isinstance(second, topup.SupplierResult)
        assert (second.code, second.failover) == ("NOT_SENT", True), second
        assert second.message == "acme unreachable: PoolTimeout"
        assert server.requests == 1
        server.release()
        await first


@pytest.mark.parametrize(
    ("behaviour", "error"), [("hold", "ReadTimeout"), ("drop", "RemoteProtocolError")]
)
async def test_a_request_that_may_have_arrived_is_unknown(behaviour: str, error: str) -> None:
    async with (
        upstream(behaviour) as (server, url),
        httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(0.3)) as client,
    ):
        result = await topup.exchange(client, "GET", "/topup/TC1", plugin="acme")
        assert server.requests == 1
    assert isinstance(result, topup.SupplierResult)
    assert (result.outcome, result.code, result.failover) == (
        topup.Outcome.UNKNOWN,
        "TRANSPORT",
        False,
    )
    assert result.message.startswith(f"{error}: ")


async def test_a_5xx_is_handed_back_to_be_read() -> None:
    async with (
        upstream("fail") as (_server, url),
        httpx.AsyncClient(base_url=url) as client,
    ):
        response = await topup.exchange(client, "POST", "/topup", plugin="acme", json={})
    assert isinstance(response, httpx.Response)
    assert response.status_code == 500 and response.json() == {"error_code": 1}
    said = topup.unknown_answer(response, "no answer we can rely on")
    assert (said.outcome, said.code, said.message) == (
        topup.Outcome.UNKNOWN,
        "HTTP_500",
        "no answer we can rely on",
    )
