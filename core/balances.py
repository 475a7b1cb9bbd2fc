"""Our balance with each supplier, for the console: cached, refreshed in the background.

A page never waits for a supplier. ``read`` answers at once from what is cached and, when
that is older than ``max_age`` (or missing), starts one refresh in the background: every
enabled plugin is asked at once, each under a short timeout. Nobody looking means no
calls; many people looking means at most one round of calls a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping

import msgspec

from core.clock import now_ms
from core.suppliers import Supplier

log = logging.getLogger("topup.balances")

MAX_AGE_SECONDS = 60.0
TIMEOUT_SECONDS = 5.0


class Balance(msgspec.Struct, frozen=True):
    plugin: str
    # Fen; None when not known (not asked yet, not supported, or the call failed).
    fen: int | None = None
    # False when the plugin's protocol cannot tell its balance.
    supported: bool = True
    # When the figure in ``fen`` was read (ms), and why the latest call failed.
    checked_at: int | None = None
    error: str | None = None


class BalanceCache:
    def __init__(
        self,
        suppliers: Callable[[], Mapping[str, Supplier]],
        max_age: float = MAX_AGE_SECONDS,
        timeout: float = TIMEOUT_SECONDS,
    ) -> None:
        self._suppliers = suppliers
        self._max_age = max_age
        self._timeout = timeout
        self._known: dict[str, Balance] = {}
        self._started = -float("inf")
        self._task: asyncio.Task | None = None

    def read(self) -> dict[str, Balance]:
        """The balance of every enabled plugin as last known; never waits."""
        stale = time.monotonic() - self._started > self._max_age
        if stale and (self._task is None or self._task.done()):
            self._started = time.monotonic()
            self._task = asyncio.create_task(self.refresh(), name="topup-balances")
        return {name: self._known.get(name, Balance(name)) for name in self._suppliers()}

    async def refresh(self) -> None:
        suppliers = dict(self._suppliers())
        results = await asyncio.gather(*(self._ask(n, s) for n, s in suppliers.items()))
        self._known = {balance.plugin: balance for balance in results}

    async def _ask(self, name: str, supplier: Supplier) -> Balance:
        try:
            async with asyncio.timeout(self._timeout):
                fen = await supplier.balance()
        except Exception as exc:
            reason = "no answer in time" if isinstance(exc, TimeoutError) else repr(exc)
            log.warning("%s: balance query failed: %s", name, reason)
            previous = self._known.get(name, Balance(name))
            return msgspec.structs.replace(previous, error=reason)
        if fen is None or fen is NotImplemented:
            return Balance(name, supported=False)
        return Balance(name, fen=int(fen), checked_at=now_ms())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
