"""reloadly: an OAuth2 JSON API in the style of Reloadly Airtime (docs/supplier-protocols.md).

Client-credentials tokens that expire and are refreshed; ``POST /topups`` with our
reference as ``customIdentifier``; status by transaction id, or by customIdentifier
when a submit never returned one; webhooks signed with HMAC-SHA256 over the body and a
timestamp, refused once the timestamp is more than ``webhook_tolerance`` seconds away.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time

import httpx
import msgspec

from topup import (
    Callback,
    CallbackReply,
    CallbackRequest,
    ErrorClass,
    ErrorTable,
    FailReason,
    StatementLine,
    Supplier,
    SupplierResult,
    UpstreamOrder,
    classify_error,
    exchange,
    hookimpl,
    read_statement_csv,
    secret_from_env,
    unknown_answer,
    yuan_to_fen,
)

log = logging.getLogger("topup.plugins.reloadly")

ACCEPT = "application/com.reloadly.topups-v1+json"
# Refusals about our account or reloadly's service rather than the order are transient:
# another supplier may try, and they count towards opening reloadly's circuit.
ERRORS: ErrorTable = {
    "INSUFFICIENT_BALANCE": ErrorClass.TRANSIENT,
    "INVALID_PHONE_NUMBER": (ErrorClass.DEFINITIVE, FailReason.NUMBER_NOT_SUPPORTED),
    "INVALID_AMOUNT_FOR_OPERATOR": (ErrorClass.DEFINITIVE, FailReason.AMOUNT_NOT_SUPPORTED),
    "OPERATOR_UNAVAILABLE": (ErrorClass.TRANSIENT, FailReason.CARRIER_MAINTENANCE),
    "PHONE_RECENTLY_RECHARGED": ErrorClass.DEFINITIVE,
    "TRANSACTION_CANNOT_BE_PROCESSED_AT_THE_MOMENT": ErrorClass.TRANSIENT,
    "INVALID_CREDENTIALS": ErrorClass.TRANSIENT,
    "INTERNAL_SERVER_ERROR": ErrorClass.UNKNOWN,  # it may have been processed
    "DUPLICATED_CUSTOM_IDENTIFIER": ErrorClass.UNKNOWN,  # usually the first try was paid
    "TRANSACTION_NOT_FOUND": ErrorClass.UNKNOWN,
}
# A 401 with these codes means the request was refused unread: safe to send again.
STALE_TOKEN = frozenset({"TOKEN_EXPIRED", "INVALID_TOKEN"})
# Refresh a little before the supplier's expiry, so no request carries a dying token.
TOKEN_MARGIN_SECONDS = 30
STATEMENT_COLUMNS = ("customIdentifier", "transactionId", "recipientPhone", "cost", "status")
WEBHOOK_OK = CallbackReply(200, b"ok")
# Anything but a 2xx refuses a webhook (reloadly sends it again, freshly stamped).
WEBHOOK_REFUSED = CallbackReply(401, b"bad signature")
WEBHOOK_STALE = CallbackReply(401, b"stale timestamp")


class ReloadlySettings(msgspec.Struct, forbid_unknown_fields=True):
    base_url: str = "https://topups.reloadly.com"
    auth_url: str = "https://auth.reloadly.com"
    client_id_env: str = "TOPUP_RELOADLY_CLIENT_ID"
    client_secret_env: str = "TOPUP_RELOADLY_CLIENT_SECRET"
    webhook_secret_env: str = "TOPUP_RELOADLY_WEBHOOK_SECRET"
    country_code: str = "CN"
    # The supplier's operatorId for each Supplier (carrier) name this plugin serves.
    operators: dict[str, int] = {}
    timeout: float = 10.0
    # Seconds a webhook's signed timestamp may be from our clock, either way: an older
    # one is a replay (or too late to matter), a newer one a clock we cannot trust.
    webhook_tolerance: float = 300.0


class Transaction(msgspec.Struct):
    status: str
    transactionId: int | None = None
    customIdentifier: str | None = None


class StatusReply(msgspec.Struct):
    status: str
    transaction: Transaction | None = None


class Report(msgspec.Struct):
    content: list[Transaction] = []


class ErrorReply(msgspec.Struct):
    errorCode: str | None = None
    message: str = ""


class Webhook(msgspec.Struct):
    data: Transaction
    type: str = ""


class Token(msgspec.Struct):
    access_token: str
    expires_in: int


class NotSent(Exception):
    """The request provably never reached the top-up API."""


class Reloadly(Supplier):
    name = "reloadly"
    Settings = ReloadlySettings
    settings: ReloadlySettings
    # The webhook's HMAC covers the whole body, status included, and a timestamp whose
    # age is checked: what a verified webhook says can be applied as it stands.
    authoritative_callbacks = True
    # Reloadly documents customIdentifier as unique: a second top-up with one it has seen
    # is refused with DUPLICATED_CUSTOM_IDENTIFIER, which submit reads as unknown.
    refuses_reused_reference = True

    def __init__(self, settings: ReloadlySettings) -> None:
        super().__init__(settings)
        self._client_id = secret_from_env(settings.client_id_env)
        self._client_secret = secret_from_env(settings.client_secret_env)
        self._webhook_secret = secret_from_env(settings.webhook_secret_env)
        timeout = httpx.Timeout(settings.timeout)
        self._http = httpx.AsyncClient(base_url=settings.base_url, timeout=timeout)
        self._auth = httpx.AsyncClient(base_url=settings.auth_url, timeout=timeout)
        self._token: tuple[str, float] | None = None
        self._token_lock = asyncio.Lock()

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._auth.aclose()

    async def submit(self, order: UpstreamOrder) -> SupplierResult:
        operator = self.settings.operators.get(order.carrier)
        if operator is None:
            return SupplierResult.failed(
                code="NO_OPERATOR",
                message=f"no reloadly operatorId for {order.carrier}",
                failover=True,
            )
        body = {
            "operatorId": operator,
            "amount": order.face_value / 100,
            "useLocalAmount": True,
            "customIdentifier": order.reference,
            "recipientPhone": {"countryCode": self.settings.country_code, "number": order.phone_no},
        }
        response = await self._call("POST", "/topups", json=body)
        if isinstance(response, SupplierResult):
            return response
        if response.status_code == 200:
            return _read(response.content, Transaction, _from_transaction)
        return self._error(response)

    async def query(self, order: UpstreamOrder) -> SupplierResult:
        if order.supplier_ref:
            response = await self._call("GET", f"/topups/{order.supplier_ref}/status")
            reader = _from_status
        else:
            # The submit never told us its transaction id (it timed out): look it up by ours.
            params = {"customIdentifier": order.reference}
            response = await self._call("GET", "/topups/reports/transactions", params=params)
            reader = _from_report
        if isinstance(response, SupplierResult):
            return SupplierResult.unknown(code=response.code, message=response.message)
        if response.status_code != 200:
            # An error on a status query is about the query, not the order. That includes
            # TRANSACTION_NOT_FOUND for a transactionId: reloadly gave us that id, so it
            # has the order, whatever its status endpoint says now.
            error = _error_reply(response)
            return SupplierResult.unknown(
                code=error.errorCode or f"HTTP_{response.status_code}", message=error.message
            )
        return _read(response.content, StatusReply if order.supplier_ref else Report, reader)

    def parse_callback(self, request: CallbackRequest) -> Callback:
        timestamp = request.headers.get("x-reloadly-request-timestamp", "")
        signature = request.headers.get("x-reloadly-signature", "")
        expected = hmac.new(
            self._webhook_secret.encode(), request.body + b":" + timestamp.encode(), hashlib.sha256
        ).hexdigest()
        # As bytes: compare_digest raises on a str with non-ASCII characters.
        if not timestamp or not hmac.compare_digest(signature.lower().encode(), expected.encode()):
            log.warning("reloadly webhook with a bad signature")
            return Callback(WEBHOOK_REFUSED)
        if not _is_fresh(timestamp, self.settings.webhook_tolerance):
            # Genuine once, perhaps, but a replay now: a signature cannot make it current.
            log.warning("reloadly webhook refused: timestamp %r is not current", timestamp)
            return Callback(WEBHOOK_STALE)
        try:
            webhook = msgspec.json.decode(request.body, type=Webhook)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("reloadly webhook that is not a transaction: %r", request.body[:200])
            return Callback(WEBHOOK_OK)
        reference = webhook.data.customIdentifier
        return Callback(WEBHOOK_OK, reference, _from_transaction(webhook.data))

    def parse_statement(self, content: bytes) -> list[StatementLine]:
        rows = read_statement_csv(content, STATEMENT_COLUMNS)
        return [
            StatementLine(
                reference=row["customIdentifier"],
                outcome=_from_transaction(Transaction(row["status"])).outcome,
                charged=yuan_to_fen(row["cost"]),
                supplier_ref=row["transactionId"],
                phone_no=row["recipientPhone"],
            )
            for row in rows
        ]

    # -- HTTP with a bearer token ------------------------------------------------------

    async def _call(self, method: str, path: str, **kwargs) -> httpx.Response | SupplierResult:
        """Send with a valid token; a stale-token refusal is refreshed and sent once more."""
        for fresh in (False, True):
            try:
                token = await self._bearer(force=fresh)
            except NotSent as exc:
                return SupplierResult.not_sent(message=str(exc))
            headers = {"Authorization": f"Bearer {token}", "Accept": ACCEPT}
            response = await exchange(
                self._http, method, path, plugin=self.name, headers=headers, **kwargs
            )
            if isinstance(response, SupplierResult):
                return response
            stale = response.status_code == 401 and (
                _error_reply(response).errorCode in STALE_TOKEN
            )
            if not stale:
                return response
        return SupplierResult.not_sent(message="reloadly refused a freshly issued token")

    async def _bearer(self, force: bool) -> str:
        async with self._token_lock:
            if not force and self._token and self._token[1] > time.monotonic():
                return self._token[0]
            try:
                response = await self._auth.post(
                    "/oauth/token",
                    json={
                        "client_id": self._client_id,
                        "client_secret": self._client_secret,
                        "grant_type": "client_credentials",
                        "audience": self.settings.base_url,
                    },
                )
                token = msgspec.json.decode(response.content, type=Token)
            except (httpx.HTTPError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise NotSent(f"no reloadly token: {type(exc).__name__}") from exc
            lifetime = max(token.expires_in - TOKEN_MARGIN_SECONDS, token.expires_in / 2)
            self._token = (token.access_token, time.monotonic() + lifetime)
            return token.access_token

    def _error(self, response: httpx.Response) -> SupplierResult:
        error = _error_reply(response)
        if error.errorCode is None:
            # A bare 5xx (or anything without the supplier's error body) proves nothing.
            return unknown_answer(response, error.message)
        return classify_error(self.name, ERRORS, error.errorCode, error.message)


def _is_fresh(timestamp: str, tolerance: float) -> bool:
    """Whether a webhook's Unix-seconds timestamp is within ``tolerance`` of our clock."""
    if not timestamp.isascii() or not timestamp.isdigit():
        return False
    return abs(time.time() - int(timestamp)) <= tolerance


