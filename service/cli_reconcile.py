"""``topup reconcile``: daily statements for partners, and checks against suppliers'."""

from __future__ import annotations

import asyncio
import csv
import io
import sys
from datetime import date, datetime
from pathlib import Path
from typing import TextIO

import click

from core.clock import BEIJING, beijing_time
from core.config import ConfigError
from core.money import fen_to_yuan
from core.reconcile import (
    StatementRow,
    StatementUnreadable,
    SupplierCheck,
    check_statement,
    partner_statement,
    read_statement,
)
from core.suppliers import StatementLine
from service.cli_support import run_with_db
from service.settings import Settings
from service.wiring import build_registry, load_runtime

PARTNER_COLUMNS = [
    "orderNo",
    "cstmOrderNo",
    "orderId",
    "phoneNo",
    "productId",
    "faceValue",
    "price",
    "status",
    "statusDesc",
    "createTime",
    "finishTime",
]
COST_COLUMNS = ["plugin", "cost", "margin"]
# A cell starting with one of these is a formula to a spreadsheet (=HYPERLINK(...) sends
# the operator's click, and the row's data, anywhere): OWASP's CSV-injection list.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@click.group()
def reconcile() -> None:
    """Reconciliation (对账)."""


@reconcile.command("export")
@click.option(
    "--date",
    "day",
    required=True,
    type=click.DateTime(["%Y-%m-%d"]),
    help="The day (Beijing time) whose orders to list.",
)
@click.option("--app", "app_id", help="Only this partner app (default: every app).")
@click.option(
    "--with-cost",
    is_flag=True,
    help="Add each order's supplier plugin, cost and margin (for our finance team).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    help="File to write (default: stdout).",
)
def export(day, app_id: str | None, with_cost: bool, output: str | None) -> None:
    """A partner's daily statement as CSV (UTF-8 with BOM, for spreadsheets).

    Every order accepted that day, one line each, then a total line: the orders, how many
    succeeded, and their face value and price; only succeeded orders are charged.
    A text cell that a spreadsheet would run as a formula (it starts with = + - @, a
    tab or a carriage return) is written with a ' in front; the stored value, as the
    status query shows it, is unchanged.
    """
    rows = run_with_db(lambda db: partner_statement(db, day.date(), app_id))
    if output is None:
        # The BOM goes to stdout too: `topup reconcile export ... > day.csv` is the same file.
        sys.stdout.flush()
        stdout = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8-sig", newline="")
        try:
            write_statement(stdout, rows, with_cost)
            stdout.flush()
        finally:
            stdout.detach()  # leave sys.stdout open for whoever comes next
        return
    with Path(output).open("w", encoding="utf-8-sig", newline="") as target:
        write_statement(target, rows, with_cost)
    click.echo(f"{len(rows)} orders written to {output}", err=True)


def write_statement(target: TextIO, rows: list[StatementRow], with_cost: bool) -> None:
    writer = csv.writer(target)
    writer.writerow(PARTNER_COLUMNS + (COST_COLUMNS if with_cost else []))
    for row in rows:
        line = [
            row.order_no,
            inert(row.cstm_order_no),
            inert(row.order_id),
            inert(row.phone_no),
            inert(row.product_id),
            fen_to_yuan(row.face_value),
            fen_to_yuan(row.price),
            row.status,
            row.status_text,
            beijing_time(row.created_at),
            beijing_time(row.finished_at),
        ]
        if with_cost:
            line += [
                inert(row.plugin or ""),
                _yuan(row.cost if row.status == "2" else None),
                _yuan(row.margin),
            ]
        writer.writerow(line)
    succeeded = [row for row in rows if row.status == "2"]
    total = [
        "合计",
        f"{len(rows)} 笔",
        f"成功 {len(succeeded)} 笔",
        "",
        "",
        fen_to_yuan(sum(row.face_value for row in succeeded)),
        fen_to_yuan(sum(row.charged for row in rows)),
        "",
        "",
        "",
        "",
    ]
    if with_cost:
        total += [
            "",
            fen_to_yuan(sum(row.cost or 0 for row in succeeded)),
            fen_to_yuan(sum(row.margin or 0 for row in succeeded)),
        ]
    writer.writerow(total)


def inert(text: str) -> str:
    """A text cell a spreadsheet shows as text: OWASP's remedy for CSV injection, a
    single quote before a leading formula character. Amounts are ours and never passed
    here, so a negative margin stays a number."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _yuan(fen: int | None) -> str:
    return "" if fen is None else fen_to_yuan(fen)


@reconcile.command("supplier")
@click.option("--plugin", "plugin_name", required=True, help="The supplier plugin (e.g. juhe).")
@click.option(
    "--file",
    "statement",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The supplier's statement for one day.",
)
@click.option(
    "--date",
    "day",
    type=click.DateTime(["%Y-%m-%d"]),
    help="The statement's day, Beijing time (default: today).",
)
def supplier(plugin_name: str, statement: str, day) -> None:
    """Compare a supplier's daily statement with our attempts; exit 1 on any mismatch.

    \b
    MISSING_HERE         the supplier lists a transaction we never sent
    MISSING_AT_SUPPLIER  we sent it (and it was not refused), the supplier does not list it
    STATUS_MISMATCH      success on one side, failure on the other
    OPEN_HERE            the supplier settled it; ours is still open (resolve the order)
    OPEN_AT_SUPPLIER     ours is final; the supplier still shows it in progress
    AMOUNT_MISMATCH      charged differently from the cost in plugins.toml
    """
    lines = _read_statement(plugin_name, Path(statement))
    the_day = day.date() if day else datetime.now(BEIJING).date()
    check = run_with_db(lambda db: check_statement(db, plugin_name, the_day, lines))
    _print_check(plugin_name, the_day, check)
    if check.mismatches:
        raise SystemExit(1)


def _read_statement(plugin_name: str, path: Path) -> list[StatementLine]:
    """Parse with the plugin as plugins.toml configures it."""
    settings = Settings.from_env()
    try:
        runtime = load_runtime(settings, build_registry())
    except ConfigError as exc:
        raise click.ClickException(f"invalid configuration: {exc}") from exc
    try:
        plugin = runtime.suppliers.get(plugin_name)
        if plugin is None:
            raise click.ClickException(f"plugin {plugin_name!r} is not enabled in plugins.toml")
        return read_statement(plugin, path.read_bytes())
    except StatementUnreadable as exc:
        raise click.ClickException(f"cannot read {path}: {exc}") from exc
    finally:
        asyncio.run(runtime.aclose())


def _print_check(plugin_name: str, day: date, check: SupplierCheck) -> None:
    click.echo(
        f"{plugin_name} statement of {day}: {check.lines} lines, {check.our_attempts} attempts "
        f"of ours; charged {fen_to_yuan(check.their_charged)}, expected "
        f"{fen_to_yuan(check.our_expected_cost)}"
    )
    for mismatch in check.mismatches:
        click.echo(
            f"{mismatch.kind:20} {mismatch.reference}  ours: {mismatch.ours}  "
            f"theirs: {mismatch.theirs}"
        )
    click.echo(f"{len(check.mismatches)} mismatches" if check.mismatches else "no mismatches")
