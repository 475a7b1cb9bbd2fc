"""The background worker that moves accepted orders to a terminal state.

It claims due orders through the lifecycle (core/lifecycle/claim.py: leased, so
several processes can share the work), which decides each one's next step in the
claim's own transaction, with the route plan taken just before: send the attempt it
has just recorded, or query the open one. The dispatcher makes those calls and hands
the answers back to the lifecycle; it writes nothing itself.

- an attempt is committed, with its reference, before ``submit`` is called;
- whatever ``submit`` does other than answer (time out, raise, return garbage)
  leaves the attempt UNKNOWN, and the order is then only ever queried;
- an order found in ``submitting`` after a crash is queried, never resubmitted;
- an outcome still open after ``dispatch.max_queries`` queries goes to manual review.

Supplier callbacks arrive through ``handle_callback``. A plugin whose callbacks are
authoritative (their signature covers the outcome) has them applied by the same rules
as query results; any other plugin's verified callback only makes its order due now,
so that a worker queries the supplier and applies what the query says.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy import Connection

from core import circuits, metrics
from core.clock import now_ms
from core.deadlines import SharedDeadlines
from core.lifecycle import Applied, Lifecycle, Query, Send, Step, Unroutable
from core.lifecycle.resend import UNANSWERED
from core.order_store import OrderStore
from core.orders import OPEN_ATTEMPT, AttemptRecord, State
from core.routing import CircuitBreaker, RoutePlan
from core.runtime import Runtime
from core.suppliers import (
    CallbackReply,
    CallbackRequest,
    Outcome,
    Supplier,
    SupplierResult,
    UpstreamOrder,
    alerts,
)
from core.worker_loop import LeasedWorker

log = logging.getLogger("topup.dispatcher")

ROUTINE = frozenset({State.SUBMITTING, State.PENDING, State.SUCCEEDED})
# States whose arrival topup_orders_total counts (acceptance is counted where it happens).
COUNTED = frozenset({State.SUCCEEDED, State.FAILED, State.REVIEW})
NO_SUCH_PLUGIN = CallbackReply(404, b"no such supplier plugin")
UNREADABLE_CALLBACK = CallbackReply(400, b"callback could not be read")
# A plugin whose callback parsing raises gets its traceback logged at most this often;
# anyone can post callbacks, and a traceback per post would let them flood the log.
CALLBACK_TRACEBACK_SECONDS = 60.0
CIRCUIT_PUBLISH_SECONDS = 1.0
# Where a supplier's answer came from: only submit's may move an order to another supplier.
SUBMIT, QUERY, CALLBACK = "submit", "query", "callback"


class Dispatcher:
    def __init__(
        self, lifecycle: Lifecycle, store: OrderStore, runtime: Callable[[], Runtime]
    ) -> None:
        self._lifecycle = lifecycle
        self._store = store
        self._runtime = runtime
        self.breaker = CircuitBreaker()
        self._worker = LeasedWorker(
            lifecycle.db,
            "dispatcher",
            self._claim,
            self._work,
            lambda: self._runtime().config.dispatch,
            self._make_due,
            after_claim=self._publish_circuits,
            log=log,
        )
        self.owner = self._worker.owner
        # Per plugin: until when (event-loop time) a failing parse_callback logs one line.
        self._quiet_until: dict[str, float] = {}
        self._circuits_published = 0.0
        self._deadlines = SharedDeadlines()

    def wake(self) -> None:
        """Look for due work now rather than at the next scan."""
        self._worker.wake()

    def start(self) -> None:
        self._worker.start()

    async def stop(self) -> None:
        """Stop without waiting for suppliers: open attempts are resumed by querying."""
        await self._worker.stop()

    # -- the work loop ----------------------------------------------------------------

    def _publish_circuits(self) -> None:
        """Circuit gauges, at most once a second: a circuit's cool-down ends by itself."""
        now = time.monotonic()
        if now - self._circuits_published < CIRCUIT_PUBLISH_SECONDS:
            return
        self._circuits_published = now
        for plugin in self._runtime().suppliers:
            metrics.circuit(plugin, not self.breaker.available(plugin))

    async def _claim(self, owner: str, limit: int) -> list[tuple[Step, Runtime]]:
        runtime = self._runtime()
        settings = runtime.config.dispatch
        steps = await self._lifecycle.claim(
            owner,
            int(settings.lease_seconds * 1000),
            limit,
            self.route_plan(runtime),
            takeover_ms=int(settings.takeover_seconds * 1000),
        )
        return [(step, runtime) for step in steps]

    async def run_once(self) -> int:
        """One claim, and every step it claimed carried to its end; how many there were.

        The loop's work without the loop (no heartbeat, no waiting): for in-process tests
        that move a fake clock between rounds, and for tools.
        """
        claimed = await self._claim(self.owner, self._runtime().config.dispatch.claim_batch)
        await asyncio.gather(*(self._work(item) for item in claimed))
        return len(claimed)

    def _make_due(self, conn: Connection, owners: Sequence[str]) -> int:
        lease_ms = int(self._runtime().config.dispatch.lease_seconds * 1000)
        return self._lifecycle.make_due(conn, owners, lease_ms)

    def route_plan(self, runtime: Runtime) -> RoutePlan:
        """Routing as this claim will decide it: enabled plugins whose circuit is closed."""
        usable = frozenset(p for p in runtime.suppliers if self.breaker.available(p))
        return RoutePlan(runtime.router, runtime.catalog, usable)

    async def _work(self, claimed: tuple[Step, Runtime]) -> None:
        step, runtime = claimed
        try:
            if isinstance(step, Send):
                await self._send(step.upstream, step.plugin, runtime)
            elif isinstance(step, Query):
                await self._query(step.attempt, step.upstream, runtime)
            else:
                self._unroutable(step)
        except Exception:
            # The order keeps its state; its lease runs out and it is looked at again.
            log.exception("order %s: dispatch step failed", _order_no(step))

    def _unroutable(self, step: Unroutable) -> None:
        metrics.order_reached(State.FAILED, step.order.carrier, "none")
        log.warning(
            "order %s failed: no supplier left to try (tried %s, open circuits %s)",
            step.order.order_no,
            step.tried,
            self.breaker.open_plugins(),
        )

    async def _send(self, upstream: UpstreamOrder, plugin: str, runtime: Runtime) -> None:
        """Submit a recorded attempt, once, and apply the answer."""
        supplier = runtime.suppliers.get(plugin)
        if supplier is None:
            # Disabled between the attempt's record and now: it was never sent, but the
            # attempt exists, so the lease runs out and the order is queried (unknown).
            log.error("attempt %s: plugin %r is not enabled", upstream.reference, plugin)
            return
        result = await self._call(supplier.submit, upstream, plugin)
        await self._apply(plugin, upstream, result, runtime, queries_done=0, source=SUBMIT)

    async def _query(self, attempt: AttemptRecord, upstream: UpstreamOrder, runtime: Runtime):
        supplier = runtime.suppliers.get(attempt.plugin)
        if supplier is None:
            # The plugin was disabled with this attempt open: keep the order, keep asking.
            log.error(
                "order %s: attempt %s belongs to plugin %r, which is not enabled; "
                "it stays open until the plugin is back or an operator resolves it",
                upstream.order_no,
                upstream.reference,
                attempt.plugin,
            )
            delay = runtime.config.dispatch.query_delays[-1]
            await self._lifecycle.reschedule(upstream.order_no, self.owner, int(delay * 1000))
            return
        result = await self._call(supplier.query, upstream, attempt.plugin)
        if self._may_resend(supplier, attempt, result) and await self._resend(
            upstream, attempt.plugin, runtime
        ):
            return
        await self._apply(
            attempt.plugin,
            upstream,
            result,
            runtime,
            queries_done=attempt.queries + 1,
            source=QUERY,
        )

    @staticmethod
    def _may_resend(supplier: Supplier, attempt: AttemptRecord, result: SupplierResult) -> bool:
        return (
            result.no_such_order
            and supplier.refuses_reused_reference
            and not attempt.resent
            and attempt.state in UNANSWERED
        )

    async def _resend(self, upstream: UpstreamOrder, plugin: str, runtime: Runtime) -> bool:
        """Send an attempt the supplier never received again, with the same reference,
        once; False when the lifecycle does not allow it (too soon, or done already)."""
        settings = runtime.config.dispatch
        min_age_ms = int((settings.call_timeout + settings.resend_margin) * 1000)
        again = await self._lifecycle.resend(upstream.reference, self.owner, min_age_ms)
        if again is None:
            return False
        log.warning(
            "order %s: %s has no attempt %s; sent again with the same reference",
            upstream.order_no,
            plugin,
            upstream.reference,
        )
        await self._send(again, plugin, runtime)
        return True

    # -- applying results -------------------------------------------------------------

    async def handle_callback(self, plugin: str, request: CallbackRequest) -> CallbackReply:
        """Verify a supplier callback with its plugin, then apply what it says (an
        authoritative plugin) or query the supplier about it (any other)."""
        runtime = self._runtime()
        supplier = runtime.suppliers.get(plugin)
        if supplier is None:
            return NO_SUCH_PLUGIN
        try:
            callback = supplier.parse_callback(request)
        except Exception as exc:
            self._log_plugin_failure(plugin, exc)
            return UNREADABLE_CALLBACK
        if callback.result is None or callback.reference is None:
            log.warning("%s: callback ignored (%s)", plugin, callback.reply.status_code)
            return callback.reply
        found = await self._store.attempt(callback.reference)
        if found is None or found[0].plugin != plugin:
            alerts.warning("%s: callback for unknown reference %r", plugin, callback.reference)
            return callback.reply
        attempt, upstream = found
        if supplier.authoritative_callbacks:
            await self._apply(
                plugin,
                upstream,
                callback.result,
                runtime,
                queries_done=attempt.queries,
                source=CALLBACK,
            )
        else:
            await self._query_soon(plugin, attempt, upstream, callback.result)
        return callback.reply

    def _log_plugin_failure(self, plugin: str, exc: Exception) -> None:
        """A bug in the plugin: the traceback once a minute per plugin, one line between."""
        now = asyncio.get_running_loop().time()
        if now < self._quiet_until.get(plugin, 0.0):
            log.error("%s: callback could not be parsed: %r (traceback above)", plugin, exc)
            return
        self._quiet_until[plugin] = now + CALLBACK_TRACEBACK_SECONDS
        log.error("%s: callback could not be parsed", plugin, exc_info=exc)

    async def _query_soon(
        self, plugin: str, attempt: AttemptRecord, upstream: UpstreamOrder, said: SupplierResult
    ) -> None:
        """A callback whose signature does not cover its outcome: believe only that
        something happened, and have the order's status query run now. The query's
        answer is applied like any other, so an unknown answer stays unknown and nothing
        is sent again."""
        if attempt.state not in OPEN_ATTEMPT:
            log.debug("%s callback for settled attempt %s ignored", plugin, upstream.reference)
            return
        woken = await self._lifecycle.wake(upstream.order_no)
        # Routine (one per order), so DEBUG, like other routine progress.
        log.debug(
            "order %s: %s callback says %s %s; querying the supplier%s",
            upstream.order_no,
            plugin,
            said.outcome,
            said.code,
            "" if woken else " (a query is already under way or due)",
        )
        # Only reaches a dispatcher running in this process; others see it at their scan.
        self.wake()

    async def _apply(
        self,
        plugin: str,
        upstream: UpstreamOrder,
        result: SupplierResult,
        runtime: Runtime,
        *,
        queries_done: int,
        source: str,
    ) -> None:
        """Apply one result; ``queries_done`` counts status queries including this one."""
        settings = runtime.config.dispatch
        if result.failover and source != SUBMIT:
            _warn_failover_outside_submit(plugin, upstream, result, source)
        await self._track_health(
            plugin, result, settings.breaker_threshold, settings.breaker_cooldown, source
        )
        applied = await self._lifecycle.apply(
            upstream.reference,
            result,
            from_submit=source == SUBMIT,
            next_query_delay_ms=_next_query_delay(
                settings.query_delays, settings.max_queries, queries_done
            ),
            counts_as_query=source == QUERY,
        )
        if applied is not None and applied.changed:
            self._report(applied, upstream, result, queries_done)

    def _report(
        self, applied: Applied, upstream: UpstreamOrder, result: SupplierResult, queries: int
    ) -> None:
        if applied.state in COUNTED:
            metrics.order_reached(applied.state, applied.carrier, applied.plugin)
        # Routine progress is DEBUG: at thousands of orders a second, INFO is for news.
        level = logging.DEBUG if applied.state in ROUTINE else logging.INFO
        log.log(
            level,
            "order %s -> %s (%s %s)",
            upstream.order_no,
            applied.state,
            result.code,
            result.message,
        )
        if applied.state is State.RETRYING:
            self.wake()
        if applied.state is State.REVIEW:
            alerts.warning(
                "order %s needs manual review: outcome still open after %s queries",
                upstream.order_no,
                queries,
            )

    async def _track_health(
        self, plugin: str, result: SupplierResult, threshold: int, cooldown: float, source: str
    ) -> None:
        # Only submit's refusals about the supplier itself (transient: rate limited, in
        # maintenance, out of balance, unreachable) count against a plugin. A refusal
        # about the order (definitive) says the supplier is working, so it counts neither
        # way; it still moves the order on to the next supplier (core/lifecycle/rules.py).
        if result.transient and source == SUBMIT:
            if self.breaker.record_failure(plugin, threshold, cooldown):
                metrics.circuit(plugin, True, opened=True)
                alerts.warning(
                    "%s: circuit opened after %s transient refusals; skipped for %ss",
                    plugin,
                    threshold,
                    cooldown,
                )
                await self._publish_circuit(plugin, now_ms() + int(cooldown * 1000))
        elif result.outcome in (
            Outcome.SUCCEEDED,
            Outcome.PENDING,
        ) and self.breaker.record_success(plugin):
            log.info("%s: circuit closed", plugin)
            metrics.circuit(plugin, False)
            await self._publish_circuit(plugin, None)

    async def _publish_circuit(self, plugin: str, open_until: int | None) -> None:
        """Tell other processes (the console) of an opening or closing; only changes are
        written, so this costs nothing on the order path otherwise."""
        try:
            await circuits.publish(self._store.db, plugin, self.owner, open_until)
        except Exception:
            # The breaker itself works on; only its display elsewhere is stale.
            log.exception("%s: could not publish the circuit's state", plugin)

    async def _call(
        self,
        method: Callable[[UpstreamOrder], Awaitable[SupplierResult]],
        upstream: UpstreamOrder,
        plugin: str,
    ) -> SupplierResult:
        """Call a plugin, timed; anything but a proper answer is UNKNOWN, never FAILED."""
        started = time.perf_counter()
        result = await self._answer(method, upstream, plugin)
        elapsed = time.perf_counter() - started
        metrics.supplier_call(plugin, method.__name__, result.outcome, result.code, elapsed)
        return result

    async def _answer(
        self,
        method: Callable[[UpstreamOrder], Awaitable[SupplierResult]],
        upstream: UpstreamOrder,
        plugin: str,
    ) -> SupplierResult:
        timeout = self._runtime().config.dispatch.call_timeout
        try:
            result = await self._deadlines.within(timeout, method(upstream))
        except TimeoutError:
            log.warning(
                "%s %s of %s: no answer within %ss",
                plugin,
                method.__name__,
                upstream.reference,
                timeout,
            )
            return SupplierResult.unknown(code="TIMEOUT", message=f"no answer within {timeout}s")
        except Exception as exc:
            log.exception("%s %s of %s raised", plugin, method.__name__, upstream.reference)
            return SupplierResult.unknown(code="PLUGIN_ERROR", message=type(exc).__name__)
        if not isinstance(result, SupplierResult):
            log.error("%s %s returned %r, not a SupplierResult", plugin, method.__name__, result)
            return SupplierResult.unknown(code="PLUGIN_ERROR", message="invalid result")
        return result


def _warn_failover_outside_submit(
    plugin: str, upstream: UpstreamOrder, result: SupplierResult, source: str
) -> None:
    """A plugin bug worth an alert; the lifecycle reads such a result as unknown
    (core/lifecycle/rules.py: as_applied)."""
    alerts.warning(
        "%s %s of %s reported a refusal that allows failover (%s %s): read as unknown, "
        "since only a submit can be refused before acceptance",
        plugin,
        source,
        upstream.reference,
        result.code,
        result.message,
    )


def _order_no(step: Step) -> str:
    return step.order.order_no if isinstance(step, Unroutable) else step.upstream.order_no


def _next_query_delay(delays: list[float], max_queries: int, queries_done: int) -> int | None:
    """Milliseconds until the next status query, or None once it is time for review."""
    if queries_done >= max_queries:
        return None
    return int(delays[min(queries_done, len(delays) - 1)] * 1000)
