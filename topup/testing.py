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
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar, Protocol
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest

from core.suppliers import (
    CallbackRequest,
    Outcome,
    Supplier,
    SupplierResult,
    UpstreamOrder,
)

# How the tests ask for each outcome; an Upstream maps these to its own numbers.
SUCCEED, FAIL, REJECT, NEVER_SETTLE = "succeed", "fail", "reject", "never_settle"
TERMINAL = (Outcome.SUCCEEDED, Outcome.FAILED)


class Upstream(Protocol):
    """A supplier test system the conformance tests can steer and inspect."""

    def phone(self, outcome: str) -> str:
        """A fresh number the upstream will treat as: succeed, fail, reject or never_settle."""

    def inject(self, phone_no: str, fault: str) -> None:
        """Make ``phone_no`` suffer a fault: timeout, error_after_topup, garbage,
        bad_signature_callback (the simulator's names)."""

    def submissions(self, reference: str) -> int:
        """How many submits with this reference reached the upstream."""

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
        product_id="TEST10",
        face_value=face_value,
        created_at=int(time.time() * 1000),
    )


async def settle(supplier: Supplier, order: UpstreamOrder, within: float = 15.0) -> SupplierResult:
    """Query until the outcome is final (or ``within`` seconds pass); returns the last answer."""
    deadline = time.monotonic() + within
    ref = None
    while True:
        result = await supplier.query(_with_ref(order, ref))
        ref = result.supplier_ref or ref
        if result.outcome in TERMINAL or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.2)


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
        result = await supplier.submit(order)
        assert isinstance(result, SupplierResult), f"submit returned {result!r}"
        return order, _with_ref(order, result.supplier_ref), result

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
        final = await settle(supplier, known)
        assert final.outcome is Outcome.FAILED and not final.failover, final

    async def test_refusal_before_acceptance_allows_failover(
        self, supplier: Supplier, upstream: Upstream
    ) -> None:
        _order, _known, submitted = await self._submitted(supplier, upstream, REJECT)
        assert submitted.outcome is Outcome.FAILED and submitted.failover, submitted
        assert submitted.code, "say which supplier code refused it"

    @pytest.mark.parametrize("fault", ["timeout", "error_after_topup", "garbage"])
    async def test_no_proper_answer_is_unknown_and_a_query_finds_the_truth(
        self, supplier: Supplier, upstream: Upstream, fault: str
    ) -> None:
        order, known, submitted = await self._submitted(supplier, upstream, SUCCEED, fault)
        assert submitted.outcome is Outcome.UNKNOWN, f"{fault}: {submitted}"
        assert (await settle(supplier, known)).outcome is Outcome.SUCCEEDED
        assert upstream.submissions(order.reference) == 1, "the plugin resent on its own"

    async def test_a_reference_never_sent_is_not_failed(
        self, supplier: Supplier, upstream: Upstream
    ) -> None:
        result = await supplier.query(new_order(upstream.phone(SUCCEED)))
        assert result.outcome in (Outcome.UNKNOWN, Outcome.PENDING), result

    async def test_a_reference_never_sent_is_no_such_order(
        self, supplier: Supplier, upstream: Upstream
    ) -> None:
        """What lets the core send again an attempt that never arrived: asked by our
        reference alone, the plugin tells "no such order" from an order it has."""
        _skip_unless_it_refuses_reused_references(supplier)
        never_sent = await supplier.query(new_order(upstream.phone(SUCCEED)))
        assert never_sent.outcome is Outcome.UNKNOWN and never_sent.no_such_order, never_sent
        order, _known, _submitted = await self._submitted(supplier, upstream, NEVER_SETTLE)
        sent = await supplier.query(order)
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
        again = await supplier.submit(order)
        assert isinstance(again, SupplierResult), f"submit returned {again!r}"
        assert again.outcome is not Outcome.FAILED, f"the reference was already used: {again}"
        assert upstream.submissions(order.reference) == 2, "the second submit was not sent"
        assert (await settle(supplier, known)).outcome is Outcome.SUCCEEDED
        assert upstream.charges(order.reference) == 1, "the phone was credited twice"

    async def test_an_unsettled_order_stays_open(
        self, supplier: Supplier, upstream: Upstream
    ) -> None:
        _order, known, _submitted = await self._submitted(supplier, upstream, NEVER_SETTLE)
        result = await supplier.query(known)
        assert result.outcome in (Outcome.PENDING, Outcome.UNKNOWN), result

    async def test_callback_reports_the_outcome(
        self, supplier: Supplier, upstream: Upstream
    ) -> None:
        order, _known, _submitted = await self._submitted(supplier, upstream, SUCCEED)
        received = await _callbacks_or_skip(upstream, order.reference)
        parsed = supplier.parse_callback(received[0])
        assert parsed.reference == order.reference
        assert parsed.result is not None and parsed.result.outcome is Outcome.SUCCEEDED
        assert 200 <= parsed.reply.status_code < 300

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
    deadline = time.monotonic() + within
    while True:
        received = upstream.callbacks(reference)
        if received is None:
            pytest.skip("this supplier sends no callbacks")
        if received:
            return received
        if time.monotonic() > deadline:
            raise AssertionError(f"no callback arrived for {reference} within {within}s")
        await asyncio.sleep(0.1)


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
        seconds = {"timeout": 30.0}.get(fault)
        body = {"phone_no": phone_no, "fault": fault, **({"seconds": seconds} if seconds else {})}
        self._http.post("/_sim/faults", json=body).raise_for_status()

    def submissions(self, reference: str) -> int:
        transactions = self._http.get("/_sim/transactions").json()
        return sum(t["submits"] for t in transactions if t["reference"] == reference)

    def charges(self, reference: str) -> int:
        transactions = self._http.get("/_sim/transactions").json()
        return sum(t["paid"] for t in transactions if t["reference"] == reference)

    def callbacks(self, reference: str) -> list[CallbackRequest] | None:
        return None if self.inbox is None else self.inbox.about(reference)


_TOPUP_MAIN = "from service.cli import main; main()"  # the `topup` command, on this Python


@contextmanager
def running_simulator(
    *args: str, env: dict[str, str] | None = None, port: int | None = None
) -> Iterator[str]:
    """``topup simulate`` in its own process for the duration of the block; yields its URL."""
    port = port or free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", _TOPUP_MAIN, "simulate", "--port", str(port), *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(
            f"{url}/_sim/health", process, lambda: process.stderr.read().decode(errors="replace")
        )
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_healthy(
    health_url: str,
    process: subprocess.Popen,
    describe: Callable[[], str],
    within: float = 30.0,
) -> None:
    """Wait until a started server answers 200 at ``health_url``; ``describe`` says why not."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited before it was ready:\n{describe()}")
        try:
            if httpx.get(health_url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"not ready after {within}s:\n{describe()}")
