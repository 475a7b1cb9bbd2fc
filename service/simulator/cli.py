"""``topup simulate``: run the supplier simulator on loopback."""

from __future__ import annotations

import os
import shlex
import sys

import click

from service.simulator.faults import UnknownFault, parse_cli_fault
from service.simulator.options import OPTIONS_ENV, SimulatorOptions, fill_missing_credentials


def _check_faults(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple:
    for text in value:
        try:
            parse_cli_fault(text)
        except UnknownFault as exc:
            raise click.BadParameter(str(exc), ctx, param) from exc
    return value


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=9000, show_default=True, help="Port.")
@click.option(
    "--settle",
    type=float,
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="How long an accepted top-up takes to settle.",
)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    metavar="NAME[:SECONDS]",
    callback=_check_faults,
    help="A fault for every number, as POST /_sim/faults with phone_no '*'. Repeatable.",
)
@click.option("--juhe-callback", metavar="URL", help="Where juhe callbacks go.")
@click.option("--reloadly-webhook", metavar="URL", help="Where reloadly webhooks go.")
@click.option(
    "--token-ttl",
    type=float,
    default=3600.0,
    show_default=True,
    metavar="SECONDS",
    help="Lifetime of a reloadly access token.",
)
@click.option(
    "--callback-retries",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    metavar="N",
    help="Tries per callback before giving up.",
)
@click.option(
    "--callback-interval",
    type=float,
    default=3.0,
    show_default=True,
    metavar="SECONDS",
    help="Pause between tries of a callback.",
)
def simulate(
    host: str,
    port: int,
    settle: float,
    faults: tuple[str, ...],
    juhe_callback: str | None,
    reloadly_webhook: str | None,
    token_ttl: float,
    callback_retries: int,
    callback_interval: float,
) -> None:
    """Run a simulator of the juhe, reloadly and acme suppliers (docs/supplier-protocols.md).

    The outcome of a top-up follows the phone number's last digit: 4 fails, 5 is refused,
    6 never settles, any other succeeds. Credentials come from the TOPUP_JUHE_*,
    TOPUP_RELOADLY_* and TOPUP_ACME_API_KEY variables; missing ones are generated and
    printed as export lines on stderr.
    """
    import uvicorn

    options = SimulatorOptions(
        host=host,
        port=port,
        settle=settle,
        faults=faults,
        juhe_callback=juhe_callback,
        reloadly_webhook=reloadly_webhook,
        token_ttl=token_ttl,
        callback_retries=callback_retries,
        callback_interval=callback_interval,
    )
    # The app factory reads its options from the environment.
    for name, value in fill_missing_credentials(os.environ).items():
        click.echo(f"export {name}={shlex.quote(value)}", err=True)
    os.environ[OPTIONS_ENV] = options.to_env()
    click.echo(f"supplier simulator on http://{host}:{port}", err=True)
    uvicorn.run(
        "service.simulator.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        loop="uvloop" if sys.platform != "win32" else "auto",
        http="httptools",
        access_log=False,
        log_level="warning",
        # A held `timeout` answer must not keep a stopping simulator alive for an hour.
        timeout_graceful_shutdown=2,
    )


if __name__ == "__main__":
    simulate()
