"""A supplier's API faked in this process, for a plugin's conformance tests.

The conformance tests of ``topup.testing`` steer and inspect the supplier through an
``Upstream``: numbers that succeed, fail or are refused, faults, counts of submits and
charges, callbacks. ``FakeUpstream`` does all of that over an HTTP server on 127.0.0.1;
a subclass adds the protocol, as the supplier's documentation describes it::

    class FakeAcme(FakeUpstream):
        def answer(self, request: FakeRequest) -> FakeReply:
            ...  # read a top-up or a status query, call top_up or find, answer

        def error_answer(self, fault: str) -> FakeReply:
            ...  # its "system busy", and an error code its documentation does not list

        def callback(self, transaction: FakeTransaction, signed: bool):
            ...  # the callback the supplier sends about it

Point the plugin at ``fake.url``. docs/writing-a-plugin.md §7 has a complete one.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

from core.suppliers import CallbackRequest
from topup.testing import FAIL, NEVER_SETTLE, REJECT, SUCCEED

# A transaction's state, as the fake supplier keeps it.
PROCESSING, SUCCEEDED, FAILED, REFUSED = "processing", "succeeded", "failed", "refused"

FAULTS = (
    "timeout",
    "error_after_topup",
    "garbage",
    "busy",
    "undocumented_error",
    "bad_signature_callback",
    "processing_callback",
)
# What a misconfigured proxy in front of a supplier tends to send back (fault "garbage").
GARBAGE = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>\n"


@dataclass(frozen=True)
class FakeRequest:
    """One request to the fake supplier, as it arrived."""

    method: str
    path: str
    """Without the query string."""
    query: dict[str, str]
    headers: dict[str, str]
    """Names in lower case."""
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode("utf-8", "replace"), keep_blank_values=True))


@dataclass(frozen=True)
class FakeReply:
    """The fake supplier's answer; a dict or list body is sent as JSON."""

    status: int
    body: bytes | str | dict | list = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeTransaction:
    """One top-up the fake supplier holds."""

    reference: str
    """The caller reference the plugin sent (ours)."""
    phone_no: str
    face_value: int
    """In fen, whatever unit the protocol counts in."""
    carrier: str | None
    """As the partner names it (中国移动...), if the protocol says; None if it does not."""
    id: str
    """The supplier's own id for it."""
    state: str
    """processing, succeeded, failed, or refused (before acceptance: ``find`` does not see it)."""
    submits: int = 1
    """Every submit received with this reference: more than 1 means a reused reference."""
    paid: int = 0
    """1 once the phone was credited."""
    details: dict[str, Any] = field(default_factory=dict)
    """Whatever else the request said (a callback URL...), for the protocol's own use."""


