"""The sandbox supplier: no network, outcome chosen by the phone number's last digit.

- ends in 4: 充值失败;
- ends in 7: the submit times out, so the outcome is unknown; a later query says success;
- anything else: 充值成功.

Every order reaches a terminal state within a few seconds, so anyone can watch every
path of the lifecycle with ``make run`` and curl. With ``settle_seconds`` > 0 the
sandbox behaves like most real suppliers: it accepts the order (充值中) and only a
status query made that long after the submit reports the outcome.
"""

from __future__ import annotations

import asyncio
import time

import msgspec

from topup import Supplier, SupplierResult, UpstreamOrder, hookimpl


class SandboxSettings(msgspec.Struct, forbid_unknown_fields=True):
    # How long a "7" submit hangs before it times out.
    timeout_after: float = 0.5
    # 0: the submit answers the outcome at once. Otherwise it answers "processing", and
    # the outcome is told by queries made at least this long after the submit.
    settle_seconds: float = 0.0


class Sandbox(Supplier):
    name = "sandbox"
    Settings = SandboxSettings
    settings: SandboxSettings

    async def submit(self, order: UpstreamOrder) -> SupplierResult:
        if order.phone_no.endswith("7"):
            # What a real plugin does when its HTTP call times out: admit it does not know.
            await asyncio.sleep(self.settings.timeout_after)
            return SupplierResult.unknown(code="TIMEOUT", message="沙箱: 尾号 7 提交超时")
        if self.settings.settle_seconds > 0:
            return SupplierResult.pending(supplier_ref=f"SBX{order.reference}", code="0")
        return _outcome(order)

    async def query(self, order: UpstreamOrder) -> SupplierResult:
        settled_at = order.created_at / 1000 + self.settings.settle_seconds
        if time.time() < settled_at and not order.phone_no.endswith("7"):
            return SupplierResult.pending(supplier_ref=f"SBX{order.reference}", code="0")
        return _outcome(order)


def _outcome(order: UpstreamOrder) -> SupplierResult:
    if order.phone_no.endswith("4"):
        return SupplierResult.failed(code="SANDBOX_DECLINED", message="沙箱: 尾号 4 充值失败")
    return SupplierResult.succeeded(supplier_ref=f"SBX{order.reference}", code="1")


@hookimpl
def register_suppliers(register):
    register(Sandbox)
