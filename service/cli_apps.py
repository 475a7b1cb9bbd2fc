"""``topup app``: partner apps, their accounts and notify URLs."""

from __future__ import annotations

from typing import Any

import click

from core.addresses import Network, parse_networks
from core.apps import AppExistsError, AppStore, CarrierMismatch
from core.clock import beijing_time, now_ms
from core.db import Database
from core.ledger import Account, Ledger
from core.money import fen_to_yuan
from core.signing import SignType
from service.cli_support import fen, operator_option, run_with_db
from service.notify_targets import TargetRefused, check_notify_url


@click.group()
def app() -> None:
    """Partner apps: who may call the API."""


@app.command("add")
@click.argument("app_id")
@click.option("--company", required=True, help="The partner's company, as it sends `company`.")
@click.option(
    "--secret", help="The signing secret (16 characters or more); 32 random bytes when omitted."
)
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
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--secret") from exc
    click.echo(f"appID:     {created.app_id}", err=True)
    click.echo(f"company:   {created.company}", err=True)
    click.echo(f"sign type: {created.sign_type}", err=True)
    click.echo("secret:", err=True)
    click.echo(created.secret)


@app.command("rotate-secret")
@click.argument("app_id")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=86400,
    show_default=True,
    help="Seconds the old secret keeps signing, so the partner can switch without downtime.",
)
@click.option("--secret", help="The new secret (16 characters or more); generated when omitted.")
@click.option("--reason", default="", help="Why; kept in the audit log.")
@operator_option()
def app_rotate_secret(
    app_id: str, grace: float, secret: str | None, reason: str, operator: str
) -> None:
    """Give APP_ID a new secret and print it (shown once).

    Until the grace period ends, requests signed with either secret are accepted; then
    the old secret, and every token issued for it, stops working.
    """
    try:
        new_secret = run_with_db(
            lambda db: AppStore(db).rotate_secret(
                app_id, grace, secret, actor=operator, reason=reason
            )
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--secret") from exc
    if new_secret is None:
        raise click.ClickException(f"no app {app_id!r}")
    click.echo(f"appID: {app_id}; the old secret signs for {grace:g} more seconds", err=True)
    click.echo("new secret:", err=True)
    click.echo(new_secret)


@app.command("list")
def app_list() -> None:
    """List partner apps (without their secrets)."""
    for item in run_with_db(lambda db: AppStore(db).all()):
        click.echo(
            f"{item.app_id}\t{item.company}\t{item.sign_type}\tcarrier-mismatch "
            f"{item.carrier_mismatch}"
        )


@app.command("credit")
@click.argument("app_id")
@click.argument("amount")
@click.option("--reason", required=True, help="Why, e.g. the bank transfer's reference.")
@operator_option()
def app_credit(app_id: str, amount: str, reason: str, operator: str) -> None:
    """Add AMOUNT yuan to the app's prepaid balance (an entry on its ledger)."""
    credit = fen(amount)
    if credit <= 0:
        raise click.BadParameter("the amount must be positive", param_hint="AMOUNT")

    async def book(db: Database) -> Account:
        return await Ledger(db).credit(app_id, credit, reason, operator)

    try:
        account = run_with_db(book)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{app_id}: +{fen_to_yuan(credit)}, balance {fen_to_yuan(account.balance)}")


@app.command("set")
@click.argument("app_id")
@click.option("--notify-url", help="Where final order states are POSTed ('' to stop).")
@click.option(
    "--allow-private",
    is_flag=True,
    help="With --notify-url: allow a loopback, private or link-local address "
    "(a partner inside our network). Without it such URLs are refused.",
)
@click.option("--credit-limit", help="How far below zero the balance may go, in yuan.")
@click.option(
    "--allow-ip",
    metavar="CIDR[,CIDR]",
    help="Accept the app's calls only from these addresses or blocks ('' to accept any).",
)
@click.option(
    "--carrier-mismatch",
    type=click.Choice([policy.value for policy in CarrierMismatch]),
    help="An order whose Supplier is not the carrier of its phone number's segment: accept "
    "it and record the segment's carrier on the order (the default: the number may have "
    "been ported), or refuse it with CARRIER_MISMATCH.",
)
@click.option("--reason", default="", help="Why; kept in the audit log.")
@operator_option()
def app_set(
    app_id: str,
    notify_url: str | None,
    allow_private: bool,
    credit_limit: str | None,
    allow_ip: str | None,
    carrier_mismatch: str | None,
    reason: str,
    operator: str,
) -> None:
    """Change an app's notify URL, credit limit, IP allowlist or carrier check.

    A notify URL must be http(s), without credentials, and its host must be (or resolve
    to) public addresses only, unless --allow-private; the notifier checks again at
    every send and never follows redirects. Running services see a change within a few
    seconds (apps are cached that long).
    """
    if notify_url is None and credit_limit is None and allow_ip is None and not carrier_mismatch:
        raise click.UsageError(
            "give --notify-url, --credit-limit, --allow-ip and/or --carrier-mismatch"
        )
    if allow_private and notify_url is None:
        raise click.UsageError("--allow-private goes with --notify-url")
    if notify_url:
        try:
            check_notify_url(notify_url, allow_private)
        except TargetRefused as exc:
            raise click.BadParameter(str(exc), param_hint="--notify-url") from exc
    limit = None if credit_limit is None else fen(credit_limit, "credit limit")
    allowed = None if allow_ip is None else _allowlist(allow_ip)

    async def change(db: Database) -> bool:
        if await AppStore(db).get(app_id) is None:
            return False
        if notify_url is not None:
            await AppStore(db).set_notify_url(
                app_id,
                notify_url,
                allow_private=allow_private and bool(notify_url),
                actor=operator,
                reason=reason,
            )
        if allowed is not None:
            await AppStore(db).set_allow_ips(app_id, allowed, actor=operator, reason=reason)
        if limit is not None:
            await Ledger(db).set_credit_limit(app_id, limit, actor=operator, reason=reason)
        if carrier_mismatch:
            await AppStore(db).set_carrier_mismatch(
                app_id, CarrierMismatch(carrier_mismatch), actor=operator, reason=reason
            )
        return True

    try:
        found = run_with_db(change)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if not found:
        raise click.ClickException(f"no app {app_id!r}")
    click.echo(f"{app_id} updated")


_MISMATCH = {
    CarrierMismatch.ACCEPT: "(a Supplier that contradicts the number's segment is accepted "
    "and recorded on the order)",
    CarrierMismatch.REFUSE: "(a Supplier that contradicts the number's segment is refused: "
    "CARRIER_MISMATCH)",
}


def _allowlist(text: str) -> tuple[Network, ...]:
    try:
        return parse_networks(text)
    except ValueError as exc:
        raise click.BadParameter(
            f"{exc}; give addresses or CIDR blocks separated by commas, e.g. "
            "203.0.113.0/24,198.51.100.7",
            param_hint="--allow-ip",
        ) from exc


@app.command("show")
@click.argument("app_id")
@click.option("--entries", default=10, show_default=True, help="Latest ledger entries to list.")
def app_show(app_id: str, entries: int) -> None:
    """An app's settings, account, and latest ledger entries; checks the ledger adds up."""

    async def gather(db: Database) -> Any:
        ledger = Ledger(db)
        return (
            await AppStore(db).get(app_id),
            await ledger.account(app_id),
            await ledger.verify(app_id),
            await ledger.entries(app_id, entries),
        )

    found, account, consistent, latest = run_with_db(gather)
    if found is None or account is None:
        raise click.ClickException(f"no app {app_id!r}")
    click.echo(f"appID:        {found.app_id}")
    click.echo(f"company:      {found.company}")
    click.echo(f"sign type:    {found.sign_type}")
    private = " (private addresses allowed)" if found.notify_allow_private else ""
    click.echo(f"notify URL:   {found.notify_url or '-'}{private}")
    if found.previous_secret_until and found.previous_secret_until > now_ms():
        until = beijing_time(found.previous_secret_until)
        click.echo(f"old secret:   still signs until {until} (rotation grace)")
    click.echo(f"allowed IPs:  {', '.join(map(str, found.allow_ips)) or 'any'}")
    click.echo(f"carrier mismatch: {found.carrier_mismatch} {_MISMATCH[found.carrier_mismatch]}")
    click.echo(f"credited:     {fen_to_yuan(account.credited)}")
    click.echo(f"captured:     {fen_to_yuan(account.captured)}")
    click.echo(f"held:         {fen_to_yuan(account.held)}")
    click.echo(f"balance:      {fen_to_yuan(account.balance)}")
    click.echo(f"credit limit: {fen_to_yuan(account.credit_limit)}")
    click.echo(f"available:    {fen_to_yuan(account.available)}")
    click.echo(f"ledger:       {'consistent' if consistent else 'DOES NOT MATCH THE ACCOUNT'}")
    for entry in latest:
        click.echo(
            f"  #{entry.id} {beijing_time(entry.created_at)} {entry.kind:8} "
            f"{fen_to_yuan(entry.amount):>10} {entry.order_no or ''} {entry.reason} "
            f"({entry.actor})"
        )
    if not consistent:
        raise SystemExit(1)
