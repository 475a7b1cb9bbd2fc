"""What a supplier plugin implements, and what the core hands it.

A supplier plugin registers a ``Supplier`` subclass through the
``register_suppliers`` hook. The core builds one instance per enabled supplier with
the settings from ``plugins.toml``, calls ``submit`` once per attempt and ``query``
as often as it needs, and calls ``aclose`` at shutdown.

The one rule a plugin must keep: report what the supplier actually said. If the
plugin cannot tell whether the top-up was made (a timeout, a 5xx, a response it
does not understand, "system busy"), the answer is ``Outcome.UNKNOWN``; the core then
asks ``query`` with the same reference and never submits the attempt again.

Only one answer may let the core try another supplier: ``submit``'s refusal before
acceptance, which proves nothing was delivered (``failed(..., failover=True)``). A
status query or a callback cannot prove that, and the core reads a failover from
either as unknown.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, ClassVar

import msgspec

alerts = logging.getLogger("topup.alert")


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    """The phone was credited."""
    FAILED = "failed"
    """The supplier says, definitively, that it did not and will not credit the phone."""
    PENDING = "pending"
    """The supplier has the order and is working on it."""
    UNKNOWN = "unknown"
    """Nobody knows yet whether the phone was or will be credited."""


class UpstreamOrder(msgspec.Struct, frozen=True):
    """One attempt to fulfil an order through one supplier."""

    reference: str
    """Our reference for this attempt: send it as the supplier's caller reference
    (orderid, customIdentifier, external_id...) and query by it. Never reuse it."""
    order_no: str
    attempt: int
    phone_no: str
    carrier: str
    """The carrier the phone number belongs to, as the partner named it in its
    ``Supplier`` field: 中国移动, 中国联通, 中国电信... (The supplier is you, the plugin.)"""
    product_id: str
    face_value: int
    """Face value in fen."""
    created_at: int
    """When this attempt was recorded, in Unix milliseconds."""
    supplier_ref: str | None = None
    """The supplier's own transaction id, once a submit or callback reported one."""

    @property
    def supplier(self) -> str:
        """Deprecated: the carrier, under the partner API's name for it; use ``carrier``."""
        # A plugin written before the rename still works, and its author's tests say why
        # to change it, pointing at their own line.
        warnings.warn(
            "UpstreamOrder.supplier is the carrier (中国移动...); read UpstreamOrder.carrier",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.carrier


class FailReason(StrEnum):
    """What a partner is told about a failed order: its ``failReason``.

    A short, fixed table in the partner API's language, so that no supplier's own wording
    (an English status, an internal code, the word "callback") ever reaches a partner. The
    supplier's code and message stay on the attempt, for operators (the console,
    ``topup orders show``). A plugin picks one with ``failed(..., reason=...)`` or in its
    ``classify_error`` table; without one a failed order says ``FAILED``.
    """

    FAILED = "充值失败，款项已退回"
    """Any failure without a more precise reason: the default."""
    NUMBER_NOT_SUPPORTED = "号码不支持充值"
    """The number cannot be topped up: a range the carrier or channel does not serve
    (virtual carriers' 170/171...), a number that does not exist, a blocked number."""
    NUMBER_SUSPENDED = "号码状态异常（停机/销户）"
    """The number is suspended or closed at its carrier."""
    AMOUNT_NOT_SUPPORTED = "该号码不支持此面值"
    """The product (face value) is not offered for this number."""
    CARRIER_MAINTENANCE = "运营商系统维护，请稍后再试"
    """The carrier's own system is down for maintenance."""
    NO_SUPPLIER = "暂无可用充值渠道"
    """No supplier could take the order (set by the core, not by plugins)."""


class SupplierResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a supplier said about one attempt. Make it with the builders below
    (``SupplierResult.succeeded(supplier_ref=...)``...), which take keywords only."""

    outcome: Outcome
    code: str = ""
    """The supplier's own result or error code, verbatim. Kept for operators."""
    message: str = ""
    """The supplier's own words, verbatim. Kept for operators, never shown to partners
    (they see ``reason``)."""
    supplier_ref: str | None = None
    failover: bool = False
    """With FAILED from ``submit`` only: the supplier refused before accepting, which
    proves nothing was delivered, so the core may try the next supplier in the route.
    Set it from the supplier's error code, never from HTTP status. A query or callback
    cannot prove that: the core reads a failover from either as UNKNOWN."""
    transient: bool = False
    """With a failover only: the refusal is about this supplier, not this order (it is
    rate limiting, in maintenance, out of our balance, refusing our credentials): it
    counts towards opening the supplier's circuit (``dispatch.breaker_threshold``)."""
    reason: FailReason | None = None
    """With FAILED only: what the partner is told if the order ends failed
    (``FailReason.FAILED`` when None)."""
    no_such_order: bool = False
    """With UNKNOWN only, from ``query``: the supplier says it has no order with our
    reference. Make it with ``never_received``. For a plugin that declares
    ``Supplier.refuses_reused_reference`` the core may then send the attempt again
    with the same reference, once; for any other plugin it is just unknown."""

    def __post_init__(self) -> None:
        if self.no_such_order and self.outcome is not Outcome.UNKNOWN:
            # "No such order" says nothing was credited yet, which only UNKNOWN may carry.
            raise ValueError(f"no_such_order with outcome {self.outcome}: use never_received")
        if self.outcome is not Outcome.FAILED and (self.failover or self.reason is not None):
            raise ValueError(f"failover and reason go with a failure, not {self.outcome}")
        if self.transient and not self.failover:
            raise ValueError("transient describes a refusal that allows failover")

    @classmethod
    def succeeded(
        cls, *, supplier_ref: str | None = None, code: str = "", message: str = ""
    ) -> SupplierResult:
        """The phone was credited."""
        return cls(outcome=Outcome.SUCCEEDED, code=code, message=message, supplier_ref=supplier_ref)

    @classmethod
    def pending(
        cls, *, supplier_ref: str | None = None, code: str = "", message: str = ""
    ) -> SupplierResult:
        """The supplier has the order and is working on it."""
        return cls(outcome=Outcome.PENDING, code=code, message=message, supplier_ref=supplier_ref)

    @classmethod
    def unknown(
        cls, *, supplier_ref: str | None = None, code: str = "", message: str = ""
    ) -> SupplierResult:
        """Nobody knows whether the phone was or will be credited: the core queries."""
        return cls(outcome=Outcome.UNKNOWN, code=code, message=message, supplier_ref=supplier_ref)

    @classmethod
    def failed(
        cls,
        *,
        code: str = "",
        message: str = "",
        failover: bool = False,
        transient: bool = False,
        supplier_ref: str | None = None,
        reason: FailReason | None = None,
    ) -> SupplierResult:
        """The supplier says it did not and will not credit the phone.

        ``failover=True`` only for ``submit``'s refusal before acceptance (nothing was
        delivered); ``transient=True`` as well when the refusal is about the supplier
        rather than the order; ``reason`` is what the partner is told.
        """
        return cls(
            outcome=Outcome.FAILED,
            code=code,
            message=message,
            supplier_ref=supplier_ref,
            failover=failover,
            transient=transient,
            reason=reason,
        )

    @classmethod
    def not_sent(cls, *, message: str) -> SupplierResult:
        """The request provably never left (connection refused, no token): another
        supplier may try, and it counts against this one's circuit. ``topup.exchange``
        answers it for any request that never left; for a status query that says nothing
        about the order, so ``query`` answers ``unknown`` instead."""
        return cls.failed(code="NOT_SENT", message=message, failover=True, transient=True)

    @classmethod
    def never_received(cls, *, code: str = "", message: str = "") -> SupplierResult:
        """A status query's answer that the supplier has no order with our reference.

        Still unknown: the order may yet appear (a supplier's records can lag). Only a
        plugin that declares ``refuses_reused_reference`` lets the core act on it.
        """
        return cls(outcome=Outcome.UNKNOWN, code=code, message=message, no_such_order=True)


class ErrorClass(StrEnum):
    """How a supplier's own error code is to be read (see ``classify_error``).

    Only a ``submit``'s answer is classified this way: an error answering a status query
    is about the query, not the order, and is ``unknown`` whatever the code.
    """

    DEFINITIVE = "definitive"
    """This supplier refused this order before accepting it; provably nothing was
    delivered, and another supplier may do better (a product it does not stock, a
    number it recently topped up): failover. Says nothing about the supplier's health."""
    NO_FAILOVER = "no_failover"
    """Refused before acceptance, nothing delivered, and no other supplier can help
    either (a number the carrier does not serve, a blacklisted number, a face value not
    offered for this number): the order fails, without failover. Give the partner's
    reason with it: ``(ErrorClass.NO_FAILOVER, FailReason.NUMBER_NOT_SUPPORTED)``."""
    TRANSIENT = "transient"
    """Refused before acceptance, nothing delivered, for a reason at this supplier
    rather than in the order (rate limited, in maintenance, our balance there is
    exhausted, our credentials refused): failover, and it counts towards opening the
    supplier's circuit, so that following orders skip it for a while."""
    UNKNOWN = "unknown"
    """Says nothing certain about delivery ("system busy", an internal error, a
    duplicate reference): the order is queried, never resent and never failed over."""


ErrorTable = Mapping[str, ErrorClass | tuple[ErrorClass, FailReason]]
"""A plugin's error codes: code -> class, or (class, the partner's reason)."""


def classify_error(plugin: str, table: ErrorTable, code: str, message: str) -> SupplierResult:
    """The result for a supplier error code answering ``submit``, from the plugin's table.

    A code missing from the table is treated as unknown and raises an alert, since it
    means the supplier says something the plugin was not written to understand.
    """
    entry = table.get(code)
    if entry is None:
        alerts.warning("%s: unlisted error code %r (%s): treated as unknown", plugin, code, message)
        return SupplierResult.unknown(code=code, message=message)
    error_class, reason = entry if isinstance(entry, tuple) else (entry, None)
    if error_class is ErrorClass.UNKNOWN:
        return SupplierResult.unknown(code=code, message=message)
    return SupplierResult.failed(
        code=code,
        message=message,
        failover=error_class is not ErrorClass.NO_FAILOVER,
        transient=error_class is ErrorClass.TRANSIENT,
        reason=reason,
    )


class CallbackRequest(msgspec.Struct, frozen=True):
    """An inbound callback exactly as it arrived; header names are lower case."""

    body: bytes
    headers: dict[str, str]
    query: dict[str, str]


class CallbackReply(msgspec.Struct, frozen=True):
    """What the supplier's protocol expects as the answer to its callback."""

    status_code: int = 200
    body: bytes = b"success"
    media_type: str = "text/plain"


class Callback(msgspec.Struct, frozen=True):
    """A parsed callback: which attempt, what it says, and how to answer.

    ``result`` is None when the callback must not change anything (bad signature,
    a status the plugin does not understand); the reply still goes back. With a
    result, the core applies it if the supplier's callbacks are authoritative, and
    otherwise queries the supplier about ``reference`` at once and applies that answer.
    """

    reply: CallbackReply
    reference: str | None = None
    result: SupplierResult | None = None


class StatementLine(msgspec.Struct, frozen=True):
    """One transaction on a supplier's daily statement (对账单)."""

    reference: str
    """Our reference, as we sent it."""
    outcome: Outcome
    """SUCCEEDED, FAILED, or PENDING for a transaction still open on the statement's day."""
    charged: int
    """Fen the supplier took for it (0 unless it succeeded)."""
    supplier_ref: str = ""
    phone_no: str = ""


def read_statement_csv(content: bytes, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a CSV statement (UTF-8, BOM allowed); refuses one missing a column."""
    reader = csv.DictReader(io.StringIO(content.decode("utf-8-sig")))
    missing = [name for name in columns if name not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"not the expected statement: no column {', '.join(missing)}")
    return [row for row in reader if any(value.strip() for value in row.values() if value)]


class SupplierConfigError(Exception):
    """A supplier cannot start with its settings or environment; the message says why."""


def secret_from_env(name: str) -> str:
    """A credential from the environment variable ``name``; refuses to start without it."""
    value = os.environ.get(name)
    if not value:
        raise SupplierConfigError(f"environment variable {name} is not set")
    return value


class NoSettings(msgspec.Struct, forbid_unknown_fields=True):
    pass


class Supplier(ABC):
    """Base class of supplier implementations.

    Subclasses set ``name`` (what ``plugins.toml`` calls them), implement ``submit``
    and ``query`` (a class missing either is refused when it is registered) and, if
    they take settings, ``Settings``: a msgspec Struct that the ``[plugin.NAME]``
    table of ``plugins.toml`` is decoded into. Credentials belong in the environment;
    read them in ``__init__`` from variables whose names the settings give.
    """

    name: ClassVar[str]
    Settings: ClassVar[type[msgspec.Struct]] = NoSettings
    authoritative_callbacks: ClassVar[bool] = False
    """Whether the core may apply the outcome a verified callback states.

    Set it True only when the callback's signature covers the outcome (and whatever
    else the result is read from): reloadly's HMAC over the whole body is. When False,
    the default, a verified callback only wakes its order: the core queries the
    supplier at once, through the same path as every status query, and applies the
    query's answer. That costs a query per callback and protects against a signature
    that someone who saw one callback can reuse with the opposite outcome (juhe's
    ``md5(key + sporder_id + orderid)`` signs neither ``sta`` nor a time)."""
    refuses_reused_reference: ClassVar[bool] = False
    """Whether the supplier documents that it refuses a second order with a caller
    reference it has already seen (juhe's ``orderid``, Reloadly's ``customIdentifier``).

    Set it True only when that is documented, and have ``query`` answer
    ``SupplierResult.never_received`` when the supplier says it has no such order. The
    core may then, when a status query made well after an attempt says so (the attempt
    was recorded but never arrived, say after a crash), send that same attempt again
    with the same reference, once: if the first did arrive after all, the supplier
    refuses the second instead of charging twice. ``submit`` must read that refusal as
    UNKNOWN (it proves the first exists), never as a failure, and never fail over on
    it. The conformance tests check both. When False, the default, such an order goes
    to manual review after its queries, as every unknown does."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> Supplier:
        settings = msgspec.convert(dict(raw), type=cls.Settings)
        return cls(settings)

    @abstractmethod
    async def submit(self, order: UpstreamOrder) -> SupplierResult:
        """Send the order upstream, once. Report what the supplier said.

        The one answer that may let the core try another supplier is a refusal before
        acceptance that proves nothing was delivered: ``failed(..., failover=True)``,
        ``not_sent``, or ``classify_error`` for a DEFINITIVE or TRANSIENT code. Anything
        uncertain ("system busy", a timeout, a code not in the table) is ``unknown``.
        """

    @abstractmethod
    async def query(self, order: UpstreamOrder) -> SupplierResult:
        """Ask the supplier for the state of ``order.reference``; never resubmit.

        Never allows failover: a failure found here came after acceptance, and a query
        that went nowhere (``topup.exchange``'s ``not_sent``) or was answered with an
        error says nothing about the order, so answer ``unknown``. The core reads a
        failover from here as unknown.
        """

    async def balance(self) -> int | None:
        """Our balance with the supplier in fen, where its protocol can tell it; None
        (the default) when it cannot. Raise when the supplier could not be asked: the
        console shows the last known figure and the error. Called at most once a minute,
        under a short timeout, never on an order's path."""
        return None

    async def lookup_carrier(self, phone_no: str) -> str | None:
        """Optional: the carrier that serves ``phone_no`` today, as the supplier knows it.

        Parameters:
            phone_no: an 11-digit mainland mobile number in an allocated segment.

        Returns:
            The carrier under the partner API's name for it (中国移动, 中国联通, 中国电信,
            中国广电), or None when the supplier cannot tell. Raise when the supplier could
            not be asked; the core logs it.

        A number keeps its segment when it moves to another carrier (携号转网), so only a
        supplier that tops it up knows where it is now. Override this when the supplier's
        protocol can tell (juhe's ``telquery``); the core then asks the first enabled
        supplier that overrides it, when a partner asks ``/sign/api/products`` by
        ``phoneNo``, never on an order's path. Answer within a second or two: the core
        gives up after ``core.carriers.LOOKUP_TIMEOUT`` seconds, and on any failure (None,
        an exception, a name it does not know) answers from the number-segment table.
        The default does not look anything up.
        """
        return None

    def parse_statement(self, content: bytes) -> list[StatementLine]:
        """Read the supplier's daily statement file, for ``topup reconcile supplier``."""
        raise NotImplementedError(f"the {self.name} plugin cannot read statements")

    def parse_callback(self, request: CallbackRequest) -> Callback:
        """Verify and read a callback sent to ``/callback/NAME``. Do no I/O here.

        Return a ``Callback`` with a ``result`` only for a callback whose signature is
        good, read from the status it carries (a "still processing" callback is
        ``pending``, or no result); what the core does with it depends on
        ``authoritative_callbacks``. Like a query's, a callback's result never allows
        failover. Suppliers without callbacks keep this default, which refuses them.
        """
        return Callback(CallbackReply(404, b"callbacks not supported"))

    async def aclose(self) -> None:  # noqa: B027 - optional: not every plugin holds a client
        """Release clients and connections at shutdown."""
