"""``GET /metrics`` in Prometheus text format, and the HTTP metrics of every request.

The metric objects and what records them are in core/metrics.py. Here: the ASGI
wrapper that times each request by its route template, the few gauges read from the
database at scrape time (the review queue, the notification backlog), and the
exposition, which in multiprocess mode sums the files of every process of this
``topup serve`` (the background process's counters included).

``TOPUP_METRICS_TOKEN``: when set, ``/metrics`` answers only requests carrying
``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from pathlib import Path
from typing import Any

import msgspec
from litestar import Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from sqlalchemy import Connection, func, select

from core import metrics
from core.clock import now_ms
from core.db import Database, notifications, orders
from core.orders import State

log = logging.getLogger("topup.metrics")

TOKEN_ENV = "TOPUP_METRICS_TOKEN"
# Requests that matched no route (404, 405) share one label: paths are the client's choice.
UNMATCHED = "unmatched"
SCRAPE_DATABASE_SECONDS = 2.0


class HttpMetrics:
    """Wraps the application's ASGI handler: counts and times every HTTP request.

    Outside Litestar's own stack, so 404s and 405s are counted too; the route template
    is the one Litestar's router leaves in the scope (``path_template``), never the
    raw path. Costs two clock reads, one closure and two metric updates per request.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            metrics.http_request(
                scope.get("path_template") or UNMATCHED,
                scope["method"],
                status,
                time.perf_counter() - started,
            )


# -- gauges read from the database ---------------------------------------------------------


class DatabaseGauges(msgspec.Struct, frozen=True):
    review: int
    review_oldest_seconds: float
    notifications_pending: int
    notifications_due: int


def _read_gauges(conn: Connection) -> DatabaseGauges:
    """Counts over indexes: ix_orders_state and ix_notifications_next_attempt_at."""
    now = now_ms()
    review, oldest = conn.execute(
        select(func.count(), func.min(orders.c.created_at)).where(
            orders.c.state == State.REVIEW.value
        )
    ).one()
    waiting = notifications.c.next_attempt_at
    pending = conn.execute(select(func.count()).where(waiting.is_not(None))).scalar_one()
    due = conn.execute(select(func.count()).where(waiting <= now)).scalar_one()
    return DatabaseGauges(
        review=review,
        review_oldest_seconds=max(0.0, (now - oldest) / 1000) if oldest is not None else 0.0,
        notifications_pending=pending,
        notifications_due=due,
    )


async def read_gauges(db: Database) -> DatabaseGauges | None:
    """The gauges, or None when the database does not answer in time (the scrape
    still answers, with ``topup_database_up 0``)."""
    try:
        async with asyncio.timeout(SCRAPE_DATABASE_SECONDS):
            return await db.read(_read_gauges)
    except Exception as exc:
        log.warning("metrics: the database gauges could not be read: %r", exc)
        return None


class _DatabaseCollector:
    def __init__(self, gauges: DatabaseGauges | None) -> None:
        self._gauges = gauges

    def collect(self) -> list[GaugeMetricFamily]:
        g = self._gauges
        families = [
            GaugeMetricFamily(
                "topup_database_up",
                "1 when this scrape's database queries answered.",
                value=0 if g is None else 1,
            )
        ]
        if g is None:
            return families
        return [
            *families,
            GaugeMetricFamily(
                "topup_review_orders", "Orders waiting for manual review.", value=g.review
            ),
            GaugeMetricFamily(
                "topup_review_oldest_age_seconds",
                "Age of the oldest order in review (since it was placed); 0 when none.",
                value=g.review_oldest_seconds,
            ),
            GaugeMetricFamily(
                "topup_notifications_pending",
                "Partner notifications not yet delivered and not given up.",
                value=g.notifications_pending,
            ),
            GaugeMetricFamily(
                "topup_notifications_due",
                "Partner notifications whose delivery (or retry) is due now: the backlog.",
                value=g.notifications_due,
            ),
        ]


# -- exposition ---------------------------------------------------------------------------


def exposition(gauges: DatabaseGauges | None) -> bytes:
    metrics.flush()
    path = metrics.multiprocess_dir()
    if path:
        _forget_dead_processes(path)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path)
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    database = CollectorRegistry()
    database.register(_DatabaseCollector(gauges))
    return body + generate_latest(database)


def _forget_dead_processes(path: str) -> None:
    """Gauges of processes that are gone (a restarted worker) stop counting; their
    counters stay, as Prometheus expects of counters."""
    for file in Path(path).glob("gauge_live*.db"):
        pid = metrics.file_pid(file.name)
        if pid is not None and not metrics.alive(pid):
            mark_process_dead(pid, path)


def metrics_token() -> bytes | None:
    token = os.environ.get(TOKEN_ENV, "")
    return token.encode() if token else None


def _authorized(request: Request, token: bytes) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token)


@get("/metrics", operation_id="metrics", include_in_schema=False)
async def metrics_endpoint(request: Request) -> Response:
    token = request.app.state.metrics_token
    if token is not None and not _authorized(request, token):
        return Response(
            b"metrics need Authorization: Bearer <TOPUP_METRICS_TOKEN>\n",
            status_code=401,
            media_type="text/plain",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    gauges = await read_gauges(request.app.state.services.db)
    return Response(exposition(gauges), media_type=CONTENT_TYPE_LATEST)
