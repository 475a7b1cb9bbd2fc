"""The signed partner API, as Litestar ASGI route handlers.

These are the hot path (order acceptance above all), so they take the raw ASGI scope
and channels: per request there is no signature model and no response object to build,
which halves the framework's cost per request (see BENCHMARKS.md). Every way a call can
end, a bug included, is the seed's envelope, answered here; a stack trace never reaches
a partner. So the app (``service.app.TopupApp``) sends a partner call's exact path
straight to ``serve``, past Litestar's router and exception middleware; Litestar still
runs the lifespan and routes every other path (a trailing slash included) to the same
handlers, registered as Litestar ASGI route handlers.

The limit per client address is counted first, before the body is read: a flood costs
a dictionary lookup per request. The rest of the abuse checks (allowlist, failed
signatures, the limit per app) run in the core, which is handed the client address.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import msgspec
from litestar import asgi
from litestar.handlers import ASGIRouteHandler
from litestar.types import ASGIApp, Receive, Scope, Send
from sqlalchemy.exc import DataError, DBAPIError, SQLAlchemyError

from core import partner_params
from core.errors import ErrorCode, TopupError
from core.partner import PartnerDesk
from core.ratelimit import AbuseGuard, RateLimited
from service import payloads
from service.params import ClientDisconnected, read_params

log = logging.getLogger("topup.api")

JSON_HEADERS = [(b"content-type", b"application/json; charset=utf-8")]
UNAVAILABLE = "服务暂时不可用, 请求未被受理; 请用相同的 cstmOrderNo 重试"
INTERNAL = "服务内部错误; 请用相同的 cstmOrderNo 查询订单或重试"

Run = Callable[[PartnerDesk, dict[str, str], str], Awaitable[Any]]


class PartnerCall(NamedTuple):
    """One partner call: how it is routed and served, and what the OpenAPI document
    (service/contract.py) says of it. ``params`` are the Structs the core derives its
    checks from; ``data`` is the Struct of a success's ``data``."""

    operation_id: str
    method: str
    paths: tuple[str, ...]  # the English path first, then the seed's Chinese one
    run: Run
    summary: str
    params: type[msgspec.Struct]
    data: type[msgspec.Struct]
    description: str = ""


def envelope(params: dict[str, str], data: Any, message: str = "成功") -> payloads.Success:
    return payloads.Success(
        "0", message, params.get("company", ""), params.get("Supplier", ""), data
    )


def refusal(params: dict[str, str], code: ErrorCode, message: str) -> payloads.Refusal:
    return payloads.Refusal(
        "1", message, params.get("company", ""), params.get("Supplier", ""), "", code
    )


