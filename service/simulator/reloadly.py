"""reloadly: the OAuth2 JSON API in the style of Reloadly Airtime."""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import httpx
import msgspec
from litestar import Request, Response, Router, get, post
from litestar.di import Provide
from litestar.params import Parameter

from service.simulator.answers import bend_submit_answer
from service.simulator.state import (
    Callback,
    Simulator,
    Status,
    Transaction,
    Verdict,
    beijing_time,
    is_mobile_number,
    is_reference,
    yuan,
)

PROTOCOL = "reloadly"
JSON = "application/json"
MAX_AMOUNT_YUAN = 1000
# The supplier charges 99.5% of the face value, in thousandths so that prices stay in fen.
PRICE_PER_MILLE = 995
STATUS = {
    Status.PROCESSING: "PROCESSING",
    Status.SUCCEEDED: "SUCCESSFUL",
    Status.FAILED: "FAILED",
}
STATEMENT_HEADER = (
    "customIdentifier",
    "transactionId",
    "recipientPhone",
    "requestedAmount",
    "cost",
    "status",
    "transactionDate",
)


class TokenRequest(msgspec.Struct):
    client_id: str
    client_secret: str
    grant_type: str
    audience: str = ""


class RecipientPhone(msgspec.Struct, rename="camel"):
    country_code: str
    number: str


class TopupRequest(msgspec.Struct, rename="camel"):
    operator_id: int
    amount: float
    custom_identifier: str
    recipient_phone: RecipientPhone
    use_local_amount: bool = False


class ErrorBody(msgspec.Struct, rename="camel"):
    time_stamp: str
    message: str
    path: str
    error_code: str
    info_link: None = None
    details: list[Any] = msgspec.field(default_factory=list)


class TokenStore:
    """Issued access tokens and when they stop working."""

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}

    def issue(self, ttl: float) -> str:
        token = secrets.token_urlsafe(32)
        self._expiry[token] = time.monotonic() + ttl
        return token

    def check(self, authorization: str) -> str | None:
        """None when the token may be used, else the errorCode that refuses it."""
        scheme, _, token = authorization.partition(" ")
        expiry = self._expiry.get(token.strip()) if scheme.lower() == "bearer" else None
        if expiry is None:
            return "INVALID_TOKEN"
        return "TOKEN_EXPIRED" if time.monotonic() >= expiry else None


MESSAGES = {
    "INVALID_CREDENTIALS": "Invalid client credentials",
    "INVALID_TOKEN": "Invalid access token",
    "TOKEN_EXPIRED": "Access token is expired",
    "INSUFFICIENT_BALANCE": "Insufficient balance",
    "INVALID_PHONE_NUMBER": "Invalid phone number",
    "INVALID_AMOUNT_FOR_OPERATOR": "The amount is not valid for this operator",
    "DUPLICATED_CUSTOM_IDENTIFIER": "A transaction with this custom identifier already exists",
    "TRANSACTION_NOT_FOUND": "Transaction not found",
    "INTERNAL_SERVER_ERROR": "An internal error occurred, please check the transaction status",
}
# How the faults of answers.CODED_FAULTS are answered: HTTP status and errorCode.
CODED_FAULTS = {
    "busy": (500, "INTERNAL_SERVER_ERROR"),
    "undocumented_error": (400, "SOMETHING_NOBODY_DOCUMENTED"),
}


def error(request: Request, status_code: int, code: str, message: str | None = None) -> Response:
    body = ErrorBody(
        time_stamp=datetime.now(UTC).isoformat(timespec="milliseconds"),
        message=message or MESSAGES.get(code, code),
        path=request.url.path,
        error_code=code,
    )
    return Response(msgspec.json.encode(body), status_code=status_code, media_type=JSON)


def ok(payload: Any) -> Response:
    return Response(msgspec.json.encode(payload), media_type=JSON)


def transaction_json(tx: Transaction) -> dict[str, Any]:
    amount = tx.amount_fen / 100
    return {
        "transactionId": tx.seq,
        "status": STATUS[tx.status],
        "operatorTransactionId": f"CM{tx.seq:012d}",
        "customIdentifier": tx.reference,
        "recipientPhone": tx.phone_no,
        "operatorId": tx.operator_id,
        "requestedAmount": amount,
        "deliveredAmount": amount,
        "deliveredAmountCurrencyCode": "CNY",
        # Beijing time, as in the statement, so that both date a transaction alike.
        "transactionDate": beijing_time(tx.created_at),
    }


def statement_line(tx: Transaction) -> tuple[str, ...]:
    """One line of the daily statement, in the order of ``STATEMENT_HEADER``."""
    return (
        tx.reference,
        str(tx.seq),
        tx.phone_no,
        yuan(tx.amount_fen),
        yuan(tx.charged_fen(PRICE_PER_MILLE)),
        STATUS[tx.status],
        beijing_time(tx.created_at),
    )


