"""The ``topup`` command line: serve, register partners, sign, inspect."""

from __future__ import annotations

import os
import shutil
import sys
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import click

from core.signing import SignType, compute_sign, string_to_sign
from service.cli_lazy import LazyGroup
from service.settings import DEFAULT_REQUEST_TIMEOUT, REQUEST_TIMEOUT_ENV, Settings

if TYPE_CHECKING:
    from core.db import Database
    from core.route_overrides import SkippedOverride

# Imported when run: `topup sign` in a shell loop should not load the whole service.
SUBCOMMANDS = {
    "app": "service.cli_apps:app",
    "keys": "service.cli_keys:keys",
    "operator": "service.cli_operators:operator",
    "orders": "service.cli_orders:orders",
    "plugin": "service.cli_plugins:plugin",
    "plugins": "service.cli_plugins:plugins",
    "reconcile": "service.cli_reconcile:reconcile",
    "routes": "service.cli_routes:routes",
    "simulate": "service.simulator.cli:simulate",
}


@click.group(cls=LazyGroup, lazy=SUBCOMMANDS)
def main() -> None:
    """topup: phone-credit top-up service.

    Settings come from the environment: TOPUP_DATABASE_URL, TOPUP_CONFIG,
    TOPUP_HOST, TOPUP_PORT, TOPUP_REQUEST_TIMEOUT; secrets at rest are sealed with
    TOPUP_MASTER_KEY (or the key file TOPUP_MASTER_KEY_FILE, default var/master.key).
    """
    # A malformed variable is the operator's to fix: say which, without a traceback.
    try:
        Settings.from_env()
    except ValueError as exc:
        raise click.ClickException(f"invalid environment: {exc}") from exc


@main.command()
@click.option("--host", help="Address to listen on [TOPUP_HOST, default 127.0.0.1].")
@click.option("--port", type=int, help="Port [TOPUP_PORT, default 8000].")
@click.option("--workers", type=int, default=1, show_default=True, help="HTTP processes.")
@click.option(
    "--background/--no-background",
    default=True,
    show_default=True,
    help="Also run the dispatcher and notifier.",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Close a connection whose request (headers and body) has not fully arrived "
    f"within SECONDS [{REQUEST_TIMEOUT_ENV}, default {DEFAULT_REQUEST_TIMEOUT:g}].",
)
def serve(
    host: str | None,
    port: int | None,
    workers: int,
    background: bool,
    request_timeout: float | None,
) -> None:
    """Run the service: the HTTP API and callbacks, and the background worker.

    On SQLite the background worker runs inside the HTTP process: SQLite has one
    writer, and two processes taking turns at it cost more than they gain. On
    PostgreSQL it runs as a process of its own, on another core.
    """
    import multiprocessing

    import uvicorn
    from sqlalchemy.engine import make_url

    from core import metrics
    from service.background import run_background
    from service.cli_support import check_config, run_with_db
    from service.wiring import BACKGROUND_ENV

    try:
        settings = Settings.from_env()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    inline = background and make_url(settings.database_url).get_backend_name() == "sqlite"
    # Before anything records a metric in this process (see core/metrics.py).
    metrics_dir = _metrics_dir(processes=workers + (1 if background and not inline else 0))
    check_config(settings)
    # Apply SQLite migrations once, up front, and check the master key opens the secrets.
    operators = run_with_db(_check_start)
    host = host or settings.host
    port = port or settings.port
    request_timeout = request_timeout or settings.request_timeout
    # Workers read their settings from the environment, so pass the CLI overrides on.
    os.environ["TOPUP_HOST"], os.environ["TOPUP_PORT"] = host, str(port)
    os.environ[REQUEST_TIMEOUT_ENV] = str(request_timeout)
    os.environ[BACKGROUND_ENV] = "1" if inline else "0"
    worker = None
    if background and not inline:
        worker = multiprocessing.get_context("spawn").Process(
            target=run_background, kwargs={"watch_parent": True}, name="topup-background"
        )
        worker.start()
    click.echo(f"topup serving on http://{host}:{port} (config {settings.config_path})", err=True)
    _announce_console(f"http://{host}:{port}/console", operators)
    try:
        uvicorn.run(
            "service.app:served_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            loop="uvloop" if sys.platform != "win32" else "auto",
            # httptools, plus a deadline for each request to arrive (service/http_protocol.py).
            http="service.http_protocol:RequestDeadlineProtocol",
            ws="none",  # no WebSocket routes: an Upgrade header is an ordinary request
            # X-Forwarded-For is believed only from [limits] trusted_proxies, by the
            # partner API itself (core/ratelimit.py); uvicorn's own reading would trust
            # any local caller.
            proxy_headers=False,
            access_log=False,
            log_level="info",
        )
    finally:
        if worker is not None:
            worker.terminate()
            worker.join(10)
        if metrics_dir is not None:
            metrics.remove_multiprocess_dir(metrics_dir)


