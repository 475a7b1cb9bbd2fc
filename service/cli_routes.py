"""``topup routes``: each carrier's route, and switching it in every running instance."""

from __future__ import annotations

import click

from core.circuits import OpenCircuit, open_circuits
from core.clock import beijing_time
from core.config import Config, ConfigError, load_config
from core.db import Database
from core.route_overrides import (
    CarrierRoute,
    RouteRefused,
    effective_routes,
    format_route,
    load_overrides,
    parse_route,
    reset_route,
    set_route,
)
from core.runtime import Runtime
from service.cli_support import operator_option, run_with_db
from service.settings import Settings
from service.wiring import build_registry


@click.group(invoke_without_command=True)
@click.pass_context
def routes(ctx: click.Context) -> None:
    """Each carrier's route: show it (no subcommand), switch it, reset it.

    A switched route (an override) is stored in the database with who and why, checked
    like `topup reload` checks plugins.toml, and applied by every running instance within
    a second, until it is reset.
    """
    if ctx.invoked_subcommand is None:
        _show()


@routes.command("show")
def show() -> None:
    """Each carrier's effective route, whether it is overridden (by whom, why, when),
    and the plugins whose circuit is open."""
    _show()


def _show() -> None:
    file_config = _file_config()

    async def read(db: Database) -> tuple[list[CarrierRoute], list[OpenCircuit]]:
        return effective_routes(file_config, await load_overrides(db)), await open_circuits(db)

    carriers, circuits = run_with_db(read)
    for carrier in carriers:
        click.echo(f"{carrier.carrier}: {format_route(carrier.route) or '-'}")
        override = carrier.override
        if override is None:
            click.echo("  from plugins.toml")
            continue
        state = "overridden" if carrier.overridden else "override NOT APPLIED"
        click.echo(
            f"  {state} {beijing_time(override.updated_at)} by {override.actor}: "
            f"{override.reason!r}"
        )
        if carrier.skipped is not None:
            click.echo(f"  stored route {format_route(override.route)}: {carrier.skipped}")
            click.echo(f"  remove it with: topup routes reset {carrier.carrier} --reason ...")
        else:
            click.echo(f"  plugins.toml: {format_route(carrier.file_route) or '-'}")
    for circuit in circuits:
        click.echo(
            f"circuit open: {circuit.plugin} until {beijing_time(circuit.until)}"
            f" ({circuit.processes} dispatcher{'s' if circuit.processes > 1 else ''})"
        )


@routes.command("set")
@click.argument("carrier")
@click.argument("entries", nargs=-1, required=True, metavar="PLUGIN[:WEIGHT]...")
@click.option("--reason", required=True, help="Why; recorded with the change.")
@operator_option()
def set_(carrier: str, entries: tuple[str, ...], reason: str, operator: str) -> None:
    """Route CARRIER to these plugins, in failover order, in every running instance.

    \b
    A weight shares first attempts between the weighted plugins; unweighted ones are
    failover only. Examples:
      topup routes set 中国移动 reloadly juhe --reason "juhe 大量失败"
      topup routes set 中国移动 juhe:3 reloadly:1 --reason "分流"
    """
    file_config = _file_config()
    registry = build_registry()

    async def build(config: Config) -> None:
        # The runtime an instance will build from it: plugins and their settings.
        await Runtime.build(config, registry).aclose()

    async def change(db: Database) -> int:
        route = parse_route(entries)
        return await set_route(db, file_config, carrier, route, operator, reason, build=build)

    generation = _refusing(change)
    click.echo(
        f"{carrier}: route set to {' -> '.join(entries)}; every running instance applies it "
        f"within a second (generation {generation})"
    )


@routes.command("reset")
@click.argument("carrier")
@click.option("--reason", required=True, help="Why; recorded with the change.")
@operator_option()
def reset(carrier: str, reason: str, operator: str) -> None:
    """Remove CARRIER's override: plugins.toml's route applies again everywhere."""
    file_config = _file_config()
    generation = _refusing(lambda db: reset_route(db, file_config, carrier, operator, reason))
    click.echo(
        f"{carrier}: override removed, plugins.toml's route applies again (generation {generation})"
    )


def _refusing(work):
    try:
        return run_with_db(work)
    except RouteRefused as exc:
        raise click.ClickException(f"refused, nothing changed: {exc}") from exc


def _file_config() -> Config:
    settings = Settings.from_env()
    try:
        return load_config(settings.config_path)
    except ConfigError as exc:
        raise click.ClickException(f"invalid configuration: {exc}") from exc
