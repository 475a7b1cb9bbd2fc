"""Orders for the console's tests: through the real order store, or written in bulk.

``Shop`` places orders the way the service does (the lifecycle: accept with a hold,
claim with the first attempt, apply supplier results), one at a time so that each
claim takes exactly that order. ``order_row`` and friends build rows at chosen times for
shapes the store cannot make quickly (months of history, hundreds of orders).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert

from core.db import Database, attempts, notifications, order_events, orders
from core.ids import OrderNumbers, new_order_id, order_no_floor
from core.lifecycle import Lifecycle, Send
from core.order_store import OrderStore
from core.orders import NewOrder
from core.routing import Choice
from core.suppliers import SupplierResult

PRODUCTS = {"中国移动": "YD10", "中国联通": "LT10", "中国电信": "DX10"}


class Plan:
    """A route plan for tests: ``plugins`` in failover order, each costing 990 fen."""

    def __init__(self, *plugins: str) -> None:
        self.plugins = plugins

    def choose(self, carrier: str, order_no: str, product_id: str, tried: list[str]):
        left = [plugin for plugin in self.plugins if plugin not in tried]
        return Choice(left[0], 990) if left else None


class Shop:
    def __init__(self, db: Database) -> None:
        self.lifecycle = Lifecycle(db)
        self.store = OrderStore(db)
        self.numbers = OrderNumbers()

    async def order(
        self,
        app_id: str,
        cstm_order_no: str,
        phone_no: str = "13800138000",
        carrier: str = "中国移动",
        plugins: Sequence[str] = ("sandbox",),
        outcome: str = "succeeded",
    ) -> str:
        """Place an order; every plugin but the last refuses it (failover), the last
        answers ``outcome``: succeeded, failed, pending, or review (unknown, and no
        further query)."""
        order_no = self.numbers.next()
        new = NewOrder(
            order_no=order_no,
            order_id=new_order_id(order_no),
            app_id=app_id,
            cstm_order_no=cstm_order_no,
            cstm_order_name="话费充值",
            company=f"{app_id}公司",
            carrier=carrier,
            phone_no=phone_no,
            product_id=PRODUCTS[carrier],
            face_value=1000,
            price=995,
        )
        _record, created = await self.lifecycle.accept(new)
        assert created
        for seq, _plugin in enumerate(plugins, start=1):
            [step] = await self.lifecycle.claim("worker", 60_000, 10, Plan(*plugins))
            assert isinstance(step, Send) and step.upstream.order_no == new.order_no
            if seq < len(plugins):
                refusal = SupplierResult.failed(
                    code="NO_BALANCE", message="余额不足", failover=True, transient=True
                )
                await self._apply(step.upstream.reference, refusal, from_submit=True)
            else:
                await self._apply(step.upstream.reference, *_RESULTS[outcome])
        return new.order_no

    async def _apply(
        self,
        reference: str,
        result: SupplierResult,
        from_submit: bool = False,
        delay: int | None = 1000,
    ) -> None:
        applied = await self.lifecycle.apply(
            reference,
            result,
            from_submit=from_submit,
            next_query_delay_ms=delay,
            counts_as_query=not from_submit,
        )
        assert applied is not None


_RESULTS: dict[str, tuple] = {
    "succeeded": (SupplierResult.succeeded(supplier_ref="S-1", code="1", message="充值成功"),),
    "failed": (SupplierResult.failed(code="9", message="充值失败"),),
    "pending": (SupplierResult.pending(supplier_ref="S-2"), False, 600_000),
    "review": (SupplierResult.unknown(code="TIMEOUT"), False, None),
}


def number_at(ms: int, seq: int = 0) -> str:
    """An order number taken at ``ms`` (core/ids.py's shape)."""
    return f"{order_no_floor(ms)}0001{seq:04d}"


def order_row(order_no: str, at: int, **values: Any) -> dict[str, Any]:
    row = {
        "order_no": order_no,
        "order_id": new_order_id(order_no),
        "app_id": "app",
        "cstm_order_no": f"c-{order_no}",
        "cstm_order_name": "话费充值",
        "company": "公司",
        "carrier": "中国移动",
        "phone_no": "13800138000",
        "product_id": "YD10",
        "face_value": 1000,
        "price": 995,
        "state": "succeeded",
        "attempts": 0,
        "fail_code": None,
        "fail_reason": None,
        "created_at": at,
        "updated_at": at,
        "finished_at": at,
        "next_run_at": None,
        "lease_owner": None,
        "lease_until": None,
    }
    return _with(row, values)


def attempt_row(
    order_no: str, seq: int, plugin: str, state: str, started: int, took: int, **values: Any
) -> dict[str, Any]:
    row = {
        "reference": f"{order_no}A{seq}",
        "order_no": order_no,
        "seq": seq,
        "plugin": plugin,
        "state": state,
        "supplier_ref": None,
        "code": None,
        "message": None,
        "queries": 0,
        "created_at": started,
        "updated_at": started + took,
        "cost": 990,
        "refused": False,
        "resent": False,
    }
    return _with(row, values)


def notification_row(order_no: str, created: int, **values: Any) -> dict[str, Any]:
    row = {
        "order_no": order_no,
        "app_id": "app",
        "url": "https://partner.example/notify",
        "attempts": 1,
        "next_attempt_at": None,
        "delivered_at": None,
        "last_error": None,
        "created_at": created,
    }
    return _with(row, values)


async def write_rows(db: Database, **tables: list[dict[str, Any]]) -> None:
    """Insert rows into the named tables (orders, attempts, order_events, notifications)."""
    known = {
        "orders": orders,
        "attempts": attempts,
        "order_events": order_events,
        "notifications": notifications,
    }

    def write(conn) -> None:
        for name, rows in tables.items():
            if rows:
                conn.execute(insert(known[name]), rows)

    await db.write(write)


def _with(row: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``row`` with ``values`` in place of its defaults; a name that is not a column (a
    typo, or a column since renamed) fails here rather than being silently dropped."""
    unknown = set(values) - set(row)
    if unknown:
        raise TypeError(f"not columns of the table: {sorted(unknown)}")
    return row | values
