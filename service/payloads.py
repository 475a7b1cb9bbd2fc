"""The partner API's response shapes, exactly as the seed spells them."""

from __future__ import annotations

from typing import Any

import msgspec

from core.clock import beijing_time
from core.config import Product
from core.ledger import Account
from core.money import fen_to_yuan
from core.orders import PARTNER_STATUS_TEXT, OrderRecord, State


class Envelope(msgspec.Struct, omit_defaults=True):
    """``{"code", "message", "company", "Supplier", "data"}``, plus ``errorCode`` on failure."""

    code: str
    message: str
    company: str
    Supplier: str
    data: Any
    errorCode: str | None = None


class OrderAccepted(msgspec.Struct):
    orderNo: str
    cstmOrderNo: str
    status: str
    orderId: str


class OrderStatus(msgspec.Struct):
    orderNo: str
    cstmOrderNo: str
    orderId: str
    status: str
    statusDesc: str
    phoneNo: str
    productId: str
    faceValue: str
    price: str
    fundStatus: str
    createTime: str
    updateTime: str
    finishTime: str
    failReason: str


class BalanceData(msgspec.Struct):
    balance: str
    held: str
    creditLimit: str
    available: str


class TokenData(msgspec.Struct):
    access_token: str
    expires_in: int


class ProductData(msgspec.Struct):
    productId: str
    productName: str
    faceValue: str
    price: str


class ProductList(msgspec.Struct):
    products: list[ProductData]


# Where the partner's money for an order stands: held from acceptance until the final
# state captures it (success) or releases it back to the balance (failure).
FUND_STATUS = {State.SUCCEEDED: "captured", State.FAILED: "released"}


def balance(account: Account) -> BalanceData:
    return BalanceData(
        fen_to_yuan(account.balance),
        fen_to_yuan(account.held),
        fen_to_yuan(account.credit_limit),
        fen_to_yuan(account.available),
    )


def order_accepted(order: OrderRecord) -> OrderAccepted:
    # The order call only ever answers status "0" (订单已受理), repeats included.
    return OrderAccepted(order.order_no, order.cstm_order_no, "0", order.order_id)


def order_status(order: OrderRecord) -> OrderStatus:
    status = order.partner_status
    return OrderStatus(
        orderNo=order.order_no,
        cstmOrderNo=order.cstm_order_no,
        orderId=order.order_id,
        status=status,
        statusDesc=PARTNER_STATUS_TEXT[status],
        phoneNo=order.phone_no,
        productId=order.product_id,
        faceValue=fen_to_yuan(order.face_value),
        price=fen_to_yuan(order.price),
        fundStatus=FUND_STATUS.get(order.state, "held"),
        createTime=beijing_time(order.created_at),
        updateTime=beijing_time(order.updated_at),
        finishTime=beijing_time(order.finished_at),
        failReason=(order.fail_reason or "") if order.state is State.FAILED else "",
    )


def product_list(products: list[Product]) -> ProductList:
    return ProductList(
        [
            ProductData(p.product_id, p.name, fen_to_yuan(p.face_value), fen_to_yuan(p.price))
            for p in products
        ]
    )
