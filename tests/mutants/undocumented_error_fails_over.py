"""Reads any error code it was not written for as a refusal that allows failover, rather
than as unknown (which topup.classify_error does)."""

from __future__ import annotations

import topup_acme

import topup


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
        if answer.error in topup_acme.ERRORS:
            return topup.classify_error(self.name, topup_acme.ERRORS, answer.error, answer.reason)
        if answer.error:
            # MISTAKE: a code nobody documented says nothing certain: it is unknown.
            return topup.SupplierResult.failed(
                code=answer.error, message=answer.reason, failover=True
            )
        return topup_acme._result(answer)
