"""Delivers partner notifications from the outbox, retrying until the partner says success.

The policy: claim due notifications (core/notify.py) with the leased-worker loop, hand
each to ``send`` (the HTTP edge, service/notifier.py: None when the partner acknowledged
it, else what went wrong), record the outcome, and retry after the next delay of
``notify.schedule``; after the last one the notification is given up and an alert
logged. Delivery runs apart from order acceptance and never holds it up.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy import Connection

from core.config import Config
from core.notify import Notification, Outbox
from core.suppliers import alerts
from core.worker_loop import LeasedWorker, LoopSettings

log = logging.getLogger("topup.notifier")

# A claim outlives one delivery (bounded by notify.timeout) by this much; after a crash the
# notification is free again once it runs out, or once the notifier's heartbeat stops.
LEASE_MARGIN_SECONDS = 10.0

# Delivers one notification: None once the partner acknowledged it, else the error.
Send = Callable[[Notification], Awaitable[str | None]]


class Notifier:
    def __init__(self, outbox: Outbox, send: Send, config: Callable[[], Config]) -> None:
        self._outbox = outbox
        self._send = send
        self._config = config
        self._worker = LeasedWorker(
            outbox.db,
            "notifier",
            self._claim,
            self._deliver,
            self._loop_settings,
            self._make_due,
            log=log,
            claiming="notifications",
        )
        self.owner = self._worker.owner

    def start(self) -> None:
        self._worker.start()

    async def stop(self) -> None:
        await self._worker.stop()

    def _loop_settings(self) -> LoopSettings:
        config = self._config()
        return LoopSettings(
            concurrency=config.notify.concurrency,
            # A claim takes as many as there are free slots.
            claim_batch=config.notify.concurrency,
            max_claim_batch=config.notify.concurrency,
            scan_interval=config.notify.scan_interval,
            heartbeat_seconds=config.dispatch.heartbeat_seconds,
            takeover_seconds=config.dispatch.takeover_seconds,
        )

    def _lease_ms(self) -> int:
        return int((self._config().notify.timeout + LEASE_MARGIN_SECONDS) * 1000)

    async def _claim(self, owner: str, limit: int) -> list[Notification]:
        takeover_ms = int(self._config().dispatch.takeover_seconds * 1000)
        return await self._outbox.claim_due(owner, self._lease_ms(), limit, takeover_ms)

    def _make_due(self, conn: Connection, owners: Sequence[str]) -> int:
        return self._outbox.make_due(conn, owners, self._lease_ms())

    async def _deliver(self, notification: Notification) -> None:
        try:
            error = await self._send(notification)
            if error is None:
                await self._outbox.delivered(notification.id)
                return
            retry_in = _retry_in(self._config().notify.schedule, notification.attempts)
            await self._outbox.failed(notification.id, self.owner, error, retry_in)
            if retry_in is None:
                alerts.warning(
                    "notification of order %s to %s given up after %s attempts: %s",
                    notification.order_no,
                    notification.url,
                    notification.attempts + 1,
                    error,
                )
        except Exception:
            # Its lease runs out and it is tried again.
            log.exception("notification %s could not be processed", notification.id)


def _retry_in(schedule: list[float], attempts_before: int) -> int | None:
    if attempts_before >= len(schedule):
        return None
    return int(schedule[attempts_before] * 1000)
