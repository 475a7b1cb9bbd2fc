"""Partner notifications over HTTP: the edge that core/notifier.py delivers through.

A notification is a form POST of the order's final status (the status query's fields,
plus ``appID``, ``company``, ``Supplier`` and ``ts``), signed with the app's secret by
the rule every request follows. The partner acknowledges with HTTP 200 and the body
``success`` (or a JSON ``{"code": "0"}``); anything else, or no answer within
``notify.timeout``, is a failed delivery, retried by core/notifier.py.

Each delivery first checks where the URL points now (service/notify_targets.py) and
connects to the address it checked; redirects are not followed (a 3xx is a failed
delivery, retried like any other).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import httpx
import msgspec

from core.apps import App, AppStore
from core.config import NotifyConfig
from core.notify import Notification
from core.order_store import OrderStore
from core.orders import OrderRecord
from core.signing import compute_sign
from core.suppliers import alerts
from service import payloads
from service.notify_targets import Target, TargetRefused, resolve_target

log = logging.getLogger("topup.notifier")


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


class NotificationSender:
    """The HTTP edge of the notifier (core/notifier.py): sends one notification, signed,
    to the address its URL resolves to now."""

    def __init__(
        self, apps: AppStore, store: OrderStore, settings: Callable[[], NotifyConfig]
    ) -> None:
        self._apps = apps
        self._store = store
        self._settings = settings
        # One client per (scheme, host name, port): requests go to an address, so a pooled
        # connection must never serve another name (its TLS was checked for this one).
        self._clients: dict[tuple[str, str, int], httpx.AsyncClient] = {}

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    def _client(self, target: Target) -> httpx.AsyncClient:
        client = self._clients.get(target.origin)
        if client is None:
            client = httpx.AsyncClient(follow_redirects=False)
            self._clients[target.origin] = client
        return client

    async def send(self, notification: Notification) -> str | None:
        """Deliver once; None on success, else what went wrong."""
        limit = httpx.Timeout(self._settings().timeout)
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
        response = await self._post(target, notification_params(order, app), limit)
        if isinstance(response, str):
            return response
        if acknowledged(response):
            log.info("order %s notified to %s", order.order_no, notification.url)
            return None
        return f"HTTP {response.status_code}: {response.text[:200]!r}"

    async def _post(
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