def _metrics_dir(processes: int) -> str | None:
    """Where the processes of this ``topup serve`` share their metrics, when there are
    several: PROMETHEUS_MULTIPROC_DIR if the operator set it (a ``topup worker`` on this
    host may write there too; files of dead processes are removed), else a new directory
    of ours, returned so that it is removed when we stop."""
    from core import metrics

    given = metrics.multiprocess_dir()
    if not metrics.enabled():
        return None
    if given:
        os.makedirs(given, exist_ok=True)
        metrics.remove_dead_files(given)
        return None
    if processes < 2:
        return None  # one process: its metrics stay in memory
    path = metrics.new_multiprocess_dir()
    os.environ[metrics.MULTIPROC_ENV] = path
    return path


async def _check_start(db: Database) -> int:
    """Check the master key opens the stored secrets; the number of console operators."""
    from core.apps import check_master_key
    from core.operators import OperatorStore

    await check_master_key(db)
    return len(await OperatorStore(db).all())


def _announce_console(url: str, operators: int) -> None:
    click.echo(f"operations console (运营后台): {url}", err=True)
    if operators == 0:
        topup = shutil.which("topup") or sys.argv[0]
        click.echo(
            "  no operator yet: create the first admin with\n"
            f"    {os.path.relpath(topup) if os.path.isabs(topup) else topup}"
            " operator add admin --role admin",
            err=True,
        )


@main.command()
def worker() -> None:
    """Run only the background worker (dispatcher and notifier), e.g. on another host."""
    from core import metrics
    from core.apps import check_master_key
    from service.background import run_background
    from service.cli_support import check_config, run_with_db

    check_config(Settings.from_env())
    if metrics.multiprocess_dir():  # shared with a `topup serve` on this host
        os.makedirs(metrics.multiprocess_dir(), exist_ok=True)
    run_with_db(check_master_key)
    run_background()


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
        from core.apps import AppStore
        from service.cli_support import run_with_db

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
    from core.migrate import head_revision, upgrade
    from service.cli_support import run_with_db

    run_with_db(upgrade, migrate=False)
    click.echo(f"database at revision {head_revision()}")


@db.command("current")
def db_current() -> None:
    """Show the database's schema revision and this release's."""
    from core.migrate import current_revision, head_revision
    from service.cli_support import run_with_db

    current = run_with_db(current_revision, migrate=False)
    click.echo(f"database: {current or 'empty'}; this release: {head_revision()}")


@main.command()
def reload() -> None:
    """Check plugins.toml, then have every running instance reload it (within a second).

    An invalid file is refused here and changes nothing; an instance that still finds
    it invalid keeps its running routes and logs why. A route override (`topup routes`)
    that no longer fits the new file is named here, and skipped by the instances (each
    logs an ERROR) until it is reset or the file fits it again.
    """
    from core.config import load_config
    from core.control import CONFIG_GENERATION, bump_counter
    from core.route_overrides import apply_overrides, load_overrides
    from service.cli_support import check_config, run_with_db

    settings = Settings.from_env()
    check_config(settings)
    file_config = load_config(settings.config_path)

    async def request(db: Database) -> tuple[list[SkippedOverride], int]:
        _, skipped = apply_overrides(file_config, await load_overrides(db))
        return skipped, await bump_counter(db, CONFIG_GENERATION)

    skipped, generation = run_with_db(request)
    for override in skipped:
        click.echo(f"warning: {override.log_line()}", err=True)
    click.echo(f"{settings.config_path} is valid; reload requested (generation {generation})")