def _error_reply(response: httpx.Response) -> ErrorReply:
    try:
        return msgspec.json.decode(response.content, type=ErrorReply)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ErrorReply(None, response.text[:200])


def _read(content: bytes, kind: type, reader) -> SupplierResult:
    try:
        return reader(msgspec.json.decode(content, type=kind))
    except (msgspec.DecodeError, msgspec.ValidationError):
        return SupplierResult.unknown(
            code="UNREADABLE", message="reloadly answered something unreadable"
        )


def _from_transaction(transaction: Transaction) -> SupplierResult:
    ref = None if transaction.transactionId is None else str(transaction.transactionId)
    status = transaction.status.upper()
    if status == "SUCCESSFUL":
        return SupplierResult.succeeded(supplier_ref=ref, code=status)
    if status in ("PROCESSING", "PENDING"):
        return SupplierResult.pending(supplier_ref=ref, code=status)
    if status in ("FAILED", "REFUNDED"):
        return SupplierResult.failed(
            code=status, message=f"reloadly {status.lower()}", supplier_ref=ref
        )
    return SupplierResult.unknown(code=status, message="unexpected reloadly status")


def _from_status(reply: StatusReply) -> SupplierResult:
    transaction = reply.transaction or Transaction(reply.status)
    return _from_transaction(Transaction(reply.status, transaction.transactionId))


def _from_report(report: Report) -> SupplierResult:
    # Asked by our customIdentifier: an empty report is reloadly saying it has no such order.
    if not report.content:
        return SupplierResult.never_received(
            code="NOT_FOUND", message="reloadly has no transaction with this customIdentifier"
        )
    return _from_transaction(report.content[0])


@hookimpl
def register_suppliers(register):
    register(Reloadly)
