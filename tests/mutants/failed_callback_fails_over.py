"""Reports a failure a callback announced as one that allows failover."""

from __future__ import annotations

import hashlib
import hmac

import msgspec
import topup_acme

import topup


class Plugin(topup_acme.Acme):
    def parse_callback(self, request: topup.CallbackRequest) -> topup.Callback:
        signature = request.headers.get("x-acme-signature", "")
        expected = hmac.new(self._key.encode(), request.body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature.lower().encode(), expected.encode()):
            return topup.Callback(topup.CallbackReply(401, b"bad signature"))
        try:
            reply = msgspec.json.decode(request.body, type=topup_acme.AcmeReply)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return topup.Callback(topup.CallbackReply(400, b"unreadable"))
        result = topup_acme._result(reply)
        if result.outcome is topup.Outcome.FAILED:
            # MISTAKE: only a submit's refusal before acceptance may allow failover.
            result = topup.SupplierResult.failed(
                code=result.code, message=result.message, supplier_ref=result.supplier_ref,
                failover=True,
            )  # fmt: skip
        return topup.Callback(topup.CallbackReply(200, b"ok"), reply.reference, result)
