"""供应商与路由: each carrier's route, what each plugin costs, circuits and balances; an
admin switches a carrier's route (core/route_overrides.py, the path `topup routes` takes)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from litestar import Request, get, post
from litestar.datastructures import FormMultiDict
from litestar.params import FromQuery
from litestar.response import Redirect, Template

from core.circuits import open_circuits
from core.config import Config, ConfigError, RouteEntry, load_config
from core.operators import Role
from core.pricing import product_costs
from core.route_overrides import (
    CarrierRoute,
    RouteRefused,
    effective_routes,
    load_overrides,
    reset_route,
    set_route,
)
from core.runtime import Runtime
from service.console.render import needs, operator, page, services

PATH = "/suppliers"


@get(PATH, name="console-suppliers", include_in_schema=False)
async def suppliers_page(
    request: Request,
    switched: FromQuery[str | None] = None,
    reset: FromQuery[str | None] = None,
) -> Template:
    flash = None
    if switched:
        flash = f"{switched} 的路由已切换，所有实例将在 1 秒内生效"
    elif reset:
        flash = f"{reset} 已恢复为 plugins.toml 中的路由"
    return await _render(request, flash=flash)


async def _render(
    request: Request,
    status_code: int = 200,
    flash: str | None = None,
    error: str | None = None,
    error_carrier: str | None = None,
) -> Template:
    svc = services(request)
    runtime = svc.runtime
    file_config = runtime.file_config or runtime.config
    carriers = effective_routes(file_config, await load_overrides(svc.db))
    circuits = {c.plugin: c for c in await open_circuits(svc.db)}
    enabled = list(runtime.config.enabled)
    return page(
        request,
        "suppliers.html",
        status_code=status_code,
        title="供应商与路由",
        carriers=[_carrier_view(c, enabled) for c in carriers],
        costs=product_costs(runtime.config),
        circuits=circuits,
        balances=svc.balances.read(),
        enabled=enabled,
        can_switch=operator(request).can(Role.ADMIN),
        flash=flash,
        error=error,
        error_carrier=error_carrier,
    )


def _carrier_view(carrier: CarrierRoute, enabled: list[str]) -> dict[str, Any]:
    """A carrier with one form row per enabled plugin: used or not, position, weight."""
    position = {e.plugin: n for n, e in enumerate(carrier.route, 1)}
    weight = {e.plugin: e.weight for e in carrier.route}
    rows = [
        {
            "plugin": plugin,
            "used": plugin in position,
            "position": position.get(plugin, len(carrier.route) + 1 + n),
            "weight": weight.get(plugin, 0),
        }
        for n, plugin in enumerate(enabled)
    ]
    rows.sort(key=lambda row: row["position"])
    return {"route": carrier, "rows": rows}


@post(f"{PATH}/route", opt=needs(Role.ADMIN), include_in_schema=False)
async def switch_route(request: Request) -> Any:
    form = await request.form()
    carrier, reason = _text(form, "carrier"), _text(form, "reason")
    svc = services(request)
    try:
        _need_reason(reason)
        file_config = _file_config(svc.settings.config_path)
        route = await _route_from_form(svc, file_config, form, carrier)

        async def build(config: Config) -> None:
            await Runtime.build(config, svc.registry).aclose()

        await set_route(
            svc.db, file_config, carrier, route, operator(request).name, reason, build=build
        )
    except RouteRefused as exc:
        return await _render(request, 400, error=str(exc), error_carrier=carrier)
    return Redirect(f"/console{PATH}?switched={quote(carrier)}", status_code=303)


@post(f"{PATH}/reset", opt=needs(Role.ADMIN), include_in_schema=False)
async def reset_override(request: Request) -> Any:
    form = await request.form()
    carrier, reason = _text(form, "carrier"), _text(form, "reason")
    svc = services(request)
    try:
        _need_reason(reason)
        file_config = _file_config(svc.settings.config_path)
        await reset_route(svc.db, file_config, carrier, operator(request).name, reason)
    except RouteRefused as exc:
        return await _render(request, 400, error=str(exc), error_carrier=carrier)
    return Redirect(f"/console{PATH}?reset={quote(carrier)}", status_code=303)


def _need_reason(reason: str) -> None:
    if not reason:
        raise RouteRefused("请填写原因")


def _text(form: FormMultiDict, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _file_config(path: str) -> Config:
    """plugins.toml as on disk now: what every instance will apply the override to."""
    try:
        return load_config(path)
    except ConfigError as exc:
        raise RouteRefused(f"plugins.toml 当前无效，请先修正: {exc}") from exc


async def _route_from_form(
    svc, file_config: Config, form: FormMultiDict, carrier: str
) -> list[RouteEntry]:
    """The route the form asks for: a quick "X 优先" button, or the per-plugin rows."""
    first = _text(form, "first")
    if first:
        # X first, then the current route's other plugins in their order, without weights:
        # every order tries X first (a weight would share first attempts).
        current = {
            c.carrier: c for c in effective_routes(file_config, await load_overrides(svc.db))
        }.get(carrier)
        rest = [e.plugin for e in current.route if e.plugin != first] if current else []
        return [RouteEntry(first)] + [RouteEntry(plugin) for plugin in rest]
    chosen = []
    for index, plugin in enumerate(form.getall("plugin")):
        if form.get(f"use:{plugin}") is None:
            continue
        position = _number(form, f"position:{plugin}", plugin, "位置")
        weight = _number(form, f"weight:{plugin}", plugin, "权重")
        chosen.append((position, index, RouteEntry(plugin, weight)))
    if not chosen:
        raise RouteRefused("至少选择一个供应商插件")
    return [entry for _, _, entry in sorted(chosen, key=lambda c: (c[0], c[1]))]


def _number(form: FormMultiDict, field: str, plugin: str, what: str) -> int:
    text = _text(form, field) or "0"
    if not text.isascii() or not text.isdigit():
        raise RouteRefused(f"{plugin} 的{what}须为不小于 0 的整数，而不是 {text!r}")
    return int(text)


route_handlers = [suppliers_page, switch_route, reset_override]
