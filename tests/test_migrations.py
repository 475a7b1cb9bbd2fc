"""The Alembic migrations build exactly the schema the code declares."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError

from core.db import Database, metadata
from core.migrate import HEAD_REVISION, current_revision, head_revision, upgrade
from core.order_store import OrderStore


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


async def test_carrier_checks_upgrade_a_database_in_use(empty_database_url: str) -> None:
    """0008 and 0009 on a database with apps and orders: apps keep accepting what they
    sent before, and existing orders read back with their carrier (0009 renames its
    column from ``supplier``) and no segment carrier recorded."""
    db = Database(empty_database_url)
    try:
        await upgrade(db, "0007")

        def fill(conn: Connection) -> None:
            conn.execute(
                text(
                    "INSERT INTO apps (app_id, company, secret, sign_type, created_at) "
                    "VALUES ('old', 'co', 'sealed', 'hmac-sha256', 1)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO orders (order_no, order_id, app_id, cstm_order_no, "
                    "cstm_order_name, company, supplier, phone_no, product_id, face_value, "
                    "price, state, created_at, updated_at) VALUES ('TP1', 'id1', 'old', 'c1', "
                    "'n', 'co', '中国联通', '13800138000', 'LT10', 1000, 995, 'succeeded', 1, 2)"
                )
            )

        await db.write(fill)
        await upgrade(db)
        assert await current_revision(db) == HEAD_REVISION
        policy = await db.read(
            lambda conn: conn.execute(text("SELECT carrier_mismatch FROM apps")).scalar_one()
        )
        assert policy == "accept"
        order = await OrderStore(db).get("TP1")
        assert order is not None
        assert (order.carrier, order.state) == ("中国联通", "succeeded")
        assert order.segment_carrier is None
    finally:
        await db.dispose()


async def test_order_id_index_goes_from_a_database_in_use(empty_database_url: str) -> None:
    """0010 copies the orders table on SQLite to drop orderId's unique index: every order
    reads back whole, its columns where they were, and the other constraints still hold."""
    db = Database(empty_database_url)
    try:
        await upgrade(db, "0009")

        def fill(conn: Connection) -> None:
            conn.execute(
                text(
                    "INSERT INTO orders (order_no, order_id, app_id, cstm_order_no, "
                    "cstm_order_name, company, carrier, phone_no, product_id, face_value, "
                    "price, state, attempts, created_at, updated_at, next_run_at, "
                    "segment_carrier) VALUES ('TP1', 'Yold', 'app', 'c1', 'n', 'co', "
                    "'中国联通', '13800138000', 'LT10', 1000, 995, 'pending', 1, 1, 2, 3, "
                    "'中国移动')"
                )
            )

        await db.write(fill)
        await upgrade(db)
        order = await OrderStore(db).get("TP1")
        assert order is not None
        assert (order.order_id, order.carrier, order.phone_no, order.price) == (
            "Yold",
            "中国联通",
            "13800138000",
            995,
        )
        assert (order.state, order.attempts, order.next_run_at) == ("pending", 1, 3)
        assert order.segment_carrier == "中国移动"

        def repeat(conn: Connection) -> None:
            conn.execute(
                text(
                    "INSERT INTO orders (order_no, order_id, app_id, cstm_order_no, "
                    "cstm_order_name, company, carrier, phone_no, product_id, face_value, "
                    "price, state, created_at, updated_at) VALUES ('TP2', 'Ynew', 'app', "
                    "'c1', 'n', 'co', '中国联通', '13800138000', 'LT10', 1000, 995, "
                    "'accepted', 1, 2)"
                )
            )

        with pytest.raises(IntegrityError):  # (appID, cstmOrderNo) is still one order
            await db.write(repeat)
    finally:
        await db.dispose()
