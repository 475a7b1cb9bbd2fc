"""Conformance tests for supplier plugins, and the pieces to run them.

Every built-in plugin passes these; run them against your own plugin too::

    from topup.testing import SupplierConformance

    class TestAcme(SupplierConformance):
        @pytest.fixture
        def upstream(self): ...   # an Upstream (below) for your supplier's test system

        @pytest.fixture
        async def supplier(self, upstream): ...   # your Supplier, pointed at it

They need pytest and pytest-asyncio. ``SimulatorUpstream`` drives ``topup simulate``,
which speaks the built-in protocols and the tutorial's acme protocol; for another
protocol, implement ``Upstream`` over your supplier's sandbox or a fake of it.

Besides what a plugin reports for each outcome, they check what costs money when it is
wrong: an unknown or "system busy" answer read as a refusal that allows failover, a
callback read as success whatever it says, a failover from a query or a callback, a
query answered with anything but unknown while the supplier is unreachable, an amount
sent in the wrong unit or for the wrong product, and a ``query`` not implemented.
tests/mutants/ in the topup repository holds a plugin with each of these mistakes, and
its tests check that every one fails this suite.

For your own tests, ``eventually`` (and ``eventually_async``) waits for a condition that
takes time, such as a callback arriving, and fails with the reason it never held.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, ClassVar, Protocol, TypeVar
from urllib.parse import parse_qsl, urlencode

import httpx
import msgspec
import pytest

from core.suppliers import (
    CallbackRequest,
    Outcome,
    Supplier,
    SupplierResult,
    UpstreamOrder,
)
from topup import _lifeline as lifeline

# How the tests ask for each outcome; an Upstream maps these to its own numbers.
SUCCEED, FAIL, REJECT, NEVER_SETTLE = "succeed", "fail", "reject", "never_settle"
TERMINAL = (Outcome.SUCCEEDED, Outcome.FAILED)


class Received(msgspec.Struct, frozen=True):
    """An order as the upstream understood it."""

    phone_no: str
    face_value: int
    """In fen, whatever unit the protocol uses on the wire."""
    carrier: str | None = None
    """As the partner names it (中国移动...), where the protocol says which carrier;
    None where it does not (the supplier finds it from the number)."""


class Upstream(Protocol):
    """A supplier test system the conformance tests can steer and inspect."""

    def phone(self, outcome: str) -> str:
        """A fresh number the upstream will treat as: succeed, fail, reject or never_settle."""

    def inject(self, phone_no: str, fault: str) -> None:
        """Make ``phone_no`` suffer a fault (the simulator's names). The top-up is made,
        then the submit's answer is lost: ``timeout`` (no answer), ``error_after_topup``
        (a bare HTTP 500), ``garbage`` (not the protocol's format), ``busy`` (the
        supplier's documented "system busy", which does not say whether it took the
        top-up), ``undocumented_error`` (an error code its documentation does not list).
        Callbacks: ``bad_signature_callback`` (signed with the wrong key),
        ``processing_callback`` (a callback saying "still processing" is sent as soon as
        the top-up is accepted)."""

    def submissions(self, reference: str) -> int:
        """How many submits with this reference reached the upstream."""

    def received(self, reference: str) -> Received | None:
        """The order submitted with this reference, as the upstream understood it;
        None if none arrived."""

    def charges(self, reference: str) -> int:
        """How many top-ups the upstream made for this reference (credited phones). Only
        the tests of a plugin that declares ``refuses_reused_reference`` ask."""

    def callbacks(self, reference: str) -> list[CallbackRequest] | None:
        """Callbacks the upstream sent about ``reference`` so far, as received; None if the
        supplier has no callbacks."""


def new_order(phone_no: str, carrier: str = "中国移动", face_value: int = 1000) -> UpstreamOrder:
    reference = f"TC{time.time_ns()}{secrets.randbelow(1000):03d}A1"
    return UpstreamOrder(
        reference=reference,
        order_no=reference[:-2],
        attempt=1,
        phone_no=phone_no,
        carrier=carrier,
        product_id=f"TEST{face_value // 100}",
        face_value=face_value,
        created_at=int(time.time() * 1000),
    )


# -- waiting for something to happen ----------------------------------------------------

T = TypeVar("T")


def eventually(
    check: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> T:
    """Calls ``check`` until it holds and returns what it returned.

    It holds once it returns a truthy value without raising AssertionError; an
    assertion-style check ends with ``return True``. On timeout the test fails with
    ``what``, the last AssertionError or the last value: the reason it never held.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except AssertionError as exc:
            failure: object = exc
        else:
            if result:
                return result
            failure = result
        if time.monotonic() >= deadline:
            raise _never_held(what, timeout, failure)
        time.sleep(interval)


async def eventually_async(
    check: Callable[[], T | Awaitable[T]],
    timeout: float = 10.0,  # noqa: ASYNC109 (the same call shape as eventually)
    interval: float = 0.05,
    what: str = "",
) -> T:
    """``eventually`` inside an event loop: sleeps without blocking it; ``check`` may be a
    coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
        except AssertionError as exc:
            failure: object = exc
        else:
            if result:
                return result  # type: ignore[return-value]
            failure = result
        if time.monotonic() >= deadline:
            raise _never_held(what, timeout, failure)
        await asyncio.sleep(interval)


def _never_held(what: str, timeout: float, failure: object) -> AssertionError:
    """The failure of a check that never held, chained to its last assertion."""
    if isinstance(failure, AssertionError):
        last = f"last assertion: {failure}"
    else:
        last = f"last value: {failure!r}"
    error = AssertionError(f"{what or 'condition'} did not hold within {timeout:g} s; {last}")
    if isinstance(failure, AssertionError):
        error.__cause__ = failure
    return error


async def settle(supplier: Supplier, order: UpstreamOrder, within: float = 15.0) -> SupplierResult:
    """Query until the outcome is final; the final answer (the test fails, showing the
    last answer, if it is not final within ``within`` seconds)."""
    ref = None

    async def final() -> SupplierResult:
        nonlocal ref
        result = await query(supplier, _with_ref(order, ref))
        ref = result.supplier_ref or ref
        assert result.outcome in TERMINAL, f"not final yet: {result}"
        return result

    return await eventually_async(final, timeout=within, what=f"the outcome of {order.reference}")


async def submit(supplier: Supplier, order: UpstreamOrder) -> SupplierResult:
    """``supplier.submit(order)``, failing the test plainly if it is not implemented."""
    return await _call(supplier, "submit", order)


async def query(supplier: Supplier, order: UpstreamOrder) -> SupplierResult:
    """``supplier.query(order)``, failing the test plainly if it is not implemented."""
    return await _call(supplier, "query", order)


async def _call(supplier: Supplier, method: str, order: UpstreamOrder) -> SupplierResult:
    try:
        result = await getattr(supplier, method)(order)
    except NotImplementedError as exc:
        pytest.fail(
            f"{type(supplier).__name__} does not implement {method}"
            f"{f' ({exc})' if str(exc) else ''}. Every plugin must: the core calls submit "
            "once per attempt and query about every order whose outcome is still open; "
            "without query such orders can only end in manual review.",
            pytrace=False,
        )
    assert isinstance(result, SupplierResult), f"{method} returned {result!r}"
    return result


def _with_ref(order: UpstreamOrder, supplier_ref: str | None) -> UpstreamOrder:
    if supplier_ref is None:
        return order
    return UpstreamOrder(**{**_fields(order), "supplier_ref": supplier_ref})


def _fields(order: UpstreamOrder) -> dict:
    return {name: getattr(order, name) for name in order.__struct_fields__}


class SupplierConformance:
    """The contract every supplier plugin keeps. Subclass it; provide the fixtures."""

    pytestmark = pytest.mark.asyncio

    async def _submitted(self, supplier: Supplier, upstream: Upstream, outcome: str, fault=None):
        order = new_order(upstream.phone(outcome))
        if fault:
            upstream.inject(order.phone_no, fault)
        result = await submit(supplier, order)
        return order, _with_ref(order, result.supplier_ref), result

    async def test_query_is_implemented(self, supplier: Supplier, upstream: Upstream) -> None:
        """The core queries every order whose submit went unanswered: a plugin whose
        ``query`` is a stub would leave them all to manual review."""
        await query(supplier, new_order(upstream.phone(SUCCEED)))

    async def test_success_is_reported(self, supplier: Supplier, upstream: Upstream) -> None:
        order, known, submitted = await self._submitted(supplier, upstream, SUCCEED)
        assert submitted.outcome in (Outcome.PENDING, Outcome.SUCCEEDED), submitted
        assert (await settle(supplier, known)).outcome is Outcome.SUCCEEDED
        assert upstream.submissions(order.reference) == 1

    async def test_failure_after_acceptance_is_final_without_failover(
        self, supplier: Supplier, upstream: Upstream
    ) -> None:
        _order, known, submitted = await self._submitted(supplier, upstream, FAIL)
        assert submitted.outcome in (Outcome.PENDING, Outcome.FAILED), submitted
        assert not submitted.failover, f"the supplier had accepted the order: {submitted}"
        final = await settle(supplier, known)
        assert final.outcome is Outcome.FAILED, final
        assert not final.failover, (
            f"a status query reported a failure that allows failover: {final}. Only a "
            "submit's refusal before acceptance proves nothing was delivered"
        )

    async def test_refusal_before_acceptance_allows_failover(
        self, supplier: Supplier, upstream: Upstream
    ) -> None:
        _order, _known, submitted = await self._submitted(supplier, upstream, REJECT)
        assert submitted.outcome is Outcome.FAILED and submitted.failover, submitted
        assert submitted.code, "say which supplier code refused it"

    @pytest.mark.parametrize(
        "fault", ["timeout", "error_after_topup", "garbage", "busy", "undocumented_error"]
    )
    async def test_no_proper_answer_is_unknown_and_a_query_finds_the_truth(
        self, supplier: Supplier, upstream: Upstream, fault: str
    ) -> None:
        """The supplier made the top-up and its answer says nothing certain: a timeout, a
        5xx, something unreadable, "system busy", a code nobody documented. Reading any
        of them as a refusal that allows failover would pay the phone twice."""
        order, known, submitted = await self._submitted(supplier, upstream, SUCCEED, fault)
        assert submitted.outcome is Outcome.UNKNOWN, (
            f"{fault}: {submitted}; the supplier did make this top-up"
        )
        assert (await settle(supplier, known)).outcome is Outcome.SUCCEEDED
        assert upstream.submissions(order.reference) == 1, "the plugin resent on its own"

    @pytest.mark.parametrize("face_value", [1000, 5000])
    async def test_the_order_reaches_the_supplier_as_asked(
        self, supplier: Supplier, upstream: Upstream, face_value: int
    ) -> None:
        """The number, the amount (``face_value`` is in fen: a supplier that counts in
        yuan gets yuan) and, where the protocol names it, the carrier."""
        order = new_order(upstream.phone(SUCCEED), face_value=face_value)
        submitted = await submit(supplier, order)
        assert submitted.outcome in (Outcome.PENDING, Outcome.SUCCEEDED), submitted
        received = upstream.received(order.reference)
        assert received is not None, f"the upstream has no order {order.reference}"
        assert received.face_value == order.face_value, (
            f"the supplier was asked for {received.face_value} fen, the order is for "
            f"{order.face_value} fen ({order.face_value / 100:g} yuan): an amount sent in "
            "the wrong unit, or the wrong product?"
        )
        assert received.phone_no == order.phone_no, received
        assert received.carrier in (None, order.carrier), received

    async def test_a_query_while_the_supplier_is_unreachable_is_unknown(
        self, supplier: Supplier, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Connections refused: ``topup.exchange`` says ``not_sent``, which from a submit
        allows failover. From a query it says nothing about the top-up: unknown."""
        order = _with_ref(new_order(upstream.phone(SUCCEED)), "4242")
        with _connections_refused(monkeypatch) as refused:
            result = await query(supplier, order)
        assert refused, (
            "the query opened no connection, so the suite could not make the supplier "
            "unreachable: give each test a new Supplier (a function-scoped fixture)"
        )
        assert result.outcome is Outcome.UNKNOWN, (
            f"asked while the supplier was unreachable, query answered {result}: a query "
            "that never left says nothing about the order"
        )

    async def test_a_reference_never_sent_is_not_failed(
        self, supplier: Supplier, upstream: Upstream
    ) -> None:
        result = await query(supplier, new_order(upstream.phone(SUCCEED)))
        assert result.outcome in (Outcome.UNKNOWN, Outcome.PENDING), result

    async def test_a_reference_never_sent_is_no_such_order(
        self, supplier: Supplier, upstream: Upstream
    ) -> None:
        """What lets the core send again an attempt that never arrived: asked by our
        reference alone, the plugin tells "no such order" from an order it has."""
        _skip_unless_it_refuses_reused_references(supplier)
        never_sent = await query(supplier, new_order(upstream.phone(SUCCEED)))
        assert never_sent.outcome is Outcome.UNKNOWN and never_sent.no_such_order, never_sent
        order, _known, _submitted = await self._submitted(supplier, upstream, NEVER_SETTLE)
        sent = await query(supplier, order)
        assert not sent.no_such_order, f"the supplier has this order: {sent}"

    @pytest.mark.parametrize("first", ["open", "settled"])
    async def test_a_reused_reference_is_refused_not_charged_twice(
        self, supplier: Supplier, upstream: Upstream, first: str
    ) -> None:
        """The core may resend an attempt whose query said "no such order". If the first
        did arrive after all, the supplier must refuse the second and the plugin must read
        that refusal as what it is: the first exists, so unknown (or the first's state),
        never a failure and never a failover, which would pay the phone twice."""
        _skip_unless_it_refuses_reused_references(supplier)
        order, known, _submitted = await self._submitted(supplier, upstream, SUCCEED)
        if first == "settled":
            assert (await settle(supplier, known)).outcome is Outcome.SUCCEEDED
        again = await submit(supplier, order)
        assert again.outcome is not Outcome.FAILED, f"the reference was already used: {again}"
        assert upstream.submissions(order.reference) == 2, "the second submit was not sent"
        assert (await settle(supplier, known)).outcome is Outcome.SUCCEEDED
        assert upstream.charges(order.reference) == 1, "the phone was credited twice"

    async def test_an_unsettled_order_stays_open(
        self, supplier: Supplier, upstream: Upstream
    ) -> None:
        _order, known, _submitted = await self._submitted(supplier, upstream, NEVER_SETTLE)
        result = await query(supplier, known)
        assert result.outcome in (Outcome.PENDING, Outcome.UNKNOWN), result

    @pytest.mark.parametrize(
        ("outcome", "said"),
        [(SUCCEED, Outcome.SUCCEEDED), (FAIL, Outcome.FAILED)],
        ids=["success", "failure"],
    )
    async def test_callback_reports_the_outcome(
        self, supplier: Supplier, upstream: Upstream, outcome: str, said: Outcome
    ) -> None:
        order, _known, _submitted = await self._submitted(supplier, upstream, outcome)
        received = await _callbacks_or_skip(upstream, order.reference)
        parsed = supplier.parse_callback(received[0])
        assert parsed.reference == order.reference
        assert parsed.result is not None, f"a genuine callback was not read: {parsed}"
        assert parsed.result.outcome is said, (
            f"a callback saying the top-up {outcome}ed was read as {parsed.result}: read "
            "the status it carries, not only its signature"
        )
        assert not parsed.result.failover, (
            f"a callback allows failover: {parsed.result}. Only a submit's refusal before "
            "acceptance proves nothing was delivered"
        )
        assert 200 <= parsed.reply.status_code < 300

    async def test_a_processing_callback_settles_nothing(
        self, supplier: Supplier, upstream: Upstream
    ) -> None:
        """A callback saying the top-up is still under way is neither success nor failure."""
        order, _known, _submitted = await self._submitted(
            supplier, upstream, NEVER_SETTLE, "processing_callback"
        )
        received = await _callbacks_or_skip(upstream, order.reference)
        parsed = supplier.parse_callback(received[0])
        assert parsed.result is None or parsed.result.outcome in (
            Outcome.PENDING,
            Outcome.UNKNOWN,
        ), f"a callback saying the top-up is still processing was read as {parsed.result}"

    async def test_tampered_callback_changes_nothing(
        self, supplier: Supplier, upstream: Upstream
    ) -> None:
        order, _known, _submitted = await self._submitted(supplier, upstream, SUCCEED)
        genuine = (await _callbacks_or_skip(upstream, order.reference))[0]
        tampered = CallbackRequest(
            genuine.body.replace(b"1", b"2", 1) + b" ", genuine.headers, genuine.query
        )
        assert supplier.parse_callback(tampered).result is None

    async def test_callback_with_a_bad_signature_changes_nothing(
        self, supplier: Supplier, upstream: Upstream
    ) -> None:
        order, _known, _submitted = await self._submitted(
            supplier, upstream, SUCCEED, "bad_signature_callback"
        )
        received = await _callbacks_or_skip(upstream, order.reference)
        assert all(supplier.parse_callback(c).result is None for c in received)

    async def test_an_authoritative_callback_is_signed_all_through(
        self, supplier: Supplier, upstream: Upstream
    ) -> None:
        """A plugin whose callbacks the core applies as they stand must have a signature
        that covers every byte they are read from: no edit may change what one says."""
        if not supplier.authoritative_callbacks:
            pytest.skip("callbacks are not authoritative: the core queries the supplier")
        order, _known, _submitted = await self._submitted(supplier, upstream, SUCCEED)
        genuine = (await _callbacks_or_skip(upstream, order.reference))[0]
        said = supplier.parse_callback(genuine)
        assert said.result is not None, "the genuine callback was not read"
        for position in range(len(genuine.body)):
            edited = bytearray(genuine.body)
            edited[position] = ord("0") if edited[position] != ord("0") else ord("1")
            parsed = supplier.parse_callback(
                CallbackRequest(bytes(edited), genuine.headers, genuine.query)
            )
            assert parsed.result is None or (parsed.reference, parsed.result) == (
                said.reference,
                said.result,
            ), f"byte {position} of the body is not covered by the signature"

    async def test_a_hostile_callback_is_refused_not_raised(
        self, supplier: Supplier, upstream: Upstream
    ) -> None:
        """Anyone can post to /callback/NAME: a signature, reference or status that is not
        ASCII, not a number or absent must make ``parse_callback`` answer, never raise
        (``hmac.compare_digest`` raises on a non-ASCII str: compare bytes)."""
        order, _known, _submitted = await self._submitted(supplier, upstream, SUCCEED)
        genuine = (await _callbacks_or_skip(upstream, order.reference))[0]
        for hostile in _hostile_variants(genuine):
            supplier.parse_callback(hostile)


@contextmanager
def _connections_refused(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Every new connection this event loop makes is refused, as a supplier that is down
    refuses them; yields the addresses tried. (Connections already open are not touched.)"""
    loop = asyncio.get_running_loop()
    tried: list[object] = []

    async def refuse(_protocol_factory, host=None, port=None, *args, **kwargs):
        tried.append((host, port))
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused (conformance test)")

    with monkeypatch.context() as patch:
        patch.setattr(loop, "create_connection", refuse)
        yield tried


def _skip_unless_it_refuses_reused_references(supplier: Supplier) -> None:
    if not supplier.refuses_reused_reference:
        pytest.skip("the plugin does not declare refuses_reused_reference")


def _hostile_variants(genuine: CallbackRequest) -> Iterator[CallbackRequest]:
    """The genuine callback with each header, query value and form or JSON field in turn
    replaced by non-ASCII text, or left out."""
    odd = "签名²①"
    for name in genuine.headers:
        yield CallbackRequest(genuine.body, {**genuine.headers, name: odd}, genuine.query)
        rest = {key: value for key, value in genuine.headers.items() if key != name}
        yield CallbackRequest(genuine.body, rest, genuine.query)
    for name in genuine.query:
        yield CallbackRequest(genuine.body, genuine.headers, {**genuine.query, name: odd})
    for body in _field_variants(genuine.body, odd):
        yield CallbackRequest(body, genuine.headers, genuine.query)


def _field_variants(body: bytes, odd: str) -> Iterator[bytes]:
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if isinstance(document, dict):
        for name in document:
            yield json.dumps({**document, name: odd}, ensure_ascii=False).encode()
        return
    fields = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    for index in range(len(fields)):
        changed = [(k, odd if i == index else v) for i, (k, v) in enumerate(fields)]
        yield urlencode(changed).encode()
        yield urlencode(fields[:index] + fields[index + 1 :]).encode()


async def _callbacks_or_skip(
    upstream: Upstream, reference: str, within: float = 15.0
) -> list[CallbackRequest]:
    """The callbacks about ``reference`` once some arrived; skips for suppliers without any."""
    if upstream.callbacks(reference) is None:
        pytest.skip("this supplier sends no callbacks")
    return await eventually_async(
        lambda: upstream.callbacks(reference), timeout=within, what=f"a callback for {reference}"
    )


# -- running the simulator --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class CallbackInbox:
    """An HTTP server that records every request it receives and answers ``success``."""

    def __init__(self) -> None:
        self.received: list[tuple[str, CallbackRequest]] = []
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                headers = {name.lower(): value for name, value in self.headers.items()}
                inbox.received.append((self.path, CallbackRequest(body, headers, {})))
                self.send_response(200)
                self.send_header("content-type", "text/plain")
                self.end_headers()
                self.wfile.write(b"success")

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def about(self, reference: str) -> list[CallbackRequest]:
        return [request for _path, request in self.received if reference.encode() in request.body]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class SimulatorUpstream:
    """``Upstream`` over a running ``topup simulate``, for one of its protocols."""

    DIGITS: ClassVar[dict[str, str]] = {SUCCEED: "1", FAIL: "4", REJECT: "5", NEVER_SETTLE: "6"}

    def __init__(self, base_url: str, protocol: str, inbox: CallbackInbox | None) -> None:
        self.base_url = base_url
        self.protocol = protocol
        self.inbox = inbox
        self._http = httpx.Client(base_url=base_url, timeout=10)

    def phone(self, outcome: str) -> str:
        return f"138{secrets.randbelow(10**7):07d}"[:10] + self.DIGITS[outcome]

    def inject(self, phone_no: str, fault: str) -> None:
        # Long enough that the plugin's own timeout gives up first.
        seconds = {"timeout": 30.0}.get(fault)
        body = {"phone_no": phone_no, "fault": fault, **({"seconds": seconds} if seconds else {})}
        self._http.post("/_sim/faults", json=body).raise_for_status()

    def submissions(self, reference: str) -> int:
        transactions = self._http.get("/_sim/transactions").json()
        return sum(t["submits"] for t in transactions if t["reference"] == reference)

    def charges(self, reference: str) -> int:
        transactions = self._http.get("/_sim/transactions").json()
        return sum(t["paid"] for t in transactions if t["reference"] == reference)

    def received(self, reference: str) -> Received | None:
        found = self._http.get(
            "/_sim/transactions", params={"protocol": self.protocol, "reference": reference}
        ).json()
        if not found:
            return None
        return Received(found[0]["phone_no"], found[0]["amount_fen"], found[0]["carrier"])

    def callbacks(self, reference: str) -> list[CallbackRequest] | None:
        return None if self.inbox is None else self.inbox.about(reference)


_TOPUP_MAIN = "from service.cli import main; main()"  # the `topup` command, on this Python


@contextmanager
def running_simulator(
    *args: str, env: dict[str, str] | None = None, port: int | None = None
) -> Iterator[str]:
    """``topup simulate`` in its own process for the duration of the block; yields its URL.

    On Linux the simulator also ends if this process is killed outright (a test run
    killed by a timeout), so no simulator is left holding its port."""
    port = port or free_port()
    # A file, not a pipe: nobody reads the log while the simulator runs, and a full pipe
    # would block it (each held answer cancelled at its stop logs a traceback).
    with tempfile.TemporaryFile() as log:
        code = lifeline.command(_TOPUP_MAIN)
        process = subprocess.Popen(
            [sys.executable, "-c", code, str(os.getpid()), "simulate", "--port", str(port), *args],
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_healthy(f"{url}/_sim/health", process, lambda: _read_from_start(log))
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _read_from_start(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")


class Polled(Protocol):
    """A started process as ``wait_until_healthy`` watches it (``subprocess.Popen`` is one)."""

    def poll(self) -> int | None: ...


def wait_until_healthy(
    health_url: str,
    process: Polled,
    describe: Callable[[], str],
    within: float = 30.0,
) -> None:
    """Wait until a started server answers 200 at ``health_url``; ``describe`` says why not."""

    def answers(client: httpx.Client) -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"exited before it was ready:\n{describe()}")
        try:
            return client.get(health_url).status_code == 200
        except httpx.TransportError:
            return False

    # One client for every look: building one (its TLS context) costs ~20 ms of CPU.
    with httpx.Client(timeout=1) as client:
        try:
            eventually(lambda: answers(client), timeout=within, what=f"{health_url} answering")
        except AssertionError as exc:
            raise RuntimeError(f"not ready after {within}s:\n{describe()}") from exc