@post("/oauth/token", status_code=200)
async def issue_token(request: Request, sim: Simulator, tokens: TokenStore) -> Response:
    try:
        asked = msgspec.json.decode(await request.body(), type=TokenRequest)
    except msgspec.DecodeError as exc:
        return error(request, 400, "BAD_REQUEST", str(exc))
    creds = sim.credentials
    known = (creds.reloadly_client_id, creds.reloadly_client_secret)
    given = f"{asked.client_id}\0{asked.client_secret}".encode()
    if not hmac.compare_digest(given, "\0".join(known).encode()):
        return error(request, 401, "INVALID_CREDENTIALS")
    if asked.grant_type != "client_credentials":
        return error(
            request, 400, "UNSUPPORTED_GRANT_TYPE", "grant_type must be client_credentials"
        )
    ttl = sim.options.token_ttl
    return ok(
        {
            "access_token": tokens.issue(ttl),
            "scope": "send-topups get-topups-reports",
            "expires_in": math.ceil(ttl),
            "token_type": "Bearer",
        }
    )


def _refuse_token(request: Request, tokens: TokenStore) -> Response | None:
    refused = tokens.check(request.headers.get("authorization", ""))
    return error(request, 401, refused) if refused else None


def _invalid_topup(request: Request, asked: TopupRequest) -> Response | None:
    phone = asked.recipient_phone
    if phone.country_code.upper() != "CN" or not is_mobile_number(phone.number):
        return error(request, 400, "INVALID_PHONE_NUMBER")
    if not asked.use_local_amount:
        message = "The simulator sells local (CNY) amounts only: set useLocalAmount"
        return error(request, 400, "INVALID_AMOUNT_FOR_OPERATOR", message)
    if not 0 < asked.amount <= MAX_AMOUNT_YUAN:
        return error(request, 400, "INVALID_AMOUNT_FOR_OPERATOR")
    if not is_reference(asked.custom_identifier, 1, 150):
        return error(request, 400, "BAD_REQUEST", "customIdentifier: letters and digits")
    return None


@post("/topups", status_code=200)
async def topup(request: Request, sim: Simulator, tokens: TokenStore) -> Response:
    refused = _refuse_token(request, tokens)
    if refused is not None:
        return refused
    try:
        asked = msgspec.json.decode(await request.body(), type=TopupRequest)
    except msgspec.DecodeError as exc:
        return error(request, 400, "BAD_REQUEST", str(exc))
    invalid = _invalid_topup(request, asked)
    if invalid is not None:
        return invalid
    verdict, tx, faults = await sim.submit(
        PROTOCOL,
        asked.custom_identifier,
        asked.recipient_phone.number,
        round(asked.amount * 100),
        operator_id=asked.operator_id,
    )
    if verdict is Verdict.DUPLICATE:
        answer = error(request, 409, "DUPLICATED_CUSTOM_IDENTIFIER")
    elif verdict is Verdict.REFUSED:
        answer = error(request, 400, "INSUFFICIENT_BALANCE")
    else:
        answer = ok(transaction_json(tx))
    return await bend_submit_answer(
        faults, answer, lambda fault: error(request, *CODED_FAULTS[fault])
    )


@get("/topups/{transaction_id:int}/status")
async def status(
    request: Request, transaction_id: int, sim: Simulator, tokens: TokenStore
) -> Response:
    refused = _refuse_token(request, tokens)
    if refused is not None:
        return refused
    tx = sim.find_by_seq(PROTOCOL, transaction_id)
    if tx is None:
        return error(request, 404, "TRANSACTION_NOT_FOUND")
    return ok(
        {
            "code": None,
            "message": None,
            "status": STATUS[tx.status],
            "transaction": transaction_json(tx),
        }
    )


@get("/topups/reports/transactions")
async def report(
    request: Request,
    sim: Simulator,
    tokens: TokenStore,
    reference: Annotated[str | None, Parameter(query="customIdentifier")] = None,
) -> Response:
    refused = _refuse_token(request, tokens)
    if refused is not None:
        return refused
    found = [
        transaction_json(tx)
        for tx in sim.transactions(PROTOCOL)
        if tx.status is not Status.REFUSED and reference in (None, tx.reference)
    ]
    return ok({"content": found, "totalElements": len(found)})


def callback_for(sim: Simulator, tx: Transaction, bad_signature: bool) -> Callback | None:
    url = sim.options.reloadly_webhook
    if not url:
        return None
    secret = sim.credentials.reloadly_webhook_secret + ("-wrong" if bad_signature else "")
    event = {
        "id": uuid.uuid4().hex,
        "type": "airtime_transaction.status",
        "data": transaction_json(tx),
    }
    body = msgspec.json.encode(event)

    def sign() -> tuple[bytes, dict[str, str]]:
        stamp = str(int(time.time()))
        signature = hmac.new(secret.encode(), body + b":" + stamp.encode(), hashlib.sha256)
        return body, {
            "Content-Type": JSON,
            "X-Reloadly-Request-Timestamp": stamp,
            "X-Reloadly-Signature": signature.hexdigest(),
        }

    return Callback(url, sign, _acknowledged)


def _acknowledged(response: httpx.Response) -> bool:
    return response.is_success


def router() -> Router:
    tokens = TokenStore()
    return Router(
        path="/",
        route_handlers=[issue_token, topup, status, report],
        dependencies={"tokens": Provide(lambda: tokens, sync_to_thread=False)},
    )
