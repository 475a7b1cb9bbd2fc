"""Rendering console pages: the context every template gets, and the template filters."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import pass_context
from litestar import Request
from litestar.exceptions import HTTPException
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template
from litestar.template import TemplateConfig
from markupsafe import Markup, escape

from core.clock import beijing_time
from core.operators import Operator, Role, Session

if TYPE_CHECKING:
    from service.wiring import Services

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

STATE_LABELS = {
    "accepted": "已受理",
    "submitting": "提交中",
    "pending": "充值中",
    "unknown": "结果未知",
    "review": "待人工审核",
    "succeeded": "成功",
    "failed": "失败",
}
ROLE_LABELS = {Role.VIEWER: "只读", Role.OPERATOR: "操作员", Role.ADMIN: "管理员"}
# The kinds of background worker (core/worker_loop.py), as the overview names them.
WORKER_KINDS = {"dispatcher": "派单 dispatcher", "notifier": "通知 notifier"}


class ConsoleError(HTTPException):
    """A refusal the operator reads on the page (bad input, a conflict): status 400."""

    status_code = 400


def required_reason(text: str, refusal: str = "请填写原因：它会记录在审计日志中") -> str:
    """The reason an action is recorded with; every console action needs one."""
    reason = text.strip()
    if not reason:
        raise ConsoleError(refusal)
    return reason


def services(request: Request) -> Services:
    return request.app.state.services


def session_of(request: Request) -> Session:
    return request.scope["state"]["console_session"]


def operator(request: Request) -> Operator:
    return session_of(request).operator


def needs(role: Role) -> dict[str, Any]:
    """The ``opt`` of a handler that needs ``role`` (the default is a viewer's)."""
    return {"role": role}


def page(request: Request, template: str, status_code: int = 200, **context: Any) -> Template:
    session = request.scope["state"].get("console_session")
    return Template(
        template_name=template,
        context={
            "operator": session.operator if session else None,
            "csrf_token": session.csrf_token if session else "",
            "Role": Role,
            "request_path": request.url.path,
            **context,
        },
        status_code=status_code,
    )


def yuan(fen: int | None) -> str:
    if fen is None:
        return "-"
    return f"{Decimal(fen) / 100:,.2f}"


@pass_context
def csrf_field(context: Any) -> Markup:
    token = escape(context.get("csrf_token", ""))
    return Markup(f'<input type="hidden" name="csrf_token" value="{token}">')


def _configure(engine: JinjaTemplateEngine) -> None:
    env = engine.engine
    env.globals.update(
        csrf_field=csrf_field,
        STATE_LABELS=STATE_LABELS,
        ROLE_LABELS=ROLE_LABELS,
        WORKER_KINDS=WORKER_KINDS,
    )
    env.filters.update(
        yuan=yuan,
        bjtime=beijing_time,
        state_label=lambda state: STATE_LABELS.get(state, state),
    )
    env.trim_blocks = env.lstrip_blocks = True


def template_config() -> TemplateConfig:
    return TemplateConfig(
        directory=TEMPLATES, engine=JinjaTemplateEngine, engine_callback=_configure
    )
