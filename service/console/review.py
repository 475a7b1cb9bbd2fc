"""人工审核: orders whose outcome the supplier never settled, and the operator's verdict.

The decisions go through the same core calls as ``topup orders review``
(``Lifecycle.resolve`` and ``Lifecycle.requery``): one path for both.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Request, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, FromQuery
from litestar.response import Redirect, Template

from core.operators import Role
from service.console.render import (
    ConsoleError,
    needs,
    operator,
    page,
    required_reason,
    services,
)

# The oldest orders in review are listed; a longer queue says so.
QUEUE_PAGE = 200
DECISIONS = {"succeeded": "确认成功", "failed": "确认失败", "requery": "重新查询供应商"}


class Decision(msgspec.Struct):
    decision: str = ""
    reason: str = ""
    csrf_token: str = ""


@get("/review", include_in_schema=False)
async def review_queue(request: Request, done: FromQuery[str | None] = None) -> Template:
    store = services(request).store
    queue = await store.review_queue(QUEUE_PAGE)
    flash = f"订单 {done} 已处理" if done else None
    return page(
        request,
        "review.html",
        queue=queue,
        total=await store.count_in_review(),
        decisions=DECISIONS,
        flash=flash,
        active="review",
    )


@post("/review/{order_no:str}", opt=needs(Role.OPERATOR), include_in_schema=False)
async def decide(
    request: Request,
    order_no: FromPath[str],
    data: Annotated[Decision, Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Redirect:
    if data.decision not in DECISIONS:
        raise ConsoleError("请选择处理方式：确认成功、确认失败或重新查询")
    reason = required_reason(data.reason, "请填写处理原因：它会和决定一起记录在案")
    lifecycle, actor = services(request).lifecycle, operator(request).name
    if data.decision == "requery":
        if not await lifecycle.requery(order_no, actor, reason):
            raise ConsoleError(f"订单 {order_no} 不在人工审核中")
    else:
        try:
            applied = await lifecycle.resolve(order_no, data.decision == "succeeded", reason, actor)
        except LookupError:
            raise ConsoleError(f"订单 {order_no} 没有待处理的上游尝试") from None
        if not applied.changed:
            raise ConsoleError(f"订单 {order_no} 已经是最终状态 ({applied.state})，未作改动")
    return Redirect(f"/console/review?done={order_no}", status_code=303)


route_handlers = [review_queue, decide]
