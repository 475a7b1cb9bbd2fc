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

# ACME's own error codes, read as its documentation says. Anything else is unknown.
ERRORS = {
    "INSUFFICIENT_FUNDS": topup.ErrorClass.DEFINITIVE,
    "INVALID_MSISDN": topup.ErrorClass.DEFINITIVE,
    "DUPLICATE_REFERENCE": topup.ErrorClass.UNKNOWN,
    "NOT_FOUND": topup.ErrorClass.UNKNOWN,
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
            "amount": order.face_value,
            "carrier": order.carrier,
            "callback_url": self.settings.callback_url,
        }
        return await self._exchange("POST", "/acme/v1/topups", json=body)

    async def query(self, order: topup.UpstreamOrder) -> topup.SupplierResult:
        result = await self._exchange("GET", f"/acme/v1/topups/{order.reference}")
        if result.outcome is topup.Outcome.FAILED and result.failover:
            # A refused status query says nothing about the top-up itself.
            return topup.SupplierResult.unknown(result.code, result.message)
        return result

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

    async def _exchange(self, method: str, path: str, **kwargs) -> topup.SupplierResult:
        # Connection refused: not sent; a timeout or a dropped connection: unknown.
        response = await topup.exchange(self._http, method, path, plugin=self.name, **kwargs)
        if isinstance(response, topup.SupplierResult):
            return response
        try:
            reply = msgspec.json.decode(response.content, type=AcmeReply)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return topup.unknown_answer(response, "unreadable")
        return _result(reply)


def _result(reply: AcmeReply) -> topup.SupplierResult:
    if reply.error:
        return topup.classify_error("acme", ERRORS, reply.error, reply.reason)
    if reply.status == "failed":
        return topup.SupplierResult.failed("failed", reply.reason, supplier_ref=reply.id)
    make = STATUS.get(reply.status)
    if make is None:
        return topup.SupplierResult.unknown(reply.status or "NO_STATUS", reply.reason)
    return make(supplier_ref=reply.id, code=reply.status, message=reply.reason)


@topup.hookimpl
def register_suppliers(register):
    register(Acme)
