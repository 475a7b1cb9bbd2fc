"""Schema migrations (Alembic), applied to either dialect through the same scripts."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from core.db import Database

MIGRATIONS = Path(__file__).parent / "migrations"


def _alembic_config(connection: Connection | None = None) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


async def upgrade(db: Database, revision: str = "head") -> None:
    async with db.write() as conn:
        if db.is_postgres:
            # Instances starting together must not race each other through the DDL.
            await conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7317001)")
        await conn.run_sync(lambda sync: command.upgrade(_alembic_config(sync), revision))


async def current_revision(db: Database) -> str | None:
    async with db.read() as conn:
        return await conn.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


class SchemaOutOfDate(Exception):
    pass


async def ensure_schema(db: Database) -> None:
    """Bring SQLite up to date by itself; on PostgreSQL, insist on `topup db upgrade`.

    A shared PostgreSQL is migrated once, deliberately, by an operator; an embedded
    SQLite file belongs to this one service, so ``make run`` stays one command.
    """
    current, head = await current_revision(db), head_revision()
    if current == head:
        return
    if db.is_sqlite:
        await upgrade(db)
        return
    if current != head:
        raise SchemaOutOfDate(
            f"the database schema is at revision {current or 'none'}, this release needs "
            f"{head}: run `topup db upgrade`"
        )
