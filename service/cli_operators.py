"""``topup operator``: the accounts that sign in to the operations console."""

from __future__ import annotations

import os
import sys

import click

from core.operators import MIN_PASSWORD_LENGTH, OperatorError, OperatorStore, Role
from service.cli_support import run_with_db

ROLES = click.Choice([role.label for role in Role])


def _actor() -> str:
    # The same name the other commands record (their --operator default).
    return os.environ.get("USER", "operator")


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt(
        f"Password (at least {MIN_PASSWORD_LENGTH} characters)",
        hide_input=True,
        confirmation_prompt=True,
    )


def _run(work) -> object:
    try:
        return run_with_db(work)
    except OperatorError as exc:
        raise click.ClickException(str(exc)) from exc


password_stdin = click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of standard input instead of a prompt.",
)


@click.group()
def operator() -> None:
    """Console accounts: viewers read; operators act on orders; admins manage partners,
    routes and operators."""


@operator.command("add")
@click.argument("name")
@click.option("--role", type=ROLES, default="viewer", show_default=True)
@password_stdin
def operator_add(name: str, role: str, password_stdin: bool) -> None:
    """Create an account; the password is asked for at a prompt, never on the command line.

    \b
    topup operator add alice --role admin
    """
    password = _password(password_stdin)
    created = _run(lambda db: OperatorStore(db).add(name, password, Role.named(role), _actor()))
    click.echo(f"operator {created.name} ({created.role.label}) added; sign in at /console")


@operator.command("list")
def operator_list() -> None:
    """Every account, its role, and whether it is disabled."""
    for account in _run(lambda db: OperatorStore(db).all()):
        state = "  disabled" if account.disabled else ""
        click.echo(f"{account.name}  {account.role.label}{state}")


def _change(name: str, reason: str, **change) -> None:
    changed = _run(lambda db: OperatorStore(db).change(name, _actor(), reason, **change))
    state = "disabled" if changed.disabled else "enabled"
    click.echo(f"operator {changed.name}: {changed.role.label}, {state}; its sessions ended")


reason_option = click.option("--reason", required=True, help="Why; kept in the audit log.")


@operator.command("set")
@click.argument("name")
@click.option("--role", type=ROLES, help="A new role.")
@click.option("--disable/--enable", default=None, help="Lock the account out, or let it back.")
@reason_option
def operator_set(name: str, role: str | None, disable: bool | None, reason: str) -> None:
    """Change an account's role, or disable it (its sessions end at once)."""
    if role is None and disable is None:
        raise click.UsageError("give --role, --disable or --enable")
    _change(name, reason, role=Role.named(role) if role else None, disabled=disable)


@operator.command("passwd")
@click.argument("name")
@password_stdin
@reason_option
def operator_passwd(name: str, password_stdin: bool, reason: str) -> None:
    """Set a new password (at a prompt); the account's sessions end."""
    _change(name, reason, password=_password(password_stdin))
