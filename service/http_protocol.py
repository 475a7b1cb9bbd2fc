"""uvicorn's httptools protocol, plus a deadline for receiving each request and one write
for each response.

uvicorn bounds only the idle time between two requests on a kept-alive connection
(``timeout_keep_alive``). A client that connects and sends nothing, half a header, or
headers and part of a body is kept waiting for forever, so a few hundred such clients
hold a few hundred sockets (slowloris). This protocol closes a connection whose request
is not complete ``request_timeout`` seconds after its first byte arrived (after the
connection opened, for the first request), answering 408 with the partner envelope when
no response has begun. A complete request is never cut: its handler's time is not
counted, so a slow database or supplier does not matter here.

It also sends each response in one write (``CoalescedWrites``), where uvicorn writes
the status line and headers, then the body, each with its own send().

Cost on the hot path: one timer per connection (armed when it opens, cancelled when
its first request is complete); a request arriving whole in one read adds no timer;
one arriving in pieces adds one. One write per response costs one callback per
response, at the end of the loop's turn. It relies on uvicorn internals (the parser
callbacks and ``RequestResponseCycle`` attributes), so pyproject pins uvicorn's minor
version and ``tests/test_slow_clients.py`` checks them by name.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from typing import Any

import msgspec
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from core.errors import ErrorCode
from service.partner_api import refusal
from service.settings import read_request_timeout

log = logging.getLogger("topup.api")

# The uvicorn methods this class extends; checked at import so that an upgrade which
# renames one fails at start instead of silently leaving slow clients unbounded.
EXTENDED_METHODS = (
    "connection_made",
    "connection_lost",
    "data_received",
    "on_message_begin",
    "on_message_complete",
)
_missing = [
    name for name in EXTENDED_METHODS if not callable(getattr(HttpToolsProtocol, name, None))
]
if _missing:  # pragma: no cover - only with an untested uvicorn
    raise ImportError(f"uvicorn's HttpToolsProtocol has no {', '.join(_missing)}")


@functools.cache
def request_timeout() -> float:
    """Seconds, read once per process (``topup serve`` passes it to workers this way)."""
    return read_request_timeout(os.environ)


@functools.cache
def timeout_body(seconds: float) -> bytes:
    message = f"请求超时: {seconds:g} 秒内未收到完整的请求, 连接已关闭"
    return msgspec.json.encode(refusal({}, ErrorCode.REQUEST_TIMEOUT, message))


def timeout_response(seconds: float, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """408 with the envelope; ``default_headers`` are uvicorn's (date, server)."""
    body = timeout_body(seconds)
    head = [STATUS_LINE[408]]
    head += [name + b": " + value + b"\r\n" for name, value in default_headers]
    head += [
        b"content-type: application/json; charset=utf-8\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        b"connection: close\r\n\r\n",
    ]
    return b"".join(head) + body


class RequestDeadlineProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes connections whose request does not arrive in time,
    and sends each response in one write."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request_timeout = request_timeout()
        self._deadline: asyncio.TimerHandle | None = None
        # A request has begun (its first byte was parsed) and is not complete yet.
        self._receiving = False
        # The cycle of the request before the one being received, to tell whether a
        # 408 may be written without cutting into that request's response.
        self._previous_cycle: RequestResponseCycle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Set before any request's cycle is made: each cycle writes to the protocol's.
        self.transport = CoalescedWrites(transport, self.loop)  # type: ignore[assignment]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Bytes that began a request but did not finish it, or bytes that are no request
        # at all (blank lines after a response, which also stop uvicorn's keep-alive timer).
        if self._deadline is None and (self._receiving or self._idle()):
            self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._receiving = True
        self._previous_cycle = self.cycle

    def on_message_complete(self) -> None:
        self._receiving = False
        self._disarm()
        super().on_message_complete()

    def _idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if not self.transport.is_closing():
            self._deadline = self.loop.call_later(self.request_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._receiving and self._may_answer():
            # The handler of a request whose body stopped coming sees a disconnect and
            # cannot write after this answer.
            if self.cycle is not self._previous_cycle:
                self.cycle.disconnected = True
            headers = self.server_state.default_headers
            self.transport.write(timeout_response(self.request_timeout, headers))
        log.debug("closed a connection from %s: no complete request in time", self.client)
        self.transport.close()

    def _may_answer(self) -> bool:
        """True when no response is under way on this connection, so a 408 is the next one."""
        previous = self._previous_cycle
        if previous is not None and not previous.response_complete:
            return False  # a pipelined request behind one still being answered
        current = self.cycle if self.cycle is not previous else None
        return current is None or not current.response_started


class CoalescedWrites:
    """A transport whose writes made in one turn of the event loop leave as one write.

    uvicorn writes a response's head and its body with two ``transport.write`` calls:
    two send()s, two TCP segments, and two wake-ups of the client. Here they are held
    until the turn ends (a handler sends both without yielding to the loop in between)
    and go out joined, in one segment. Most of the gain is in the waiting, not the
    joining: under load the responses of one turn leave together, after its handlers,
    and the clients' next requests arrive together. At the bench's load a status query
    costs the server 154 µs of CPU instead of 210, an order's acceptance 151 instead of
    171; sending head and body joined the moment the body is written saves little (204,
    157). The price is latency: a response waits for the rest of its turn's handlers,
    which added about 9 ms to acceptance's p99 at 1,750 orders/s (bench/LOG.md).
    Everything but writing and closing is the wrapped transport's; closing sends what
    is held first.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)

    def flush(self) -> None:
        if not self._held:
            return
        held = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held = []
        if not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        # An upgrade (websocket) hands the connection over: what is held goes first.
        self.flush()
        self._transport.set_protocol(protocol)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
