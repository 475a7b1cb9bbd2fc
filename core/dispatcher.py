"""The background worker that moves accepted orders to a terminal state.

It leases due orders from the database (so several processes can share the work),
and for each one either starts the next attempt or queries the open one:

- an attempt is committed, with its reference, before ``submit`` is called;
- whatever ``submit`` does other than answer (time out, raise, return garbage)
  leaves the attempt UNKNOWN, and the order is then only ever queried;
- an order found in ``submitting`` after a crash is queried, never resubmitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable

from core.orders import READY_TO_SUBMIT, OrderRecord, OrderStore, State
from core.runtime import Runtime
from core.suppliers import Outcome, SupplierResult, UpstreamOrder

log = logging.getLogger("topup.dispatcher")


class Dispatcher:
    def __init__(self, store: OrderStore, runtime: Callable[[], Runtime]) -> None:
        self._store = store
        self._runtime = runtime
        self.owner = f"worker-{secrets.token_hex(6)}"
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None

    def wake(self) -> None:
        """Look for due work now rather than at the next scan."""
        self._wake.set()

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="topup-dispatcher")

    async def stop(self) -> None:
        """Stop without waiting for suppliers: open attempts are resumed by querying."""
        tasks = [t for t in (self._loop_task, *self._in_flight) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self) -> None:
        while True:
            try:
                claimed = await self._claim()
            except Exception:
                log.exception("could not claim work; retrying")
                claimed = 0
            if claimed == 0:
                await self._sleep(self._runtime().config.dispatch.scan_interval)

    async def _claim(self) -> int:
        settings = self._runtime().config.dispatch
        free = settings.concurrency - len(self._in_flight)
        if free <= 0:
            await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
            return len(self._in_flight)
        due = await self._store.claim_due(self.owner, int(settings.lease_seconds * 1000), free)
        for order in due:
            task = asyncio.create_task(self._work(order))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return len(due)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    async def _work(self, order: OrderRecord) -> None:
        try:
            if order.state in READY_TO_SUBMIT:
                await self._submit(order)
            else:
                await self._query(order)
        except Exception:
            # The order keeps its state; its lease runs out and it is looked at again.
            log.exception("order %s: dispatch step failed", order.order_no)

    async def _submit(self, order: OrderRecord) -> None:
        runtime = self._runtime()
        tried = await self._store.tried_plugins(order.order_no)
        plugin = runtime.router.next_plugin(order.supplier, tried)
        supplier = runtime.suppliers.get(plugin) if plugin else None
        if supplier is None:
            reason = f"没有可用的供应商: {order.supplier}"
            await self._store.fail_unroutable(order.order_no, self.owner, reason)
            log.warning("order %s failed: no supplier left to try (%s)", order.order_no, tried)
            return
        upstream = await self._store.start_attempt(order.order_no, self.owner, plugin)
        if upstream is None:
            return
        result = await self._call(supplier.submit, upstream, plugin)
        await self._apply(upstream, result, runtime, queries_before=0, is_query=False)

    async def _query(self, order: OrderRecord) -> None:
        runtime = self._runtime()
        open_attempt = await self._store.open_attempt(order.order_no)
        if open_attempt is None:
            log.error("order %s is %s with no open attempt", order.order_no, order.state)
            return
        attempt, upstream = open_attempt
        supplier = runtime.suppliers.get(attempt.plugin)
        if supplier is None:
            # The plugin was disabled with this attempt open: keep the order, keep asking.
            log.error(
                "order %s: attempt %s belongs to plugin %r, which is not enabled; "
                "it stays open until the plugin is back or an operator resolves it",
                order.order_no,
                upstream.reference,
                attempt.plugin,
            )
            delay = runtime.config.dispatch.query_delays[-1]
            await self._store.reschedule(order.order_no, self.owner, int(delay * 1000))
            return
        result = await self._call(supplier.query, upstream, attempt.plugin)
        await self._apply(
            upstream, result, runtime, queries_before=attempt.queries + 1, is_query=True
        )

    async def _apply(
        self,
        upstream: UpstreamOrder,
        result: SupplierResult,
        runtime: Runtime,
        *,
        queries_before: int,
        is_query: bool,
    ) -> None:
        delays = runtime.config.dispatch.query_delays
        delay = delays[min(queries_before, len(delays) - 1)]
        retry = result.outcome is Outcome.FAILED and result.failover
        if retry:
            tried = await self._store.tried_plugins(upstream.order_no)
            retry = runtime.router.next_plugin(upstream.supplier, tried) is not None
        applied = await self._store.apply(
            upstream.reference,
            result,
            retry_elsewhere=retry,
            next_query_delay_ms=int(delay * 1000),
            counts_as_query=is_query,
        )
        if applied is not None and applied.changed:
            log.info(
                "order %s -> %s (%s %s)",
                upstream.order_no,
                applied.state,
                result.code,
                result.message,
            )
            if applied.state is State.RETRYING:
                self.wake()

    async def _call(
        self,
        method: Callable[[UpstreamOrder], Awaitable[SupplierResult]],
        upstream: UpstreamOrder,
        plugin: str,
    ) -> SupplierResult:
        """Call a plugin; anything but a proper answer is UNKNOWN, never FAILED."""
        timeout = self._runtime().config.dispatch.call_timeout
        try:
            async with asyncio.timeout(timeout):
                result = await method(upstream)
        except TimeoutError:
            log.warning(
                "%s %s of %s: no answer within %ss",
                plugin,
                method.__name__,
                upstream.reference,
                timeout,
            )
            return SupplierResult.unknown("TIMEOUT", f"no answer within {timeout}s")
        except Exception as exc:
            log.exception("%s %s of %s raised", plugin, method.__name__, upstream.reference)
            return SupplierResult.unknown("PLUGIN_ERROR", type(exc).__name__)
        if not isinstance(result, SupplierResult):
            log.error("%s %s returned %r, not a SupplierResult", plugin, method.__name__, result)
            return SupplierResult.unknown("PLUGIN_ERROR", "invalid result")
        return result
