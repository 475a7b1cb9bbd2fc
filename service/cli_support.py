"""What the ``topup`` commands share: the database, the configuration, amounts."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TypeVar

import click

from core.config import ConfigError
from core.db import Database
from core.migrate import SchemaOutOfDate, ensure_schema
from core.money import yuan_to_fen
from core.sealing import SealingError
from service.settings import Settings

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
    except (SchemaOutOfDate, SealingError) as exc:
        raise click.ClickException(str(exc)) from exc


def check_config(settings: Settings) -> None:
    """Refuse an unusable plugins.toml with its reason, before anything starts."""
    from service.wiring import build_registry, load_runtime

    try:
        load_runtime(settings, build_registry())
    except ConfigError as exc:
        raise click.ClickException(f"invalid configuration: {exc}") from exc


def fen(text: str, what: str = "amount") -> int:
    """Yuan typed on the command line, as fen."""
    try:
        return yuan_to_fen(Decimal(text))
    except (ValueError, ArithmeticError) as exc:
        raise click.BadParameter(f"{what} {text!r}: {exc}") from exc


def operator_option():
    return click.option(
        "--operator",
        default=lambda: os.environ.get("USER", "operator"),
        show_default="$USER",
        help="Who acts; recorded with the change.",
    )
