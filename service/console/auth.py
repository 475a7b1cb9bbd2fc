"""Who is signed in: sessions, roles, CSRF, and the sign-in page.

One guard on the console router does it all, before any handler runs: it finds the
session behind the cookie, checks the role the handler needs (``opt["role"]``), and for
every unsafe request the CSRF token (a synchronizer token kept with the session, sent
as the ``csrf_token`` form field or the ``X-CSRF-Token`` header). The sign-in form,
which has no session yet, is protected by a double-submit cookie instead.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from typing import Annotated
from urllib.parse import quote

import msgspec
from litestar import Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers import BaseRouteHandler
from litestar.params import Body, FromQuery
from litestar.response import Redirect, Template

from core.operators import Role
from service.console.render import page, services
from service.partner_api import client_address

log = logging.getLogger("topup.console")

SESSION_COOKIE = "topup_console"
SIGN_IN_COOKIE = "topup_console_signin"
CONSOLE = "/console"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def console_guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    if handler.opt.get("public"):
        return
    token = connection.cookies.get(SESSION_COOKIE)
    session = await services(connection).sessions.find(token) if token else None
    if session is None:
        raise NotAuthorizedException("请先登录")
    connection.scope["state"]["console_session"] = session
    if connection.scope["method"] not in SAFE_METHODS:
        await _check_csrf(connection, session.csrf_token)
    needed: Role = handler.opt.get("role", Role.VIEWER)
    if not session.operator.can(needed):
        raise PermissionDeniedException(f"需要{_role_name(needed)}权限")


async def _check_csrf(connection: ASGIConnection, expected: str) -> None:
    supplied = connection.headers.get("x-csrf-token")
    if supplied is None and isinstance(connection, Request):
        supplied = (await connection.form()).get("csrf_token")
    if not isinstance(supplied, str) or not hmac.compare_digest(supplied, expected):
        log.warning(
            "console: a %s to %s without a valid CSRF token was refused",
            connection.scope["method"],
            connection.url.path,
        )
        raise PermissionDeniedException("表单已失效或来源不明 (CSRF 校验失败)，请刷新页面后重试")


def _role_name(role: Role) -> str:
    return {Role.VIEWER: "只读", Role.OPERATOR: "操作员", Role.ADMIN: "管理员"}[role]


def signed_out(request: Request, exc: NotAuthorizedException) -> Response:
    """Back to the sign-in page, and back here afterwards."""
    target = request.url.path
    if request.url.query:
        target += "?" + request.url.query
    if request.method not in SAFE_METHODS:
        target = CONSOLE
    return Redirect(f"{CONSOLE}/login?next={quote(target)}", status_code=303)


def refused(request: Request, exc: PermissionDeniedException) -> Template:
    return page(request, "error.html", status_code=403, title="无权操作", message=exc.detail)


def _safe_next(target: str | None) -> str:
    # Only a console path: never another site (an open redirect), never "//host".
    if target and target.startswith(CONSOLE) and not target.startswith("//"):
        return target
    return CONSOLE


def _cookie_secure(request: Request) -> bool:
    return request.url.scheme == "https" or services(request).settings.console_secure_cookie


@get("/login", opt={"public": True}, name="console-login", include_in_schema=False)
async def login_form(request: Request, next: FromQuery[str | None] = None) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    if token and await services(request).sessions.find(token):
        return Redirect(_safe_next(next), status_code=303)
    return _login_page(request, next, message=None)


def _login_page(
    request: Request, next: str | None, message: str | None, status_code: int = 200
) -> Response:
    sign_in_token = secrets.token_urlsafe(24)
    template = page(
        request,
        "login.html",
        status_code=status_code,
        csrf_token=sign_in_token,
        next=_safe_next(next),
        message=message,
    )
    template.set_cookie(
        SIGN_IN_COOKIE,
        sign_in_token,
        path=CONSOLE,
        httponly=True,
        samesite="strict",
        secure=_cookie_secure(request),
    )
    return template


class SignIn(msgspec.Struct):
    name: str = ""
    password: str = ""
    csrf_token: str = ""
    next: str = CONSOLE


@post("/login", opt={"public": True}, status_code=303, include_in_schema=False)
async def login(
    request: Request,
    data: Annotated[SignIn, Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Response:
    expected = request.cookies.get(SIGN_IN_COOKIE, "")
    if not expected or not hmac.compare_digest(data.csrf_token, expected):
        return _login_page(request, data.next, "登录表单已失效，请重新输入", 403)
    address = client_address(request.scope, services(request).guard)
    throttle = services(request).sign_in_throttle
    if throttle.locked_for(data.name, address):
        return _locked(request, data, address)
    found = await services(request).operators.authenticate(data.name, data.password)
    if found is None:
        throttle.failed(data.name, address)
        log.warning("console: failed sign-in for %r from %s", data.name[:64], address)
        if throttle.locked_for(data.name, address):
            return _locked(request, data, address)
        return _login_page(request, data.next, "用户名或密码错误", 401)
    token, _session = await services(request).sessions.open(found, address)
    log.info("console: %s signed in from %s", found.name, address)
    response = Redirect(_safe_next(data.next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        path=CONSOLE,
        httponly=True,
        samesite="strict",
        secure=_cookie_secure(request),
    )
    response.delete_cookie(SIGN_IN_COOKIE, path=CONSOLE)
    return response


def _locked(request: Request, data: SignIn, address: str) -> Response:
    seconds = services(request).sign_in_throttle.locked_for(data.name, address)
    minutes = int(seconds // 60) + 1
    return _login_page(request, data.next, f"登录失败次数过多，请 {minutes} 分钟后再试", 429)


@post("/logout", status_code=303, include_in_schema=False)
async def logout(request: Request) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        await services(request).sessions.close(token)
    response = Redirect(f"{CONSOLE}/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=CONSOLE)
    return response
