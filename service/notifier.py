"""Delivers partner notifications from the outbox, retrying until the partner says success.

A notification is a form POST of the order's final status (the status query's fields,
plus ``appID``, ``company``, ``Supplier`` and ``ts``), signed with the app's secret by
the rule every request follows. The partner acknowledges with HTTP 200 and the body
``success`` (or a JSON ``{"code": "0"}``); anything else, or no answer within
``notify.timeout``, is retried after the next delay of ``notify.schedule``. Delivery
runs apart from order acceptance and never holds it up.

Each delivery first checks where the URL points now (service/notify_targets.py) and
connects to the address it checked; redirects are not followed (a 3xx is a failed
delivery, retried like any other).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable

import httpx
import msgspec

from core.apps import App, AppStore
from core.config import NotifyConfig
from core.notify import Notification, Outbox
from core.order_store import OrderStore
from core.orders import OrderRecord
from core.signing import compute_sign
from core.suppliers import alerts
from service import payloads
from service.notify_targets import Target, TargetRefused, resolve_target

log = logging.getLogger("topup.notifier")

# A claim outlives one delivery (bounded by notify.timeout) by this much; after a crash the
# notification is free again once it runs out.
LEASE_MARGIN_SECONDS = 10.0


class Acknowledgement(msgspec.Struct):
    code: str | int | None = None


def notification_params(order: OrderRecord, app: App) -> dict[str, str]:
    status = msgspec.structs.asdict(payloads.order_status(order))
    params = {
        "appID": app.app_id,
        "company": order.company,
        "Supplier": order.carrier,
        **{name: str(value) for name, value in status.items()},
        "ts": str(int(time.time())),
    }
    params["sign"] = compute_sign(params, app.secret, app.sign_type)
    return params


def acknowledged(response: httpx.Response) -> bool:
    if response.status_code != 200:
        return False
    if response.content.strip().lower() == b"success":
        return True
    try:
        return str(msgspec.json.decode(response.content, type=Acknowledgement).code) == "0"
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False


class Notifier:
    def __init__(
        self,
        outbox: Outbox,
        apps: AppStore,
        store: OrderStore,
        settings: Callable[[], NotifyConfig],
    ) -> None:
        self._outbox = outbox
        self._apps = apps
        self._store = store
        self._settings = settings
        self.owner = f"notifier-{secrets.token_hex(6)}"
        # One client per (scheme, host name, port): requests go to an address, so a pooled
        # connection must never serve another name (its TLS was checked for this one).
        self._clients: dict[tuple[str, str, int], httpx.AsyncClient] = {}
        self._loop_task: asyncio.Task | None = None
        self._in_flight: set[asyncio.Task] = set()

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="topup-notifier")

    async def stop(self) -> None:
        for task in (self._loop_task, *self._in_flight):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    def _client(self, target: Target) -> httpx.AsyncClient:
        client = self._clients.get(target.origin)
        if client is None:
            client = httpx.AsyncClient(follow_redirects=False)
            self._clients[target.origin] = client
        return client

    async def _run(self) -> None:
        while True:
            settings = self._settings()
            claimed: list[Notification] = []
            free = settings.concurrency - len(self._in_flight)
            try:
                if free > 0:
                    lease_ms = int((settings.timeout + LEASE_MARGIN_SECONDS) * 1000)
                    claimed = await self._outbox.claim_due(self.owner, lease_ms, free)
            except Exception:
                log.exception("could not claim notifications; retrying")
            for notification in claimed:
                task = asyncio.create_task(self._deliver(notification, settings))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
            if not claimed:
                await asyncio.sleep(settings.scan_interval)

    async def _deliver(self, notification: Notification, settings: NotifyConfig) -> None:
        try:
            error = await self._post(notification, httpx.Timeout(settings.timeout))
            if error is None:
                await self._outbox.delivered(notification.id)
                return
            retry_in = _retry_in(settings.schedule, notification.attempts)
            await self._outbox.failed(notification.id, error, retry_in)
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

    async def _post(self, notification: Notification, limit: httpx.Timeout) -> str | None:
        """Deliver once; None on success, else what went wrong."""
        order = await self._store.get(notification.order_no)
        app = await self._apps.get(notification.app_id)
        if order is None or app is None:
            return "order or app no longer exists"
        try:
            target = await resolve_target(notification.url, app.notify_allow_private)
        except TargetRefused as exc:
            # Checked when it was set: it points elsewhere now (DNS changed, or the row did).
            alerts.warning(
                "notification of order %s not sent to %s: %s",
                notification.order_no,
                notification.url,
                exc,
            )
            return f"refused: {exc}"
        response = await self._send(target, notification_params(order, app), limit)
        if isinstance(response, str):
            return response
        if acknowledged(response):
            log.info("order %s notified to %s", order.order_no, notification.url)
            return None
        return f"HTTP {response.status_code}: {response.text[:200]!r}"

    async def _send(
        self, target: Target, params: dict[str, str], limit: httpx.Timeout
    ) -> httpx.Response | str:
        """POST to the checked addresses in turn until one takes the connection; the
        response, or what went wrong."""
        error = "no address"
        for url in target.urls:
            try:
                return await self._client(target).post(
                    url,
                    data=params,
                    headers=target.headers,
                    extensions=target.extensions,
                    timeout=limit,
                )
            except httpx.ConnectError as exc:
                # Nothing was sent: the next address of the name may answer.
                error = f"{type(exc).__name__}: {exc}"
            except httpx.HTTPError as exc:
                return f"{type(exc).__name__}: {exc}"
        return error


def _retry_in(schedule: list[float], attempts_before: int) -> int | None:
    if attempts_before >= len(schedule):
        return None
    return int(schedule[attempts_before] * 1000)
