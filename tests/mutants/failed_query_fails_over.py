"""Reports a failure a status query found as one that allows failover."""

from __future__ import annotations

import topup_acme

import topup


class Plugin(topup_acme.Acme):
    async def query(self, order: topup.UpstreamOrder) -> topup.SupplierResult:
        answer = await self._exchange("GET", f"/acme/v1/topups/{order.reference}")
        if isinstance(answer, topup.SupplierResult):
            return topup.SupplierResult.unknown(code=answer.code, message=answer.message)
        if answer.error == "NOT_FOUND":
            return topup.SupplierResult.never_received(code=answer.error, message=answer.reason)
        if answer.error:
            return topup.SupplierResult.unknown(code=answer.error, message=answer.reason)
        if answer.status == "failed":
            # MISTAKE: only a submit's refusal before acceptance may allow failover.
            return topup.SupplierResult.failed(
                code="failed", message=answer.reason, supplier_ref=answer.id, failover=True
            )
        return topup_acme._result(answer)
