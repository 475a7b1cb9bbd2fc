"""操作员: console accounts, managed by admins (as ``topup operator`` does)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Request, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, FromQuery
from litestar.response import Redirect, Template

from core.operators import OperatorError, Role
from service.console.render import (
    ConsoleError,
    needs,
    operator,
    page,
    required_reason,
    services,
)

Form = Body(media_type=RequestEncodingType.URL_ENCODED)
ADMIN = needs(Role.ADMIN)


class NewOperator(msgspec.Struct):
    name: str = ""
    role: str = "viewer"
    password: str = ""
    csrf_token: str = ""


class OperatorChange(msgspec.Struct):
    role: str = ""
    status: str = ""  # "", "disable", "enable"
    reason: str = ""
    csrf_token: str = ""


def _role(name: str) -> Role:
    try:
        return Role.named(name)
    except ValueError:
        raise ConsoleError(f"未知角色 {name!r}") from None


@get("/operators", opt=ADMIN, include_in_schema=False)
async def operators(request: Request, done: FromQuery[str | None] = None) -> Template:
    accounts = await services(request).operators.all()
    flash = f"操作员 {done} 已保存" if done else None
    return page(request, "operators.html", accounts=accounts, flash=flash, active="operators")


@post("/operators", opt=ADMIN, include_in_schema=False)
async def add_operator(request: Request, data: Annotated[NewOperator, Form]) -> Redirect:
    try:
        await services(request).operators.add(
            data.name.strip(), data.password, _role(data.role), operator(request).name
        )
    except OperatorError as exc:
        raise ConsoleError(f"无法新增操作员: {exc}") from None
    return Redirect(f"/console/operators?done={data.name.strip()}", status_code=303)


@post("/operators/{name:str}", opt=ADMIN, include_in_schema=False)
async def change_operator(
    request: Request, name: FromPath[str], data: Annotated[OperatorChange, Form]
) -> Redirect:
    reason = required_reason(data.reason)
    if name == operator(request).name:
        # An admin locking themselves out would leave nobody to undo it from here.
        raise ConsoleError("不能修改自己的账号；请另一位管理员操作，或使用 topup operator set")
    disabled = {"disable": True, "enable": False}.get(data.status)
    try:
        await services(request).operators.change(
            name,
            operator(request).name,
            reason,
            role=_role(data.role) if data.role else None,
            disabled=disabled,
        )
    except OperatorError as exc:
        raise ConsoleError(str(exc)) from None
    return Redirect(f"/console/operators?done={name}", status_code=303)


route_handlers = [operators, add_operator, change_operator]
