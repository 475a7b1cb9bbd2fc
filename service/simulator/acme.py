"""acme: the small JSON protocol of the "Writing a supplier plugin" tutorial."""

from __future__ import annotations

import hashlib
import hmac

import httpx
import msgspec
from litestar import Request, Response, Router, get, post

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

PROTOCOL = "acme"
JSON = "application/json"
MAX_AMOUNT_FEN = 100_000
STATUS = {Status.PROCESSING: "accepted", Status.SUCCEEDED: "succeeded", Status.FAILED: "failed"}
FAILURE_REASON = "the carrier declined the top-up"
# The supplier charges 99.0% of the face value, in thousandths so that prices stay in fen.
PRICE_PER_MILLE = 990
# How the faults of answers.CODED_FAULTS are answered: HTTP status and error.
CODED_FAULTS = {"busy": (503, "SYSTEM_BUSY"), "undocumented_error": (400, "E_UNDOCUMENTED")}
STATEMENT_HEADER = ("reference", "id", "msisdn", "amount", "charged", "status", "created_at")


class TopupRequest(msgspec.Struct):
    reference: str
    msisdn: str
    amount: int
    carrier: str = ""
    callback_url: str | None = None


def answer(status_code: int, payload: object) -> Response:
    return Response(msgspec.json.encode(payload), status_code=status_code, media_type=JSON)


def acme_id(tx: Transaction) -> str:
    return f"acm_{tx.seq:010d}"


def status_json(tx: Transaction) -> dict[str, str]:
    reason = FAILURE_REASON if tx.status is Status.FAILED else ""
    return {
        "reference": tx.reference,
        "id": acme_id(tx),
        "status": STATUS[tx.status],
        "reason": reason,
    }


def statement_line(tx: Transaction) -> tuple[str, ...]:
    """One line of the daily statement, in the order of ``STATEMENT_HEADER``."""
    return (
        tx.reference,
        acme_id(tx),
        tx.phone_no,
        # In fen, like the protocol's own amounts; only the charge is in yuan.
        str(tx.amount_fen),
        yuan(tx.charged_fen(PRICE_PER_MILLE)),
        STATUS[tx.status],
        beijing_time(tx.created_at),
    )


def _unauthorized(request: Request, sim: Simulator) -> Response | None:
    given = request.headers.get("x-api-key", "").encode()
    if hmac.compare_digest(given, sim.credentials.acme_api_key.encode()):
        return None
    return answer(401, {"error": "UNAUTHORIZED"})


@post("/topups", status_code=200)
async def submit(request: Request, sim: Simulator) -> Response:
    refused = _unauthorized(request, sim)
    if refused is not None:
        return refused
    try:
        asked = msgspec.json.decode(await request.body(), type=TopupRequest)
    except msgspec.DecodeError as exc:
        return answer(400, {"error": "BAD_REQUEST", "detail": str(exc)})
    if not is_reference(asked.reference, 1, 64):
        return answer(400, {"error": "BAD_REQUEST", "detail": "reference: letters and digits"})
    if not is_mobile_number(asked.msisdn):
        return answer(422, {"error": "INVALID_MSISDN"})
    if not 0 < asked.amount <= MAX_AMOUNT_FEN:
        return answer(422, {"error": "INVALID_AMOUNT"})
    verdict, tx, faults = await sim.submit(
        PROTOCOL,
        asked.reference,
        asked.msisdn,
        asked.amount,
        carrier=asked.carrier or None,
        callback_url=asked.callback_url,
    )
    if verdict is Verdict.DUPLICATE:
        reply = answer(409, {"error": "DUPLICATE_REFERENCE"})
    elif verdict is Verdict.REFUSED:
        reply = answer(402, {"error": "INSUFFICIENT_FUNDS"})
    else:
        # Per the protocol a submit answers "accepted", even when it settled at once.
        reply = answer(200, {"reference": tx.reference, "id": acme_id(tx), "status": "accepted"})
    return await bend_submit_answer(faults, reply, coded_fault)


def coded_fault(fault: str) -> Response:
    status_code, code = CODED_FAULTS[fault]
    return answer(status_code, {"error": code})


@get("/topups/{reference:str}")
async def query(request: Request, reference: str, sim: Simulator) -> Response:
    refused = _unauthorized(request, sim)
    if refused is not None:
        return refused
    tx = sim.find(PROTOCOL, reference)
    if tx is None:
        return answer(404, {"error": "NOT_FOUND"})
    return answer(200, status_json(tx))


def callback_for(sim: Simulator, tx: Transaction, bad_signature: bool) -> Callback | None:
    if not tx.callback_url:
        return None
    key = sim.credentials.acme_api_key + ("-wrong" if bad_signature else "")
    body = msgspec.json.encode(status_json(tx))
    signature = hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": JSON, "X-Acme-Signature": signature}
    return Callback(tx.callback_url, lambda: (body, headers), _acknowledged)


def _acknowledged(response: httpx.Response) -> bool:
    return response.is_success


def router() -> Router:
    return Router(path="/acme/v1", route_handlers=[submit, query])
