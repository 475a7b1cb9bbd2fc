"""Schema migrations (Alembic), applied to either dialect through the same scripts.

Alembic is imported only when a migration has to run: every ``topup`` command checks
the schema first, and the check is one SELECT against the revision this release needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from core.db import Database

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest revision in migrations/versions; tests/test_migrations.py keeps it honest.
HEAD_REVISION = "0010"


def _alembic_config(connection: Connection | None = None) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


async def upgrade(db: Database, revision: str = "head") -> None:
    from alembic import command

    def migrate(conn: Connection) -> None:
        if db.is_postgres:
            # Instances starting together must not race each other through the DDL.
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7317001)")
        command.upgrade(_alembic_config(conn), revision)

    await db.exclusive(migrate)


async def current_revision(db: Database) -> str | None:
    try:
        return await db.read(
            lambda conn: conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        )
    except DBAPIError:
        return None  # no alembic_version table: an empty database


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


class SchemaOutOfDate(Exception):
    pass


async def ensure_schema(db: Database) -> None:
    """Bring SQLite up to date by itself; on PostgreSQL, insist on `topup db upgrade`.

    A shared PostgreSQL is migrated once, deliberately, by an operator; an embedded
    SQLite file belongs to this one service, so ``make run`` stays one command.
    """
    current = await current_revision(db)
    if current == HEAD_REVISION:
        return
    if db.is_sqlite:
        await upgrade(db)
        return
    raise SchemaOutOfDate(
        f"the database schema is at revision {current or 'none'}, this release needs "
        f"{HEAD_REVISION}: run `topup db upgrade`"
    )
