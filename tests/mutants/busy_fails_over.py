"""Reads ACME's "system busy" as a refusal that allows failover. ACME may well have made
the top-up: the next supplier pays the phone a second time."""

from __future__ import annotations

import topup_acme

import topup

ERRORS: topup.ErrorTable = {
    **topup_acme.ERRORS,
    "SYSTEM_BUSY": topup.ErrorClass.DEFINITIVE,  # MISTAKE: it says nothing certain
}


class Plugin(topup_acme.Acme):
    async def submit(self, order: topup.UpstreamOrder) -> topup.SupplierResult:
        body = {
            "reference": order.reference,
            "msisdn": order.phone_no,
            "amount": order.face_value,
            "carrier": order.carrier,
            "callback_url": self.settings.callback_url,
        }
        answer = await self._exchange("POST", "/acme/v1/topups", json=body)
        if isinstance(answer, topup.SupplierResult):
            return answer
        if answer.error:
            return topup.classify_error(self.name, ERRORS, answer.error, answer.reason)
        return topup_acme._result(answer)
