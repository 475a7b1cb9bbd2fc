"""对账: upload a supplier's daily statement and see where it and our attempts differ.

The same core path as ``topup reconcile supplier`` (core/reconcile.py): the plugin reads
the file, ``check_statement`` compares; each upload is recorded in the audit log.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from litestar import Request, get, post
from litestar.datastructures import UploadFile
from litestar.response import Template

from core.clock import BEIJING
from core.operators import Role
from core.reconcile import (
    StatementUnreadable,
    SupplierCheck,
    check_statement,
    read_statement,
    record_statement_check,
)
from service.console.render import ConsoleError, needs, operator, page, services

PATH = "/reconcile"
# A day's statement of a busy supplier runs to megabytes; the partner API's 64 KiB limit
# is for partners' requests, not for this.
MAX_STATEMENT_BYTES = 32 * 1024 * 1024

MISMATCH_LABELS = {
    "MISSING_HERE": "我方无此交易（供应商有记录，我们从未发送）",
    "MISSING_AT_SUPPLIER": "供应商无记录（我们已发送且未被拒绝）",
    "STATUS_MISMATCH": "状态不一致（一方成功，另一方失败）",
    "OPEN_HERE": "我方未结（供应商已结算，请处理该订单）",
    "OPEN_AT_SUPPLIER": "供应商未结（我方已是最终状态）",
    "AMOUNT_MISMATCH": "金额不一致（与 plugins.toml 中的成本不符）",
}


def _today() -> date:
    return datetime.now(BEIJING).date()


def _form_page(request: Request, status_code: int = 200, **context: Any) -> Template:
    plugins = list(services(request).runtime.suppliers)
    defaults = {"plugin": plugins[0] if plugins else "", "day": _today().isoformat()}
    return page(
        request,
        "reconcile.html",
        status_code=status_code,
        title="对账",
        plugins=plugins,
        can_upload=operator(request).can(Role.OPERATOR),
        labels=MISMATCH_LABELS,
        chosen=defaults | context.pop("chosen", {}),
        **context,
    )


@get(PATH, name="console-reconcile", include_in_schema=False)
async def reconcile_page(request: Request) -> Template:
    return _form_page(request)


@post(
    PATH,
    opt=needs(Role.OPERATOR),
    request_max_body_size=MAX_STATEMENT_BYTES,
    include_in_schema=False,
)
async def upload_statement(request: Request) -> Template:
    form = await request.form()
    plugin = str(form.get("plugin") or "")
    day_text = str(form.get("day") or "")
    chosen = {"plugin": plugin, "day": day_text}
    try:
        check, filename = await _check(request, plugin, day_text, form.get("statement"))
    except ConsoleError as exc:
        return _form_page(request, 400, error=exc.detail, chosen=chosen)
    return _form_page(request, check=check, filename=filename, checked_plugin=plugin, chosen=chosen)


async def _check(
    request: Request, plugin: str, day_text: str, upload: Any
) -> tuple[SupplierCheck, str]:
    svc = services(request)
    supplier = svc.runtime.suppliers.get(plugin)
    if supplier is None:
        raise ConsoleError(f"插件 {plugin!r} 未启用")
    try:
        day = date.fromisoformat(day_text)
    except ValueError:
        raise ConsoleError(f"日期 {day_text!r} 无效，应为 YYYY-MM-DD") from None
    if not isinstance(upload, UploadFile) or not upload.filename:
        raise ConsoleError("请选择对账单文件")
    content = await upload.read()
    try:
        lines = read_statement(supplier, content)
    except StatementUnreadable as exc:
        raise ConsoleError(f"无法读取对账单 {upload.filename}: {exc}") from exc
    check = await check_statement(svc.db, plugin, day, lines)
    await record_statement_check(
        svc.db, operator(request).name, plugin, day, upload.filename, content, check
    )
    return check, upload.filename


route_handlers = [reconcile_page, upload_statement]
