"""Checks a callback's signature, then takes every genuine callback for a success."""

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
        # MISTAKE: the status it carries may be "failed" or "accepted".
        result = topup.SupplierResult.succeeded(supplier_ref=reply.id, code=reply.status)
        return topup.Callback(topup.CallbackReply(200, b"ok"), reply.reference, result)
