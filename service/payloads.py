"""The partner API's response shapes, exactly as the seed spells them."""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec
from msgspec import Meta

from core.clock import beijing_time
from core.errors import ErrorCode
from core.ledger import Account
from core.money import fen_to_yuan
from core.orders import PARTNER_STATUS_TEXT, OrderRecord, State
from core.partner import ProductOffer

T = TypeVar("T")

Message = Annotated[
    str,
    Meta(
        description=(
            "结果说明 / 成功 on success, otherwise what exactly is wrong (Chinese; the wording "
            "may change, branch on errorCode)"
        ),
        examples=["成功"],
    ),
]
EchoedCompany = Annotated[
    str,
    Meta(description="公司名称 / company, echoed from the request (empty if it was not read)"),
]
EchoedSupplier = Annotated[
    str,
    Meta(description="供应商名称 / Supplier, echoed from the request (empty if it was not read)"),
]


class Success(msgspec.Struct, Generic[T]):
    """成功 / the seed's envelope of an answer with code "0": the call's result in data."""

    code: Annotated[Literal["0"], Meta(description="结果 / 0 成功 (success)")]
    message: Message
    company: EchoedCompany
    Supplier: EchoedSupplier
    data: T


class Refusal(msgspec.Struct):
    """失败 / the seed's envelope of a refusal (code "1"): nothing was done, data is empty,
    errorCode says why."""

    code: Annotated[Literal["1"], Meta(description="结果 / 1 失败 (failure)")]
    message: Message
    company: EchoedCompany
    Supplier: EchoedSupplier
    data: Annotated[Literal[""], Meta(description="失败时为空 / empty on failure")]
    errorCode: ErrorCode


Envelope = Success[Any] | Refusal

OrderNo = Annotated[
    str,
    Meta(
        pattern="^TP[0-9]{25}$",
        description=(
            "服务方系统订单流水号 / our order number, for reconciliation: TP, Beijing time to "
            "the millisecond (17 digits), node (4) and sequence (4)"
        ),
        examples=["TP2026112609000328353070000"],
    ),
]
CstmOrderNo = Annotated[str, Meta(description="调用方流水号 / the caller's order number")]
OrderId = Annotated[
    str,
    Meta(
        pattern="^Y[0-9a-f]{29}$",
        description="订单 ID / order id: Y and 29 hex digits",
        examples=["Y3070c4d323e64f39b7b9db6312dd8"],
    ),
]
Yuan = Annotated[
    str,
    Meta(pattern="^-?[0-9]+[.][0-9]{2}$", description="yuan, two decimals", examples=["9.95"]),
]
BeijingTime = Annotated[
    str,
    Meta(
        pattern="^([0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2})?$",
        description="北京时间 / Beijing time, yyyy-MM-dd HH:mm:ss",
        examples=["2026-11-26 09:00:04"],
    ),
]


class OrderAccepted(msgspec.Struct):
    """产品订购的结果 / the order, accepted and on disk (a repeat returns the original)."""

    orderNo: OrderNo
    cstmOrderNo: CstmOrderNo
    status: Annotated[
        Literal["0"], Meta(description="订单状态 / always 0 (已受理, accepted) on this call")
    ]
    orderId: OrderId


class OrderStatus(msgspec.Struct):
    """订单状态 / where one order stands."""

    orderNo: OrderNo
    cstmOrderNo: CstmOrderNo
    orderId: OrderId
    status: Annotated[
        Literal["0", "1", "2", "3"],
        Meta(
            description=(
                "订单状态 / 0 已受理 accepted, 1 充值中 with a supplier, 2 充值成功 credited "
                "(final), 3 充值失败 nothing credited (final)"
            )
        ),
    ]
    statusDesc: Annotated[
        Literal["已受理", "充值中", "充值成功", "充值失败"],
        Meta(description="状态说明 / status in words"),
    ]
    phoneNo: Annotated[str, Meta(description="手机号码 / the number topped up")]
    productId: Annotated[str, Meta(description="产品 ID / the product")]
    faceValue: Annotated[Yuan, Meta(description="面值 / face value in yuan")]
    price: Annotated[Yuan, Meta(description="价格 / what the app pays, in yuan")]
    fundStatus: Annotated[
        Literal["held", "captured", "released"],
        Meta(
            description=(
                "资金状态 / the price: held while the order is open, captured once it "
                "succeeded, released (back in the balance) once it failed"
            )
        ),
    ]
    createTime: Annotated[BeijingTime, Meta(description="下单时间 / accepted at (Beijing time)")]
    updateTime: Annotated[BeijingTime, Meta(description="更新时间 / last change (Beijing time)")]
    finishTime: Annotated[
        BeijingTime, Meta(description="完成时间 / final at (Beijing time); empty until final")
    ]
    failReason: Annotated[
        str, Meta(description="失败原因 / why it failed, when status is 3; otherwise empty")
    ]


class BalanceData(msgspec.Struct):
    """预付款账户 / the app's prepaid account, in yuan."""

    balance: Annotated[
        Yuan,
        Meta(
            description=(
                "余额 / credits minus what succeeded orders cost, minus what open orders hold"
            )
        ),
    ]
    held: Annotated[Yuan, Meta(description="冻结 / what open orders hold")]
    creditLimit: Annotated[Yuan, Meta(description="授信额度 / credit limit")]
    available: Annotated[
        Yuan,
        Meta(
            description=(
                "可用 / balance + creditLimit: an order priced above it is refused "
                "(INSUFFICIENT_BALANCE)"
            )
        ),
    ]


class TokenData(msgspec.Struct):
    """access_token 及其有效期 / an access token and how long it lasts."""

    access_token: Annotated[
        str, Meta(description="接入凭证 / send it as access_token with the other calls")
    ]
    expires_in: Annotated[
        int,
        Meta(
            ge=0,
            description=(
                "有效秒数 / seconds left, counted from the request's ts (7200 at most); ask "
                "for a new token before it runs out"
            ),
            examples=[7200],
        ),
    ]


class ProductData(msgspec.Struct):
    """产品 / one product of the Supplier."""

    productId: Annotated[str, Meta(description="产品 ID / send it as productId to order it")]
    productName: Annotated[str, Meta(description="产品名称 / product name")]
    faceValue: Annotated[Yuan, Meta(description="面值 / face value in yuan")]
    price: Annotated[Yuan, Meta(description="价格 / what the app pays, in yuan")]


class ProductList(msgspec.Struct, omit_defaults=True):
    """产品列表 / a carrier's products. Asked by Supplier: products alone. Asked by phoneNo:
    also the carrier the number most likely belongs to, and how that was found."""

    products: list[ProductData]
    carrier: Annotated[
        str,
        Meta(
            description=(
                "运营商 / asked by phoneNo only: the carrier the number most likely belongs "
                "to (also echoed as the envelope's Supplier)"
            ),
            examples=["中国移动"],
        ),
    ] = ""
    carrierSource: Annotated[
        str,
        Meta(
            pattern="^(segment|supplier:.+)$",
            description=(
                "来源 / asked by phoneNo only: segment (the number-segment table: who issued "
                "the number) or supplier:NAME (that supplier's lookup: who serves it now, "
                "携号转网 included)"
            ),
            examples=["segment"],
        ),
    ] = ""


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


def product_list(offer: ProductOffer) -> ProductList:
    products = [
        ProductData(p.product_id, p.name, fen_to_yuan(p.face_value), fen_to_yuan(p.price))
        for p in offer.products
    ]
    if offer.carrier_source is None:
        return ProductList(products)
    return ProductList(products, offer.carrier, offer.carrier_source)
