"""审计日志: every operator action, newest first; the page only reads."""

from __future__ import annotations

from litestar import Request, get
from litestar.params import FromQuery
from litestar.response import Template

from core.audit import AuditLog
from service.console.render import page, services

ACTIONS = {
    "order.resolve": "审核：认定结果",
    "order.requery": "审核：重新查询",
    "app.credit": "入账",
    "app.credit_limit": "信用额度",
    "app.notify_url": "通知地址",
    "app.allow_ips": "IP 白名单",
    "app.rotate_secret": "更换密钥",
    "route.set": "切换路由",
    "route.reset": "恢复路由",
    "reconcile.upload": "上传对账单",
    "operator.add": "新增操作员",
    "operator.change": "修改操作员",
}


@get("/audit", include_in_schema=False)
async def audit(
    request: Request,
    before: FromQuery[int | None] = None,
    actor: FromQuery[str | None] = None,
    action: FromQuery[str | None] = None,
    target: FromQuery[str | None] = None,
) -> Template:
    entries = await AuditLog(services(request).db).page(
        before_id=before, limit=PAGE + 1, actor=actor, action=action, target=target
    )
    more = len(entries) > PAGE
    entries = entries[:PAGE]
    filters = {"actor": actor or "", "action": action or "", "target": target or ""}
    return page(
        request,
        "audit.html",
        entries=entries,
        next_before=entries[-1].id if more else None,
        filters=filters,
        actions=ACTIONS,
        active="audit",
    )


PAGE = 50


route_handlers = [audit]
