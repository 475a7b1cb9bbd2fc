"""``topup orders``: inspect orders, and settle the ones in manual review."""

from __future__ import annotations

from typing import Any

import click

from core.clock import beijing_time
from core.db import Database
from core.lifecycle import Lifecycle
from core.order_store import OrderStore
from service.cli_support import operator_option, run_with_db


@click.group()
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
        f"  {order.carrier} {order.product_id} -> {order.phone_no}"
    )
    if order.segment_carrier:
        click.echo(
            f"  carrier mismatch: the number's segment is {order.segment_carrier}'s; "
            f"accepted as {order.carrier} (ported, or the partner's mistake)"
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
@operator_option()
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
                f"  {order.carrier} {order.product_id} -> {order.phone_no}"
            )
        return
    if bool(resolve) == requery:
        raise click.UsageError("give exactly one of --resolve or --requery")
    if not reason:
        raise click.UsageError("--reason is required: it is recorded with the decision")
    if requery:
        done = run_with_db(lambda db: Lifecycle(db).requery(order_no, operator, reason))
        if not done:
            raise click.ClickException(f"order {order_no} is not in review")
        click.echo(f"{order_no} is queried again")
        return

    async def settle(db: Database) -> Any:
        return await Lifecycle(db).resolve(order_no, resolve == "succeeded", reason, operator)

    try:
        applied = run_with_db(settle)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from exc
    if not applied.changed:
        raise click.ClickException(f"order {order_no} was already {applied.state}")
    click.echo(f"{order_no} -> {applied.state} ({reason}, by {operator})")
