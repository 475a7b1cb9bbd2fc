"""The Litestar application: the partner API routes and their error envelope."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from litestar import Controller, HttpMethod, Litestar, Request, Response, get, post, route
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from core.errors import ErrorCode, TopupError
from core.partner import PartnerDesk
from core.suppliers import CallbackRequest
from service import payloads
from service.logs import configure_logging
from service.params import request_params
from service.settings import Settings
from service.wiring import Services

log = logging.getLogger("topup.api")

MAX_BODY_BYTES = 64 * 1024
JSON = "application/json; charset=utf-8"

Handler = Callable[[PartnerDesk, dict[str, str]], Awaitable[Any]]


def envelope(params: dict[str, str], data: Any, message: str = "成功") -> payloads.Envelope:
    return payloads.Envelope(
        "0", message, params.get("company", ""), params.get("Supplier", ""), data
    )


def refusal(params: dict[str, str], code: ErrorCode, message: str) -> payloads.Envelope:
    return payloads.Envelope(
        "1", message, params.get("company", ""), params.get("Supplier", ""), "", str(code)
    )


def respond(body: payloads.Envelope, status_code: int = 200) -> Response:
    return Response(msgspec.json.encode(body), status_code=status_code, media_type=JSON)


async def answer(request: Request, handler: Handler) -> Response:
    """Run one partner call; every way it can end is an envelope, never a traceback."""
    params: dict[str, str] = {}
    try:
        params = await request_params(request)
        data = await handler(request.app.state.services.desk, params)
    except TopupError as refused:
        return respond(refusal(params, refused.code, refused.message))
    except (DBAPIError, SQLAlchemyError, TimeoutError):
        log.exception("storage unavailable during %s", request.url.path)
        message = "服务暂时不可用, 请求未被受理; 请用相同的 cstmOrderNo 重试"
        return respond(refusal(params, ErrorCode.SERVICE_UNAVAILABLE, message), 503)
    return respond(envelope(params, data))


async def _place_order(desk: PartnerDesk, params: dict[str, str]) -> Any:
    order, _created = await desk.place_order(params)
    return payloads.order_accepted(order)


async def _order_status(desk: PartnerDesk, params: dict[str, str]) -> Any:
    return payloads.order_status(await desk.order_status(params))


async def _issue_token(desk: PartnerDesk, params: dict[str, str]) -> Any:
    grant = await desk.issue_token(params)
    return payloads.TokenData(grant.access_token, grant.expires_in)


async def _balance(desk: PartnerDesk, params: dict[str, str]) -> Any:
    return payloads.balance(await desk.balance(params))


async def _products(desk: PartnerDesk, params: dict[str, str]) -> Any:
    return payloads.product_list(await desk.products(params))


class PartnerController(Controller):
    """The signed partner API. Each call also answers at the seed's Chinese path."""

    path = "/sign/api"

    @post(["/order", "/产品订购"], operation_id="placeOrder", status_code=200)
    async def place_order(self, request: Request) -> Response:
        """产品订购: place a top-up order (form data or JSON)."""
        return await answer(request, _place_order)

    @get(["/order/status", "/订单状态查询"], operation_id="queryOrderStatus")
    async def order_status(self, request: Request) -> Response:
        """订单状态查询: the state of one order, by cstmOrderNo."""
        return await answer(request, _order_status)

    @post("/token", operation_id="issueToken", status_code=200)
    async def issue_token(self, request: Request) -> Response:
        """An access_token for the app, valid for 7200 seconds."""
        return await answer(request, _issue_token)

    @get("/balance", operation_id="queryBalance")
    async def balance(self, request: Request) -> Response:
        """The app's prepaid balance, what is held for orders in flight, and its credit limit."""
        return await answer(request, _balance)

    @get("/products", operation_id="listProducts")
    async def products(self, request: Request) -> Response:
        """The products a Supplier offers, with face value and price in yuan."""
        return await answer(request, _products)


@route(
    "/callback/{plugin:str}",
    http_method=[HttpMethod.GET, HttpMethod.POST],
    operation_id="supplierCallback",
    include_in_schema=False,
)
async def supplier_callback(request: Request, plugin: str) -> Response:
    """A supplier reports an outcome; its plugin verifies and reads it, the core applies it."""
    inbound = CallbackRequest(
        body=await request.body(),
        headers={name.lower(): value for name, value in request.headers.items()},
        query=dict(parse_qsl(request.scope.get("query_string", b"").decode("latin-1"))),
    )
    try:
        reply = await request.app.state.services.dispatcher.handle_callback(plugin, inbound)
    except (DBAPIError, SQLAlchemyError, TimeoutError):
        # Not acknowledged, so the supplier sends it again; polling covers it meanwhile.
        log.exception("storage unavailable while applying a %s callback", plugin)
        return Response(b"retry later", status_code=503, media_type="text/plain")
    return Response(reply.body, status_code=reply.status_code, media_type=reply.media_type)


@get("/healthz", operation_id="health", include_in_schema=False)
async def health() -> dict[str, str]:
    return {"status": "ok"}


_HTTP_ERRORS = {
    404: (ErrorCode.NOT_FOUND, "接口不存在: {path}"),
    405: (ErrorCode.METHOD_NOT_ALLOWED, "接口 {path} 不支持 {method} 方法"),
    413: (ErrorCode.UNDECODABLE_BODY, f"请求体过大: 最多 {MAX_BODY_BYTES} 字节"),
}


def _http_error(request: Request, exc: HTTPException) -> Response:
    code, template = _HTTP_ERRORS.get(
        exc.status_code, (ErrorCode.UNDECODABLE_BODY, "请求无法解析: {detail}")
    )
    message = template.format(path=request.url.path, method=request.method, detail=exc.detail)
    if exc.status_code >= 500:
        return _internal_error(request, exc)
    return respond(refusal({}, code, message), exc.status_code)


def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    message = "服务内部错误; 请用相同的 cstmOrderNo 查询订单或重试"
    return respond(refusal({}, ErrorCode.INTERNAL_ERROR, message), 500)


def create_app(settings: Settings | None = None, extra_plugins: Iterable[object] = ()) -> Litestar:
    """The app factory (``topup serve`` passes it to the server as a factory)."""
    settings = settings or Settings.from_env()
    configure_logging()
    services = Services(settings, extra_plugins)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await services.start()
        try:
            yield
        finally:
            await services.stop()

    app = Litestar(
        route_handlers=[PartnerController, supplier_callback, health],
        lifespan=[lifespan],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=OpenAPIConfig(title="topup partner API", version="1.0.0"),
        debug=False,
    )
    app.state.services = services
    return app
