"""The Alembic migrations build exactly the schema the code declares."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from core.db import Database, metadata
from core.migrate import HEAD_REVISION, current_revision, head_revision, upgrade


async def test_migrations_match_the_declared_schema(empty_database_url: str) -> None:
    db = Database(empty_database_url)
    try:
        await upgrade(db)
        assert await current_revision(db) == head_revision() == HEAD_REVISION
        diff = await db.read(
            lambda conn: compare_metadata(MigrationContext.configure(conn), metadata)
        )
        assert diff == []
    finally:
        await db.dispose()