async def send_envelope(
    send: Send,
    body: payloads.Envelope,
    status: int = 200,
    extra_headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    payload = msgspec.json.encode(body)
    headers = [*JSON_HEADERS, (b"content-length", str(len(payload)).encode()), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def bad_value(exc: Exception) -> bool:
    """SQLSTATE class 22, "data exception": the value sent is at fault, not the database
    (asyncpg's errors reach SQLAlchemy as a plain DBAPIError that carries the state)."""
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return isinstance(exc, DataError) or str(sqlstate or "").startswith("22")


def log_disconnect(method: str, path: str) -> None:
    # Routine (a client timed out or gave up); one line, no traceback: nothing was read,
    # so nothing was accepted and there is nobody to answer.
    log.info("client disconnected before its request body arrived: %s %s", method, path)


async def serve(call: PartnerCall, scope: Scope, receive: Receive, send: Send) -> None:
    if scope["method"] != call.method:
        message = f"接口 {scope['path']} 不支持 {scope['method']} 方法"
        await send_envelope(send, refusal({}, ErrorCode.METHOD_NOT_ALLOWED, message), 405)
        return
    params: dict[str, str] = {}
    services = scope["app"].state.services
    try:
        client = client_address(scope, services.guard)
        services.guard.check_address(client)
        params = await read_params(scope, receive)
        data = await call.run(services.desk, params, client)
    except TopupError as refused:
        await send_envelope(
            send,
            refusal(params, refused.code, refused.message),
            refused.http_status,
            _retry_after(refused),
        )
        return
    except ClientDisconnected:
        log_disconnect(scope["method"], scope["path"])
        return
    except (DBAPIError, SQLAlchemyError, TimeoutError) as exc:
        if bad_value(exc):
            log.warning("%s: a value the database cannot read: %s", scope["path"], exc.orig)
            message = "参数含有数据库无法处理的值"
            await send_envelope(send, refusal(params, ErrorCode.INVALID_PARAMETER, message))
            return
        log.exception("storage unavailable during %s", scope["path"])
        await send_envelope(send, refusal(params, ErrorCode.SERVICE_UNAVAILABLE, UNAVAILABLE), 503)
        return
    except Exception:
        # A bug: the trace goes to the log, the partner gets the envelope and the way on.
        log.exception("unhandled error on %s %s", scope["method"], scope["path"])
        await send_envelope(send, refusal(params, ErrorCode.INTERNAL_ERROR, INTERNAL), 500)
        return
    await send_envelope(send, envelope(params, data))


def client_address(scope: Scope, guard: AbuseGuard) -> str:
    """The caller's address: the TCP peer, or from a trusted proxy its X-Forwarded-For."""
    peer = scope.get("client")
    address = peer[0] if peer else ""
    if not guard.proxies.trusted:
        return address
    forwarded = b",".join(
        value for name, value in scope["headers"] if name == b"x-forwarded-for"
    ).decode("latin-1")
    return guard.proxies.client(address, forwarded)


def _retry_after(refused: TopupError) -> tuple[tuple[bytes, bytes], ...]:
    if isinstance(refused, RateLimited):
        return ((b"retry-after", str(refused.retry_after).encode()),)
    return ()


async def _place_order(desk: PartnerDesk, params: dict[str, str], client: str) -> Any:
    order, _created = await desk.place_order(params, client)
    return payloads.order_accepted(order)


async def _order_status(desk: PartnerDesk, params: dict[str, str], client: str) -> Any:
    return payloads.order_status(await desk.order_status(params, client))


async def _issue_token(desk: PartnerDesk, params: dict[str, str], client: str) -> Any:
    grant = await desk.issue_token(params, client)
    return payloads.TokenData(grant.access_token, grant.expires_in)


async def _balance(desk: PartnerDesk, params: dict[str, str], client: str) -> Any:
    return payloads.balance(await desk.balance(params, client))


async def _products(desk: PartnerDesk, params: dict[str, str], client: str) -> Any:
    offer = await desk.products(params, client)
    if offer.carrier_source is not None:
        # Asked by phoneNo: the envelope's Supplier echoes the carrier found.
        params["Supplier"] = offer.carrier
    return payloads.product_list(offer)


# Stable operation ids: clients and dashboards may key on them.
CALLS = (
    PartnerCall(
        "placeOrder",
        "POST",
        ("/sign/api/order", "/sign/api/产品订购"),
        _place_order,
        "产品订购: place a top-up order (form data or JSON).",
        params=partner_params.OrderParams,
        data=payloads.OrderAccepted,
        description=(
            "幂等 / Idempotent: (appID, cstmOrderNo) identifies an order. Sending the same "
            "order again (same phoneNo, productId and Supplier) returns the original orderNo "
            "and orderId and creates nothing, so a request that timed out is simply sent "
            "again; the same cstmOrderNo with another phoneNo, productId or Supplier is "
            "refused with ORDER_CONFLICT. Code 0 means the order is on disk. Checks after "
            "the signature: token, company, Supplier, productId, phoneNo, balance."
        ),
    ),
    PartnerCall(
        "queryOrderStatus",
        "GET",
        ("/sign/api/order/status", "/sign/api/订单状态查询"),
        _order_status,
        "订单状态查询: the state of one order, by cstmOrderNo.",
        params=partner_params.StatusParams,
        data=payloads.OrderStatus,
        description=(
            "An app sees only its own orders. status 0 已受理, 1 充值中, 2 充值成功 (final), "
            "3 充值失败 (final); a final status never changes. This query, not the "
            "notification, is the source of truth."
        ),
    ),
    PartnerCall(
        "issueToken",
        "POST",
        ("/sign/api/token",),
        _issue_token,
        "An access_token for the app, valid for 7200 seconds.",
        params=partner_params.TokenParams,
        data=payloads.TokenData,
        description=(
            "获取 access_token. The same request again (same ts and sign) returns the same "
            "token; several may be live at once. Ask for a new one before expires_in runs "
            "out. Rotating the app's secret ends its old tokens when the grace period ends."
        ),
    ),
    PartnerCall(
        "queryBalance",
        "GET",
        ("/sign/api/balance",),
        _balance,
        "The app's prepaid balance, what open orders hold, and its credit limit.",
        params=partner_params.BalanceParams,
        data=payloads.BalanceData,
        description="余额查询: amounts in yuan.",
    ),
    PartnerCall(
        "listProducts",
        "GET",
        ("/sign/api/products",),
        _products,
        "The products a Supplier offers, or those of the carrier a phoneNo belongs to, "
        "with face value and price in yuan.",
        params=partner_params.ProductsParams,
        data=payloads.ProductList,
        description=(
            "产品列表: productId is what POST /sign/api/order takes. Exactly one of Supplier "
            "(that carrier's products) or phoneNo (the products of the carrier the number "
            "most likely belongs to, with carrier and carrierSource; numbers move between "
            "carriers, 携号转网, so carrierSource says how it was found)."
        ),
    ),
)


def route_handlers() -> list[ASGIRouteHandler]:
    return [_handler(call) for call in CALLS]


def direct_routes(wrap: Callable[[ASGIApp], ASGIApp]) -> dict[str, ASGIApp]:
    """Each partner call's exact paths, to an ASGI app that serves it without Litestar's
    router (``TopupApp``); ``wrap`` puts what Litestar's handler has around it (metrics)."""
    return {path: wrap(_direct(call, path)) for call in CALLS for path in call.paths}


def _direct(call: PartnerCall, path: str) -> ASGIApp:
    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        scope["path_template"] = path  # what Litestar's router would have left there
        await serve(call, scope, receive, send)

    return handle


def _handler(call: PartnerCall) -> ASGIRouteHandler:
    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        await serve(call, scope, receive, send)

    handle.__doc__ = call.summary
    # ``serve`` changes nothing in the scope: no copy of it per request.
    return asgi(list(call.paths), name=call.operation_id, is_mount=False, copy_scope=False)(handle)
