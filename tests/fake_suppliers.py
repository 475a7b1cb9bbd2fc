"""A scripted supplier plugin for tests, loaded into a service with TOPUP_PLUGINS.

Its behaviour is chosen per phone number by ``script`` in its settings, and every
call it receives is appended to ``journal`` (one JSON line per call), so tests can
see from outside the service exactly what was sent upstream and how often.

Behaviours:
- ``succeed`` (default): submit is acknowledged, the query says success;
- ``fail``: submit is acknowledged, the query says failed;
- ``hang``: submit never answers (the core's call timeout or a crash ends it),
  the query says success;
- ``timeout-then-succeed``: submit answers unknown after a short wait, query says success;
- ``slow``: submit answers "processing" after ``slow_seconds``, the query says success;
- ``reject``: submit is refused before acceptance for want of balance (failover
  allowed; transient: it counts towards opening the plugin's circuit);
- ``raise``: submit raises an exception; the query says success;
- ``pending``: the query never settles.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import msgspec

import topup


class ScriptedSettings(msgspec.Struct, forbid_unknown_fields=True):
    journal: str
    script: dict[str, str] = {}
    slow_seconds: float = 3.0


class Scripted(topup.Supplier):
    name = "scripted"
    Settings = ScriptedSettings
    settings: ScriptedSettings

    def _record(self, call: str, order: topup.UpstreamOrder) -> str:
        behaviour = self.settings.script.get(order.phone_no, "succeed")
        line = {
            "call": call,
            "plugin": self.name,
            "reference": order.reference,
            "order_no": order.order_no,
            "phone_no": order.phone_no,
            "pid": os.getpid(),
            "at": time.time(),
        }
        with open(self.settings.journal, "a", encoding="utf-8") as journal:
            journal.write(json.dumps(line) + "\n")
        return behaviour

    async def submit(self, order: topup.UpstreamOrder) -> topup.SupplierResult:
        behaviour = self._record("submit", order)
        if behaviour == "hang":
            await asyncio.sleep(3600)
        if behaviour == "slow":
            await asyncio.sleep(self.settings.slow_seconds)
        if behaviour == "timeout-then-succeed":
            await asyncio.sleep(0.1)
            return topup.SupplierResult.unknown(code="TIMEOUT", message="read timed out")
        if behaviour == "reject":
            return topup.SupplierResult.failed(
                code="NO_BALANCE", message="余额不足", failover=True, transient=True
            )
        if behaviour == "raise":
            raise ConnectionResetError("connection reset after sending")
        return topup.SupplierResult.pending(supplier_ref=f"S-{order.reference}")

    async def query(self, order: topup.UpstreamOrder) -> topup.SupplierResult:
        behaviour = self._record("query", order)
        if behaviour == "fail":
            return topup.SupplierResult.failed(code="9", message="撤销")
        if behaviour == "pending":
            return topup.SupplierResult.pending()
        return topup.SupplierResult.succeeded(supplier_ref=f"S-{order.reference}")

    def parse_callback(self, request: topup.CallbackRequest) -> topup.Callback:
        # A plugin with a bug: whatever it is sent, reading it raises.
        raise ValueError(f"cannot read {request.body[:20]!r}")


class Backup(Scripted):
    """The same script under another name, to stand second in a route."""

    name = "backup"


@topup.hookimpl
def register_suppliers(register):
    register(Scripted)
    register(Backup)


def read_journal(path: str) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as journal:
            return [json.loads(line) for line in journal if line.strip()]
    except FileNotFoundError:
        return []
