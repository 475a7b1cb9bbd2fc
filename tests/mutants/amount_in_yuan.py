"""Sends the amount in yuan to a supplier that counts in fen (UpstreamOrder.face_value is
in fen): the phone gets a hundredth of what the partner paid for."""

from __future__ import annotations

import topup_acme

import topup


class Plugin(topup_acme.Acme):
    async def submit(self, order: topup.UpstreamOrder) -> topup.SupplierResult:
        body = {
            "reference": order.reference,
            "msisdn": order.phone_no,
            "amount": order.face_value // 100,  # MISTAKE: ACME counts in fen, as topup does
            "carrier": order.carrier,
            "callback_url": self.settings.callback_url,
        }
        answer = await self._exchange("POST", "/acme/v1/topups", json=body)
        if isinstance(answer, topup.SupplierResult):
            return answer
        if answer.error:
            return topup.classify_error(self.name, topup_acme.ERRORS, answer.error, answer.reason)
        return topup_acme._result(answer)
