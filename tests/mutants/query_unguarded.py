"""Returns what topup.exchange says about a status query as it stands: a query that never
left comes back as not_sent, a failure that allows failover, though the top-up may have
been made."""

from __future__ import annotations

import topup_acme

import topup


class Plugin(topup_acme.Acme):
    async def query(self, order: topup.UpstreamOrder) -> topup.SupplierResult:
        answer = await self._exchange("GET", f"/acme/v1/topups/{order.reference}")
        if isinstance(answer, topup.SupplierResult):
            return answer  # MISTAKE: a query that never left says nothing: unknown
        if answer.error == "NOT_FOUND":
            return topup.SupplierResult.never_received(code=answer.error, message=answer.reason)
        if answer.error:
            return topup.SupplierResult.unknown(code=answer.error, message=answer.reason)
        return topup_acme._result(answer)
