"""What a supplier plugin implements, and what the core hands it.

A supplier plugin registers a ``Supplier`` subclass through the
``register_suppliers`` hook. The core builds one instance per enabled supplier with
the settings from ``plugins.toml``, calls ``submit`` once per attempt and ``query``
as often as it needs, and calls ``aclose`` at shutdown.

The one rule a plugin must keep: report what the supplier actually said. If the
plugin cannot tell whether the top-up was made (a timeout, a 5xx, a response it
does not understand), the answer is ``Outcome.UNKNOWN``; the core then asks
``query`` with the same reference and never submits the attempt again.
"""

from __future__ import annotations

import csv
import io
import logging
import os
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
        return self.carrier


class SupplierResult(msgspec.Struct, frozen=True):
    outcome: Outcome
    code: str = ""
    """The supplier's own result or error code, verbatim."""
    message: str = ""
    supplier_ref: str | None = None
    failover: bool = False
    """With FAILED only: the failure proves nothing was delivered, so the core may
    try the next supplier in the route (balance exhausted, rejected before
    acceptance...). Set it from the supplier's error code, never from HTTP status."""
    no_such_order: bool = False
    """With UNKNOWN only, from ``query``: the supplier says it has no order with our
    reference. Make it with ``never_received``. For a plugin that declares
    ``Supplier.refuses_reused_reference`` the core may then send the attempt again
    with the same reference, once; for any other plugin it is just unknown."""

    def __post_init__(self) -> None:
        if self.no_such_order and self.outcome is not Outcome.UNKNOWN:
            # "No such order" says nothing was credited yet, which only UNKNOWN may carry.
            raise ValueError(f"no_such_order with outcome {self.outcome}: use never_received")

    @classmethod
    def succeeded(cls, supplier_ref: str | None = None, code: str = "", message: str = ""):
        return cls(Outcome.SUCCEEDED, code, message, supplier_ref)

    @classmethod
    def pending(cls, supplier_ref: str | None = None, code: str = "", message: str = ""):
        return cls(Outcome.PENDING, code, message, supplier_ref)

    @classmethod
    def unknown(cls, code: str = "", message: str = "", supplier_ref: str | None = None):
        return cls(Outcome.UNKNOWN, code, message, supplier_ref)

    @classmethod
    def failed(
        cls,
        code: str = "",
        message: str = "",
        *,
        failover: bool = False,
        supplier_ref: str | None = None,
    ):
        return cls(Outcome.FAILED, code, message, supplier_ref, failover)

    @classmethod
    def not_sent(cls, message: str):
        """The request provably never left (connection refused, no token): try elsewhere."""
        return cls(Outcome.FAILED, "NOT_SENT", message, None, True)

    @classmethod
    def never_received(cls, code: str = "", message: str = ""):
        """A status query's answer that the supplier has no order with our reference.

        Still unknown: the order may yet appear (a supplier's records can lag). Only a
        plugin that declares ``refuses_reused_reference`` lets the core act on it.
        """
        return cls(Outcome.UNKNOWN, code, message, no_such_order=True)


class ErrorClass(StrEnum):
    """How a supplier's own error code is to be read."""

    DEFINITIVE = "definitive"
    """Refused before acceptance; nothing was delivered: another supplier may try."""
    TRANSIENT = "transient"
    """Refused for a passing reason; nothing was delivered: another supplier may try."""
    UNKNOWN = "unknown"
    """Says nothing certain about delivery: the order is queried, never resent."""


def classify_error(
    plugin: str, table: Mapping[str, ErrorClass], code: str, message: str
) -> SupplierResult:
    """The result for a supplier error code, from the plugin's table.

    A code missing from the table is treated as unknown and raises an alert, since it
    means the supplier says something the plugin was not written to understand.
    """
    error_class = table.get(code)
    if error_class is None:
        alerts.warning("%s: unlisted error code %r (%s): treated as unknown", plugin, code, message)
        return SupplierResult.unknown(code, message)
    if error_class is ErrorClass.UNKNOWN:
        return SupplierResult.unknown(code, message)
    return SupplierResult.failed(code, message, failover=True)


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
        """Send the order upstream, once. Report what the supplier said."""

    @abstractmethod
    async def query(self, order: UpstreamOrder) -> SupplierResult:
        """Ask the supplier for the state of ``order.reference``; never resubmit."""

    async def balance(self) -> int | None:
        """Our balance with the supplier in fen, where its protocol can tell it; None
        (the default) when it cannot. Raise when the supplier could not be asked: the
        console shows the last known figure and the error. Called at most once a minute,
        under a short timeout, never on an order's path."""
        return None

    def parse_statement(self, content: bytes) -> list[StatementLine]:
        """Read the supplier's daily statement file, for ``topup reconcile supplier``."""
        raise NotImplementedError(f"the {self.name} plugin cannot read statements")

    def parse_callback(self, request: CallbackRequest) -> Callback:
        """Verify and read a callback sent to ``/callback/NAME``. Do no I/O here.

        Return a ``Callback`` with a ``result`` only for a callback whose signature is
        good; what the core does with it depends on ``authoritative_callbacks``.
        Suppliers without callbacks keep this default, which refuses them.
        """
        return Callback(CallbackReply(404, b"callbacks not supported"))

    async def aclose(self) -> None:  # noqa: B027 - optional: not every plugin holds a client
        """Release clients and connections at shutdown."""