class FakeUpstream:
    """An ``Upstream`` (topup.testing) over a fake supplier you teach the protocol.

    The phone number's last digit picks the outcome (``DIGITS``): a top-up of a number
    that succeeds is credited at once, one that fails is failed at once, one that never
    settles stays processing, one that is refused is refused before acceptance. Faults
    bend the answer to the request that made the top-up (see ``inject``).
    """

    DIGITS: ClassVar[dict[str, str]] = {SUCCEED: "1", FAIL: "4", REJECT: "5", NEVER_SETTLE: "6"}
    STATES: ClassVar[dict[str, str]] = {
        SUCCEED: SUCCEEDED,
        FAIL: FAILED,
        REJECT: REFUSED,
        NEVER_SETTLE: PROCESSING,
    }
    # How long the "timeout" fault holds an answer: test the plugin with a shorter timeout.
    timeout_seconds: ClassVar[float] = 30.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._transactions: dict[str, FakeTransaction] = {}
        self._faults: dict[str, set[str]] = {}
        self._closing = threading.Event()
        # The faults of the request being answered, per server thread (set by top_up).
        self._answering = threading.local()
        self.errors: list[BaseException] = []
        """What ``answer`` raised: each also went to stderr and answered 500."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # A short poll: close() returns at once, not half a second later.
        serving = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        serving.start()

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeUpstream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the protocol: write these in a subclass -------------------------------------------

    def answer(self, request: FakeRequest) -> FakeReply:
        """The supplier's answer to ``request``: read a top-up (call ``top_up``) or a status
        query (call ``find``) as its documentation says, and answer as it does."""
        raise NotImplementedError(f"{type(self).__name__}.answer: not written yet")

    def error_answer(self, fault: str) -> FakeReply:
        """The supplier's answer to a top-up it made, for fault ``busy`` (its documented
        "system busy" or "internal error", which does not say whether it took the top-up)
        or ``undocumented_error`` (an error code its documentation does not list)."""
        raise NotImplementedError(f"{type(self).__name__}.error_answer: not written yet")

    def callback(self, transaction: FakeTransaction, signed: bool) -> CallbackRequest | None:
        """The callback the supplier sends once ``transaction`` settles, as the plugin's
        ``parse_callback`` receives it (header names in lower case); signed with a wrong key
        when ``signed`` is False. Leave it out for a supplier that sends no callbacks."""
        return None

    # -- what the protocol calls -----------------------------------------------------------

    def top_up(
        self,
        reference: str,
        phone_no: str,
        face_value: int,
        carrier: str | None = None,
        **details: Any,
    ) -> FakeTransaction:
        """Record a top-up request and settle it as the number says; returns its transaction.

        ``face_value`` is in fen: convert from the protocol's unit (yuan...). A reference
        seen before is not topped up again: the transaction's ``submits`` goes up, and the
        protocol answers as the supplier does to a reused reference.
        """
        with self._lock:
            self._answering.faults = set(self._faults.get(phone_no, ()))
            transaction = self._transactions.get(reference)
            if transaction is not None:
                transaction.submits += 1
                return transaction
            state = self._state_for(phone_no)
            transaction = FakeTransaction(
                reference=reference,
                phone_no=phone_no,
                face_value=face_value,
                carrier=carrier,
                id=f"fake-{len(self._transactions) + 1:08d}",
                state=state,
                paid=1 if state == SUCCEEDED else 0,
                details=details,
            )
            self._transactions[reference] = transaction
            return transaction

    def _state_for(self, phone_no: str) -> str:
        outcomes = {digit: outcome for outcome, digit in self.DIGITS.items()}
        return self.STATES[outcomes.get(phone_no[-1:], SUCCEED)]

    def find(self, reference: str) -> FakeTransaction | None:
        """The transaction a status query asks about; None if the supplier has none (never
        received, or refused before acceptance)."""
        with self._lock:
            transaction = self._transactions.get(reference)
        if transaction is None or transaction.state == REFUSED:
            return None
        return transaction

    # -- Upstream: what the conformance tests call -------------------------------------------

    def phone(self, outcome: str) -> str:
        return f"138{secrets.randbelow(10**7):07d}" + self.DIGITS[outcome]

    def inject(self, phone_no: str, fault: str) -> None:
        """Make every top-up of ``phone_no`` suffer ``fault``. The top-up itself is made
        (and settled as the number says) in each case; only its answer is lost:

        - ``timeout``: no answer for ``timeout_seconds``, then the connection closes;
        - ``error_after_topup``: HTTP 500 with no error code;
        - ``garbage``: HTTP 200 with a body that is not the protocol's (a proxy's page);
        - ``busy``, ``undocumented_error``: the protocol's ``error_answer``.

        Or its callbacks change: ``bad_signature_callback``, signed with a wrong key;
        ``processing_callback``, one saying "still processing" once it is accepted.
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        with self._lock:
            self._faults.setdefault(phone_no, set()).add(fault)

    def submissions(self, reference: str) -> int:
        with self._lock:
            transaction = self._transactions.get(reference)
        return transaction.submits if transaction else 0

    def charges(self, reference: str) -> int:
        with self._lock:
            transaction = self._transactions.get(reference)
        return transaction.paid if transaction else 0

    def received(self, reference: str) -> FakeTransaction | None:
        """The top-up asked for with ``reference``: its ``phone_no``, ``face_value`` (fen)
        and ``carrier``, as the fake read them from the request."""
        with self._lock:
            return self._transactions.get(reference)

    def callbacks(self, reference: str) -> list[CallbackRequest] | None:
        """The callback about ``reference`` once it settled, or while it is processing
        with fault ``processing_callback`` (made on demand by ``callback``); None if the
        protocol has no callbacks."""
        if type(self).callback is FakeUpstream.callback:
            return None
        transaction = self.find(reference)
        if transaction is None:
            return []
        with self._lock:
            faults = set(self._faults.get(transaction.phone_no, ()))
        if transaction.state == PROCESSING and "processing_callback" not in faults:
            return []
        made = self.callback(transaction, signed="bad_signature_callback" not in faults)
        return [] if made is None else [made]

    # -- serving ---------------------------------------------------------------------------

    def _serve(self, request: FakeRequest) -> FakeReply | None:
        """The reply that goes back, after faults; None: hold, then close without one."""
        self._answering.faults = set()
        try:
            return self._answer_with_faults(request)
        except Exception as exc:
            self.errors.append(exc)
            # Captured by pytest and shown with the test that failed because of it.
            print(
                f"{type(self).__name__} could not answer {request.method} {request.path}:",
                file=sys.stderr,
            )
            traceback.print_exc()
            return FakeReply(500, f"{type(exc).__name__}: {exc}")

    def _answer_with_faults(self, request: FakeRequest) -> FakeReply | None:
        reply = self.answer(request)
        faults = self._answering.faults
        if "timeout" in faults:
            self._closing.wait(self.timeout_seconds)
            return None
        if "error_after_topup" in faults:
            return FakeReply(500, b"Internal Server Error", {"content-type": "text/plain"})
        if "garbage" in faults:
            return FakeReply(200, GARBAGE, {"content-type": "text/html"})
        for fault in ("busy", "undocumented_error"):
            if fault in faults:
                return self.error_answer(fault)
        return reply


def _handler(fake: FakeUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            split = urlsplit(self.path)
            length = int(self.headers.get("content-length") or 0)
            request = FakeRequest(
                method=self.command,
                path=split.path,
                query=dict(parse_qsl(split.query, keep_blank_values=True)),
                headers={name.lower(): value for name, value in self.headers.items()},
                body=self.rfile.read(length) if length else b"",
            )
            reply = fake._serve(request)
            if reply is None:
                self.close_connection = True
                return
            body, content_type = _encoded(reply.body)
            self.send_response(reply.status)
            headers = {"content-type": content_type, **reply.headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def _encoded(body: bytes | str | dict | list) -> tuple[bytes, str]:
    if isinstance(body, bytes):
        return body, "application/octet-stream"
    if isinstance(body, str):
        return body.encode(), "text/plain; charset=utf-8"
    return json.dumps(body, ensure_ascii=False).encode(), "application/json"
