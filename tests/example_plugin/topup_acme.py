"""ACME top-up: the example supplier plugin of docs/writing-a-plugin.md.

It speaks the small "acme" JSON protocol that ``topup simulate`` also speaks
(docs/supplier-protocols.md), so the whole tutorial runs on one machine.
"""

from __future__ import annotations

import hashlib
import hmac

import httpx
import msgspec

import topup

# ACME's own error codes answering a top-up, read as its documentation says.
# Anything else is unknown (and raises an alert).
ERRORS: topup.ErrorTable = {
    # Our balance at ACME: another supplier may take the order; counts against ACME.
    "INSUFFICIENT_FUNDS": topup.ErrorClass.TRANSIENT,
    # No supplier can top up a number that does not exist: the order fails, no failover.
    "INVALID_MSISDN": (topup.ErrorClass.NO_FAILOVER, topup.FailReason.NUMBER_NOT_SUPPORTED),
    # Not a refusal: ACME may have taken the top-up. Query, never fail over.
    "SYSTEM_BUSY": topup.ErrorClass.UNKNOWN,
    "DUPLICATE_REFERENCE": topup.ErrorClass.UNKNOWN,  # probably paid the first time
}
STATUS = {
    "accepted": topup.SupplierResult.pending,
    "succeeded": topup.SupplierResult.succeeded,
}


class AcmeSettings(msgspec.Struct, forbid_unknown_fields=True):
    base_url: str
    # Where ACME should POST outcomes: this service's /callback/acme.
    callback_url: str
    api_key_env: str = "TOPUP_ACME_API_KEY"
    timeout: float = 10.0


class AcmeReply(msgspec.Struct):
    """Every ACME answer and callback: a status, or an error."""

    status: str = ""
    id: str | None = None
    reason: str = ""
    error: str | None = None
    reference: str | None = None


class Acme(topup.Supplier):
    name = "acme"
    Settings = AcmeSettings
    settings: AcmeSettings
    # ACME signs the whole callback body, status included, so a verified callback can be
    # applied as it stands; a replay only repeats what ACME said about that reference.
    authoritative_callbacks = True

    def __init__(self, settings: AcmeSettings) -> None:
        super().__init__(settings)
        self._key = topup.secret_from_env(settings.api_key_env)
        self._http = httpx.AsyncClient(
            base_url=settings.base_url,
            timeout=httpx.Timeout(settings.timeout),
            headers={"X-Api-Key": self._key},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def submit(self, order: topup.UpstreamOrder) -> topup.SupplierResult:
        body = {
            "reference": order.reference,
            "msisdn": order.phone_no,
            "amount": order.face_value,  # ACME counts in fen, as topup does
            "carrier": order.carrier,
            "callback_url": self.settings.callback_url,
        }
        answer = await self._exchange("POST", "/acme/v1/topups", json=body)
        if isinstance(answer, topup.SupplierResult):
            return answer  # not sent (another supplier may try), or unknown
        if answer.error:
            return topup.classify_error(self.name, ERRORS, answer.error, answer.reason)
        return _result(answer)

    async def query(self, order: topup.UpstreamOrder) -> topup.SupplierResult:
        answer = await self._exchange("GET", f"/acme/v1/topups/{order.reference}")
        if isinstance(answer, topup.SupplierResult):
            # Even a query that never left (not_sent) says nothing about the top-up.
            return topup.SupplierResult.unknown(code=answer.code, message=answer.message)
        if answer.error == "NOT_FOUND":
            return topup.SupplierResult.never_received(code=answer.error, message=answer.reason)
        if answer.error:
            # An error answering a query is about the query, not the order.
            return topup.SupplierResult.unknown(code=answer.error, message=answer.reason)
        return _result(answer)

    def parse_callback(self, request: topup.CallbackRequest) -> topup.Callback:
        signature = request.headers.get("x-acme-signature", "")
        expected = hmac.new(self._key.encode(), request.body, hashlib.sha256).hexdigest()
        # As bytes: compare_digest raises on a str with non-ASCII characters.
        if not hmac.compare_digest(signature.lower().encode(), expected.encode()):
            return topup.Callback(topup.CallbackReply(401, b"bad signature"))
        try:
            reply = msgspec.json.decode(request.body, type=AcmeReply)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return topup.Callback(topup.CallbackReply(400, b"unreadable"))
        ok = topup.CallbackReply(200, b"ok")
        return topup.Callback(ok, reply.reference, _result(reply))

    async def _exchange(self, method: str, path: str, **kwargs) -> AcmeReply | topup.SupplierResult:
        """One request: ACME's answer, or the result a failed exchange implies."""
        # Connection refused: not sent; a timeout or a dropped connection: unknown.
        response = await topup.exchange(self._http, method, path, plugin=self.name, **kwargs)
        if isinstance(response, topup.SupplierResult):
            return response
        try:
            return msgspec.json.decode(response.content, type=AcmeReply)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return topup.unknown_answer(response, "not ACME's JSON")  # a proxy's 502 page


def _result(reply: AcmeReply) -> topup.SupplierResult:
    """What an ACME status says, in an answer or a callback."""
    if reply.status == "failed":
        return topup.SupplierResult.failed(
            code="failed", message=reply.reason, supplier_ref=reply.id
        )
    make = STATUS.get(reply.status)
    if make is None:
        return topup.SupplierResult.unknown(code=reply.status or "NO_STATUS", message=reply.reason)
    return make(supplier_ref=reply.id, code=reply.status, message=reply.reason)


@topup.hookimpl
def register_suppliers(register):
    register(Acme)
