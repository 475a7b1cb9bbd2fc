"""The Litestar application: routes, lifespan, and the envelope for every error."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from litestar import HttpMethod, Litestar, Request, Response, route
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from litestar.types import ASGIApp
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from core import metrics
from core.errors import ErrorCode, TopupError
from core.suppliers import CallbackRequest
from service import contract, health, partner_api, payloads
from service.console.app import console_router
from service.console.render import page as console_page
from service.console.render import template_config
from service.logs import configure_logging
from service.metrics import HttpMetrics, metrics_endpoint, metrics_token
from service.params import MAX_BODY_BYTES, ClientDisconnected, read_body
from service.partner_api import bad_value, log_disconnect, refusal
from service.settings import Settings
from service.wiring import BACKGROUND_ENV, Services, settle_heap

log = logging.getLogger("topup.api")

JSON = "application/json; charset=utf-8"


@route(
    "/callback/{plugin:str}",
    http_method=[HttpMethod.GET, HttpMethod.POST],
    operation_id="supplierCallback",
    include_in_schema=False,
)
async def supplier_callback(request: Request, plugin: FromPath[str]) -> Response:
    """A supplier reports an outcome; its plugin verifies and reads it, the core applies it."""
    inbound = CallbackRequest(
        body=await read_body(request.receive),
        headers={name.lower(): value for name, value in request.headers.items()},
        query=dict(parse_qsl(request.scope.get("query_string", b"").decode("latin-1"))),
    )
    try:
        reply = await request.app.state.services.dispatcher.handle_callback(plugin, inbound)
    except (DBAPIError, SQLAlchemyError, TimeoutError) as exc:
        if bad_value(exc):
            # A value the database cannot even compare (a NUL in a reference): no order of
            # ours has it, and sending it again will not help.
            log.warning("%s callback with a value the database cannot read: %s", plugin, exc.orig)
            return Response(b"callback could not be read", status_code=400, media_type="text/plain")
        # Not acknowledged, so the supplier sends it again; polling covers it meanwhile.
        log.exception("storage unavailable while applying a %s callback", plugin)
        return Response(b"retry later", status_code=503, media_type="text/plain")
    return Response(reply.body, status_code=reply.status_code, media_type=reply.media_type)


_HTTP_ERRORS = {
    404: (ErrorCode.NOT_FOUND, "接口不存在: {path}"),
    405: (ErrorCode.METHOD_NOT_ALLOWED, "接口 {path} 不支持 {method} 方法"),
    413: (ErrorCode.UNDECODABLE_BODY, f"请求体过大: 最多 {MAX_BODY_BYTES} 字节"),
}


def respond(body: payloads.Envelope, status_code: int = 200) -> Response:
    return Response(msgspec.json.encode(body), status_code=status_code, media_type=JSON)


def _http_error(request: Request, exc: HTTPException) -> Response:
    if request.url.path.startswith("/console/") and exc.status_code in (404, 405):
        # An operator's mistyped link: a page, not the partner API's JSON envelope.
        return console_page(
            request,
            "error.html",
            exc.status_code,
            title="页面不存在",
            message=f"没有这个页面: {request.url.path}",
        )
    code, template = _HTTP_ERRORS.get(
        exc.status_code, (ErrorCode.UNDECODABLE_BODY, "请求无法解析: {detail}")
    )
    message = template.format(path=request.url.path, method=request.method, detail=exc.detail)
    if exc.status_code >= 500:
        return _internal_error(request, exc)
    return respond(refusal({}, code, message), exc.status_code)


def _refused(request: Request, exc: TopupError) -> Response:
    return respond(refusal({}, exc.code, exc.message), exc.http_status)


def _disconnected(request: Request, exc: ClientDisconnected) -> Response:
    log_disconnect(request.method, request.url.path)
    return Response(b"", status_code=400)  # the server drops it: the client is gone


def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return respond(refusal({}, ErrorCode.INTERNAL_ERROR, partner_api.INTERNAL), 500)


class TopupApp(Litestar):
    """Litestar, with the partner calls' exact paths served before its router.

    The partner calls are the hot path, and their handlers answer every way a call can
    end themselves (service/partner_api.py): Litestar's router and exception middleware
    would add nothing to them but their cost: 7% of the instructions of accepting an
    order (bench/LOG.md). Everything else goes through Litestar as usual.
    """

    partner_routes: dict[str, ASGIApp]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            direct = self.partner_routes.get(scope["path"])
            if direct is not None:
                scope["app"] = scope["litestar_app"] = self
                scope.setdefault("state", {})
                await direct(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def served_app() -> Litestar:
    """The app as ``topup serve`` runs it: the factory its server calls in each process."""
    return create_app(settle=True)


def create_app(
    settings: Settings | None = None,
    extra_plugins: Iterable[object] = (),
    background: bool | None = None,
    settle: bool = False,
) -> Litestar:
    """The app factory.

    ``background``: also run the dispatcher and notifier in this process; by default
    only when ``TOPUP_BACKGROUND`` is not "0" (``topup serve`` runs them apart).
    ``settle``: once started, settle the process's heap (``settle_heap``): for a process
    that serves until it stops, not for one that builds apps by the dozen, as tests do.
    """
    settings = settings or Settings.from_env()
    configure_logging()
    if background is None:
        background = os.environ.get(BACKGROUND_ENV, "1") != "0"
    services = Services(settings, extra_plugins, api=True, background=background)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await services.start()
        if settle:
            settle_heap()
        try:
            yield
        finally:
            await services.stop()

    observed = metrics.enabled()
    app = TopupApp(
        route_handlers=[
            *partner_api.route_handlers(),
            supplier_callback,
            health.health,
            health.ready,
            *_metrics_routes(observed),
            console_router(),
        ],
        template_config=template_config(),
        lifespan=[lifespan],
        exception_handlers={
            HTTPException: _http_error,
            TopupError: _refused,
            ClientDisconnected: _disconnected,
            Exception: _internal_error,
        },
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=contract.openapi_config(),
        debug=False,
    )
    # The partner calls are ASGI handlers Litestar's generator cannot see: their part of
    # the document is added now, before anything has read it.
    contract.publish(app.openapi_schema)
    app.state.services = services
    if observed:
        metrics.activate()
        app.state.metrics_token = metrics_token()
        # Around Litestar's whole handler, so that 404s and 405s are counted too.
        app.asgi_handler = HttpMetrics(app.asgi_handler)
    app.partner_routes = partner_api.direct_routes(HttpMetrics if observed else _unwrapped)
    return app


def _unwrapped(app: ASGIApp) -> ASGIApp:
    return app


def _metrics_routes(observed: bool) -> list:
    """GET /metrics, unless TOPUP_METRICS=0 turned metrics off."""
    return [metrics_endpoint] if observed else []
