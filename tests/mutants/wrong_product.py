"""Always asks for the 10-yuan product, whatever the order is for."""

from __future__ import annotations

import topup_acme

import topup


class Plugin(topup_acme.Acme):
    async def submit(self, order: topup.UpstreamOrder) -> topup.SupplierResult:
        body = {
            "reference": order.reference,
            "msisdn": order.phone_no,
            "amount": 1000,  # MISTAKE: the order's own face_value
            "carrier": order.carrier,
            "callback_url": self.settings.callback_url,
        }
        answer = await self._exchange("POST", "/acme/v1/topups", json=body)
        if isinstance(answer, topup.SupplierResult):
            return answer
        if answer.error:
            return topup.classify_error(self.name, topup_acme.ERRORS, answer.error, answer.reason)
        return topup_acme._result(answer)
