"""The ``topup`` command line: serve, register partners, sign, inspect."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlencode

import click

from core.apps import AppExistsError, AppStore
from core.clock import beijing_time
from core.config import ConfigError
from core.control import CONFIG_GENERATION, bump_counter
from core.db import Database
from core.migrate import SchemaOutOfDate, current_revision, ensure_schema, head_revision, upgrade
from core.orders import OrderStore
from core.signing import SignType, compute_sign, string_to_sign
from service.settings import Settings
from service.simulator.cli import simulate
from service.wiring import build_registry, load_runtime

T = TypeVar("T")


def run_with_db(work: Callable[[Database], Awaitable[T]], *, migrate: bool = True) -> T:
    """Open the configured database (bringing SQLite's schema up to date) and run ``work``."""

    async def main() -> T:
        db = Database(Settings.from_env().database_url)
        try:
            if migrate:
                await ensure_schema(db)
            return await work(db)
        finally:
            await db.dispose()

    try:
        return asyncio.run(main())
    except SchemaOutOfDate as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
def main() -> None:
    """topup: phone-credit top-up service.

    Settings come from the environment: TOPUP_DATABASE_URL, TOPUP_CONFIG,
    TOPUP_HOST, TOPUP_PORT.
    """


@main.command()
@click.option("--host", help="Address to listen on [TOPUP_HOST, default 127.0.0.1].")
@click.option("--port", type=int, help="Port [TOPUP_PORT, default 8000].")
@click.option("--workers", type=int, default=1, show_default=True, help="Server processes.")
def serve(host: str | None, port: int | None, workers: int) -> None:
    """Run the service (HTTP API, callbacks and background dispatch)."""
    from granian import Granian
    from granian.constants import Interfaces, Loops

    settings = Settings.from_env()
    _check_config(settings)
    run_with_db(lambda db: asyncio.sleep(0))  # apply SQLite migrations once, before workers fork
    host = host or settings.host
    port = port or settings.port
    # Workers read their settings from the environment, so pass the CLI overrides on.
    os.environ["TOPUP_HOST"], os.environ["TOPUP_PORT"] = host, str(port)
    click.echo(f"topup serving on http://{host}:{port} (config {settings.config_path})", err=True)
    Granian(
        "service.app:create_app",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        loop=Loops.uvloop if sys.platform != "win32" else Loops.auto,
        websockets=False,
        log_access=False,
    ).serve()


def _check_config(settings: Settings) -> None:
    try:
        load_runtime(settings, build_registry())
    except ConfigError as exc:
        raise click.ClickException(f"invalid configuration: {exc}") from exc


@main.command()
def plugins() -> None:
    """List discovered plugins, their suppliers, and the Supplier routes."""
    settings = Settings.from_env()
    registry = build_registry()
    for info in registry.plugins():
        version = f" {info.version}" if info.version else ""
        suppliers = ", ".join(info.suppliers) or "-"
        click.echo(f"{info.name}{version}  [{info.source}]  suppliers: {suppliers}")
    try:
        runtime = load_runtime(settings, registry)
    except ConfigError as exc:
        raise click.ClickException(f"invalid configuration: {exc}") from exc
    click.echo(f"\nenabled ({settings.config_path}): {', '.join(runtime.suppliers) or 'none'}")
    click.echo("routes:")
    for supplier in runtime.catalog.suppliers:
        route = " -> ".join(runtime.router.route(supplier))
        count = len(runtime.catalog.products(supplier))
        click.echo(f"  {supplier}: {route}  ({count} products)")


@main.group()
def app() -> None:
    """Partner apps: who may call the API."""


@app.command("add")
@click.argument("app_id")
@click.option("--company", required=True, help="The partner's company, as it sends `company`.")
@click.option("--secret", help="The signing secret; generated when omitted.")
@click.option(
    "--sign-type",
    type=click.Choice([t.value for t in SignType]),
    default=SignType.HMAC_SHA256.value,
    show_default=True,
)
def app_add(app_id: str, company: str, secret: str | None, sign_type: str) -> None:
    """Register a partner app and print its secret (shown once; keep it safe)."""

    async def add(db: Database) -> Any:
        return await AppStore(db).add(app_id, company, secret, SignType(sign_type))

    try:
        created = run_with_db(add)
    except AppExistsError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"appID:     {created.app_id}", err=True)
    click.echo(f"company:   {created.company}", err=True)
    click.echo(f"sign type: {created.sign_type}", err=True)
    click.echo("secret:", err=True)
    click.echo(created.secret)


@app.command("list")
def app_list() -> None:
    """List partner apps (without their secrets)."""
    for item in run_with_db(lambda db: AppStore(db).all()):
        click.echo(f"{item.app_id}\t{item.company}\t{item.sign_type}")


