"""订单: the order search, and one order's page (timeline, attempts, ledger, notifications).

Both read through core/search.py: keyset pages driven by one index, a bounded walk for
rare matches (the page says how far back it looked), see BENCHMARKS.md "Console at 1M
orders". The search is a GET form, so a result page can be bookmarked and shared.
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlencode

from litestar import Request, get
from litestar.params import FromPath
from litestar.response import Template
from sqlalchemy import select

from core.clock import BEIJING
from core.db import apps
from core.search import SCAN_LIMIT, OrderFilter, OrderSearch
from service.console.render import page, services

FIELDS = (
    "order_no",
    "cstm_order_no",
    "phone_no",
    "app_id",
    "carrier",
    "plugin",
    "state",
    "since",
    "until",
)
# Longer than any order number, appID, phone number or plugin name: cut, not refused.
MAX_FIELD = 64

KINDS = {
    "accepted": "合作方下单",
    "hold": "冻结货款",
    "attempt_started": "提交给供应商",
    "attempt_refused": "供应商拒单，转下一家",
    "attempt_succeeded": "上游结果：成功",
    "attempt_failed": "上游结果：失败",
    "review": "转人工审核",
    "requeried": "送回自动查询",
    "resent": "供应商查无此单，同一参考号重新提交",
    "resolved": "人工认定结果",
    "succeeded": "订单成功",
    "failed": "订单失败",
    "capture": "扣款",
    "release": "解冻退回",
    "notify_queued": "生成合作方通知",
    "notify_delivered": "通知已送达合作方",
}
ACTORS = {"system": "系统", "partner": "合作方", "supplier": "供应商", "operator": "操作员"}
LEDGER_KINDS = {"hold": "冻结", "capture": "扣款", "release": "解冻退回", "credit": "入账"}
NOTIFICATION_STATUS = {"delivered": "已送达", "waiting": "等待发送", "given_up": "已放弃"}


class BadFilter(ValueError):
    pass


def beijing_ms(text: str, field: str) -> int:
    """A form's ``datetime-local`` value (Beijing time) as Unix milliseconds."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadFilter(f"{field}不是有效的时间: {text}（格式 2026-11-26 10:00）") from None
    return int(moment.replace(tzinfo=BEIJING).timestamp() * 1000)


def read_filter(values: dict[str, str]) -> OrderFilter:
    given = {name: value for name, value in values.items() if value}
    since = given.pop("since", None)
    until = given.pop("until", None)
    return OrderFilter(
        **given,
        since=beijing_ms(since, "开始时间") if since else None,
        until=beijing_ms(until, "结束时间") if until else None,
    )


@get("/orders", include_in_schema=False)
async def orders_page(request: Request) -> Template:
    values = {name: request.query_params.get(name, "").strip()[:MAX_FIELD] for name in FIELDS}
    after = request.query_params.get("after", "").strip()[:MAX_FIELD] or None
    error, results = None, None
    try:
        wanted = read_filter(values)
    except BadFilter as exc:
        error = str(exc)
    else:
        results = await OrderSearch(services(request).db).search(wanted, after)
    query = {name: value for name, value in values.items() if value}
    next_link = None
    if results is not None and results.next_after:
        next_link = "/console/orders?" + urlencode({**query, "after": results.next_after})
    config = services(request).runtime.config
    return page(
        request,
        "orders.html",
        values=values,
        results=results,
        error=error,
        paged=after is not None,
        first_link="/console/orders?" + urlencode(query),
        next_link=next_link,
        partners=await _partners(request),
        carriers=sorted(config.carriers),
        plugins=sorted(set(config.enabled)),
        scan_limit=SCAN_LIMIT,
        active="orders",
    )


async def _partners(request: Request) -> list[tuple[str, str]]:
    """(appID, company) of every partner, read without opening their sealed secrets."""
    query = select(apps.c.app_id, apps.c.company).order_by(apps.c.app_id)
    return await services(request).db.read(lambda conn: [tuple(row) for row in conn.execute(query)])


@get("/orders/{order_no:str}", include_in_schema=False)
async def order_page(request: Request, order_no: FromPath[str]) -> Template:
    detail = await OrderSearch(services(request).db).detail(order_no[:MAX_FIELD])
    if detail is None:
        return page(
            request,
            "error.html",
            status_code=404,
            title="订单不存在",
            message=f"没有订单 {order_no[:MAX_FIELD]}",
        )
    return page(
        request,
        "order.html",
        title=f"订单 {order_no}",
        d=detail,
        o=detail.order,
        kinds=KINDS,
        actors=ACTORS,
        ledger_kinds=LEDGER_KINDS,
        notification_status=NOTIFICATION_STATUS,
        active="orders",
    )


route_handlers = [orders_page, order_page]
