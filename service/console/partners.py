"""合作方: each partner's account and ledger, and what an admin changes for them.

Each change goes through the core call ``topup app`` uses, which records it in the
audit log with the operator and the reason.
"""

from __future__ import annotations

import io
import re
from datetime import date
from typing import Annotated

import msgspec
from litestar import Request, Response, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, FromQuery
from litestar.response import Redirect, Template

from core.apps import App
from core.clock import now_ms
from core.money import yuan_to_fen
from core.operators import Role
from core.reconcile import partner_statement
from core.statements import ledger_page
from service.cli_reconcile import write_statement
from service.console.render import (
    ConsoleError,
    needs,
    operator,
    page,
    required_reason,
    services,
)
from service.notify_targets import TargetRefused, check_notify_url

Form = Body(media_type=RequestEncodingType.URL_ENCODED)
DONE = {
    "credit": "已入账",
    "limit": "信用额度已更新",
    "notify": "通知地址已更新",
}


class CreditForm(msgspec.Struct):
    amount: str = ""
    reason: str = ""
    csrf_token: str = ""


class LimitForm(msgspec.Struct):
    credit_limit: str = ""
    reason: str = ""
    csrf_token: str = ""


class NotifyForm(msgspec.Struct):
    notify_url: str = ""
    allow_private: str = ""
    reason: str = ""
    csrf_token: str = ""


class RotateForm(msgspec.Struct):
    grace_seconds: str = "86400"
    reason: str = ""
    csrf_token: str = ""


async def _app(request: Request, app_id: str) -> App:
    found = await services(request).apps.get(app_id)
    if found is None:
        raise ConsoleError(f"没有合作方 {app_id}")
    return found


def _fen(text: str, what: str) -> int:
    try:
        return yuan_to_fen(text.strip())
    except (ValueError, ArithmeticError):
        raise ConsoleError(f"{what}不是有效的金额（元，最多两位小数）: {text!r}") from None


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


@get("/partners", include_in_schema=False)
async def partners(request: Request) -> Template:
    everyone = await services(request).apps.all()
    ledger = services(request).ledger
    rows = [(app, await ledger.account(app.app_id)) for app in everyone]
    return page(request, "partners.html", rows=rows, active="partners")


@get("/partners/{app_id:str}", include_in_schema=False)
async def partner(
    request: Request,
    app_id: FromPath[str],
    before: FromQuery[int | None] = None,
    done: FromQuery[str | None] = None,
) -> Template:
    found = await _app(request, app_id)
    ledger = await ledger_page(services(request).db, app_id, before=before)
    return page(
        request,
        "partner.html",
        app=found,
        ledger=ledger,
        grace_active=bool(found.previous_secret_until and found.previous_secret_until > now_ms()),
        flash=DONE.get(done or ""),
        today=date.today().isoformat(),
        active="partners",
    )


@post("/partners/{app_id:str}/credit", opt=needs(Role.ADMIN), include_in_schema=False)
async def credit(
    request: Request, app_id: FromPath[str], data: Annotated[CreditForm, Form]
) -> Redirect:
    await _app(request, app_id)
    amount = _fen(data.amount, "入账金额")
    if amount <= 0:
        raise ConsoleError("入账金额必须大于 0")
    reason = required_reason(data.reason)
    await services(request).ledger.credit(app_id, amount, reason, operator(request).name)
    return Redirect(f"/console/partners/{app_id}?done=credit", status_code=303)


@post("/partners/{app_id:str}/limit", opt=needs(Role.ADMIN), include_in_schema=False)
async def credit_limit(
    request: Request, app_id: FromPath[str], data: Annotated[LimitForm, Form]
) -> Redirect:
    await _app(request, app_id)
    limit = _fen(data.credit_limit, "信用额度")
    if limit < 0:
        raise ConsoleError("信用额度不能为负数")
    await services(request).ledger.set_credit_limit(
        app_id, limit, actor=operator(request).name, reason=required_reason(data.reason)
    )
    return Redirect(f"/console/partners/{app_id}?done=limit", status_code=303)


@post("/partners/{app_id:str}/notify", opt=needs(Role.ADMIN), include_in_schema=False)
async def notify_url(
    request: Request, app_id: FromPath[str], data: Annotated[NotifyForm, Form]
) -> Redirect:
    await _app(request, app_id)
    url, allow_private = data.notify_url.strip(), data.allow_private == "1"
    if url:
        try:
            check_notify_url(url, allow_private)
        except TargetRefused as exc:
            raise ConsoleError(f"通知地址不可用: {exc}") from None
    await services(request).apps.set_notify_url(
        app_id,
        url or None,
        allow_private=allow_private and bool(url),
        actor=operator(request).name,
        reason=required_reason(data.reason),
    )
    return Redirect(f"/console/partners/{app_id}?done=notify", status_code=303)


@post("/partners/{app_id:str}/rotate", opt=needs(Role.ADMIN), include_in_schema=False)
async def rotate_secret(
    request: Request, app_id: FromPath[str], data: Annotated[RotateForm, Form]
) -> Template:
    await _app(request, app_id)
    try:
        grace = float(data.grace_seconds)
    except ValueError:
        grace = -1.0
    if not 0 <= grace <= 30 * 86400:
        raise ConsoleError("旧密钥的宽限期应在 0 到 2592000 秒（30 天）之间")
    reason = required_reason(data.reason)
    new_secret = await services(request).apps.rotate_secret(
        app_id, grace, actor=operator(request).name, reason=reason
    )
    if new_secret is None:
        raise ConsoleError(f"没有合作方 {app_id}")
    # Shown once, on this page only; it is never stored in plaintext nor shown again.
    response = page(
        request, "secret.html", app_id=app_id, secret=new_secret, grace=grace, active="partners"
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@get("/partners/{app_id:str}/statement", include_in_schema=False)
async def statement(request: Request, app_id: FromPath[str], day: FromQuery[str]) -> Response:
    await _app(request, app_id)
    try:
        wanted = date.fromisoformat(day)
    except ValueError:
        raise ConsoleError(f"日期格式应为 YYYY-MM-DD: {day!r}") from None
    rows = await partner_statement(services(request).db, wanted, app_id)
    text = io.StringIO()
    write_statement(text, rows, with_cost=False)
    return Response(
        content=("\ufeff" + text.getvalue()).encode("utf-8"),  # BOM: spreadsheets read UTF-8
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="statement-{_safe(app_id)}-{wanted}.csv"',
        },
    )


route_handlers = [partners, partner, credit, credit_limit, notify_url, rotate_secret, statement]