@main.command()
@click.argument("params", nargs=-1, metavar="NAME=VALUE...")
@click.option("--secret", envvar="TOPUP_SIGN_SECRET", help="The app's secret [TOPUP_SIGN_SECRET].")
@click.option("--app", "app_id", help="Read the secret and sign type of this registered app.")
@click.option(
    "--sign-type",
    type=click.Choice([t.value for t in SignType]),
    help="Default: the app's, or hmac-sha256.",
)
@click.option("--verbose", "-v", is_flag=True, help="Also print the string that is signed.")
@click.option(
    "--urlencoded",
    is_flag=True,
    help="Print all parameters with sign added, URL-encoded: a body for curl -d or a query.",
)
def sign(
    params: tuple[str, ...],
    secret: str | None,
    app_id: str | None,
    sign_type: str | None,
    verbose: bool,
    urlencoded: bool,
) -> None:
    """Compute the `sign` of a request from its parameters.

    \b
    Examples:
      topup sign --secret S appID=demo ts=$(date +%s)
      curl -d "$(topup sign --urlencoded --secret S appID=demo ts=$(date +%s))" URL
    """
    values = _parse_pairs(params)
    kind = SignType(sign_type) if sign_type else None
    if app_id:
        found = run_with_db(lambda db: AppStore(db).get(app_id))
        if found is None:
            raise click.ClickException(f"no app {app_id!r}")
        secret, kind = found.secret, kind or found.sign_type
    if not secret:
        raise click.UsageError("give --secret (or TOPUP_SIGN_SECRET) or --app")
    if verbose:
        click.echo(f"string to sign: {string_to_sign(values)}", err=True)
    signature = compute_sign(values, secret, kind or SignType.HMAC_SHA256)
    if urlencoded:
        click.echo(urlencode({**values, "sign": signature}))
    else:
        click.echo(signature)


def _parse_pairs(params: tuple[str, ...]) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in params:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.UsageError(f"expected NAME=VALUE, got {pair!r}")
        values[name] = value
    return values


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations (needed before serving on PostgreSQL)."""
    run_with_db(upgrade, migrate=False)
    click.echo(f"database at revision {head_revision()}")


@db.command("current")
def db_current() -> None:
    """Show the database's schema revision and this release's."""
    current = run_with_db(current_revision, migrate=False)
    click.echo(f"database: {current or 'empty'}; this release: {head_revision()}")


@main.command()
def reload() -> None:
    """Check plugins.toml, then have every running instance reload it (within a second).

    An invalid file is refused here and changes nothing; an instance that still finds
    it invalid keeps its running routes and logs why.
    """
    settings = Settings.from_env()
    _check_config(settings)
    generation = run_with_db(lambda db: bump_counter(db, CONFIG_GENERATION))
    click.echo(f"{settings.config_path} is valid; reload requested (generation {generation})")


@main.group()
def orders() -> None:
    """Inspect orders, and settle the ones in manual review."""


@orders.command("show")
@click.argument("order_no")
def orders_show(order_no: str) -> None:
    """Show an order and every upstream attempt made for it."""

    async def show(database: Database) -> Any:
        store = OrderStore(database)
        return (
            await store.get(order_no),
            await store.attempts_of(order_no),
            await store.events_of(order_no),
        )

    order, attempts, events = run_with_db(show)
    if order is None:
        raise click.ClickException(f"no order {order_no}")
    click.echo(
        f"{order.order_no}  {order.state}  app {order.app_id}  cstmOrderNo {order.cstm_order_no}"
        f"  {order.supplier} {order.product_id} -> {order.phone_no}"
    )
    for attempt in attempts:
        click.echo(
            f"  attempt {attempt.seq} via {attempt.plugin}: {attempt.state}"
            f"  ref {attempt.reference}"
            f"  queries {attempt.queries}  code {attempt.code or '-'} {attempt.message or ''}"
        )
    for event in events:
        click.echo(f"  {beijing_time(event.at)} {event.kind} by {event.actor}: {event.detail}")


@orders.command("review")
@click.argument("order_no", required=False)
@click.option(
    "--resolve",
    type=click.Choice(["succeeded", "failed"]),
    help="Settle the order: what the supplier's records say happened.",
)
@click.option("--requery", is_flag=True, help="Send it back to automatic status queries.")
@click.option("--reason", help="Why; recorded with the decision (required to act).")
@click.option(
    "--operator", default=lambda: os.environ.get("USER", "operator"), show_default="$USER"
)
def orders_review(
    order_no: str | None, resolve: str | None, requery: bool, reason: str | None, operator: str
) -> None:
    """List orders in manual review, or settle one.

    \b
    topup orders review
    topup orders review ORDER_NO --resolve succeeded --reason "供应商对账确认已到账"
    topup orders review ORDER_NO --requery --reason "supplier status API is back"
    """
    if order_no is None:
        for order in run_with_db(lambda db: OrderStore(db).in_review()):
            click.echo(
                f"{order.order_no}  since {beijing_time(order.updated_at)}  app {order.app_id}"
                f"  {order.supplier} {order.product_id} -> {order.phone_no}"
            )
        return
    if bool(resolve) == requery:
        raise click.UsageError("give exactly one of --resolve or --requery")
    if not reason:
        raise click.UsageError("--reason is required: it is recorded with the decision")
    if requery:
        done = run_with_db(lambda db: OrderStore(db).requery(order_no, operator, reason))
        if not done:
            raise click.ClickException(f"order {order_no} is not in review")
        click.echo(f"{order_no} is queried again")
        return

    async def settle(db: Database) -> Any:
        return await OrderStore(db).resolve(order_no, resolve == "succeeded", reason, operator)

    try:
        applied = run_with_db(settle)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from exc
    if not applied.changed:
        raise click.ClickException(f"order {order_no} was already {applied.state}")
    click.echo(f"{order_no} -> {applied.state} ({reason}, by {operator})")


main.add_command(simulate)
