"""The parameters of each partner call, as msgspec Structs: the one place that says which
parameters a call requires, how long each may be and which shape it must have.

core/partner.py derives its checks from these Structs once, at import (``REQUIRED``,
``MAX_LENGTH``, ``pattern``), and service/contract.py publishes them as the OpenAPI
document's parameters, so the two cannot drift; tests/test_contract.py sends each
operation of the published document its own limits and checks the refusals.

Every value is a string (the seed's "String"). A field without a default is required,
and a required parameter sent empty counts as absent (``MISSING_PARAMETER``), hence
``NONEMPTY``; ``max_length`` is checked before anything else (``INVALID_PARAMETER``);
a ``pattern`` is checked where the Meta description says, with the errorCode it names.
The requests are never decoded with these Structs: the accept path checks a plain dict.

Field order is the order in which missing parameters are named in a refusal.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Final

import msgspec
from msgspec import Meta

# A required parameter that is empty is refused as missing, so its schema says so.
NONEMPTY: Final = Meta(min_length=1)

AccessToken = Annotated[
    str,
    Meta(
        max_length=128,
        description=(
            "接入凭证 / access token: from POST /sign/api/token, valid for 7200 seconds "
            "(INVALID_TOKEN, EXPIRED_TOKEN)"
        ),
        examples=["1764072000.3fa85f64a1b2.6c1d0e0b9a6f4d2e8c7b5a3f1e9d7c5b3a1f0e2d"],
    ),
]
Company = Annotated[
    str,
    Meta(
        max_length=128,
        description=(
            "公司名称 / company: the one registered for the app (otherwise COMPANY_MISMATCH)"
        ),
        examples=["彩生活"],
    ),
]
SupplierName = Annotated[
    str,
    Meta(
        max_length=32,
        description=(
            "供应商名称 / Supplier: the carrier the order is routed by, one of those the "
            "operator routes (中国移动, 中国联通, 中国电信, 中国广电; otherwise UNKNOWN_SUPPLIER)"
        ),
        examples=["中国移动"],
    ),
]
PhoneNo = Annotated[
    str,
    Meta(
        max_length=32,
        pattern="^1[3-9][0-9]{9}$",
        description=(
            "手机号码 / 11-digit mainland mobile number; an order checks the pattern after "
            "Supplier and productId (INVALID_PHONE)"
        ),
        examples=["13800138000"],
    ),
]
ProductId = Annotated[
    str,
    Meta(
        max_length=64,
        description=(
            "产品 ID / product id: one of the Supplier's products, see GET /sign/api/products "
            "(otherwise UNKNOWN_PRODUCT)"
        ),
        examples=["YD10"],
    ),
]
CstmOrderName = Annotated[
    str,
    Meta(
        max_length=128,
        description="调用方名称 / the caller's own name for the order",
        examples=["物业缴费"],
    ),
]
CstmOrderNo = Annotated[
    str,
    Meta(
        max_length=64,
        pattern="^[!-~]+$",
        description=(
            "调用方流水号 / the caller's order number: printable ASCII without spaces "
            "(INVALID_PARAMETER). (appID, cstmOrderNo) identifies one order: sending it "
            "again returns the original"
        ),
        examples=["test1234567"],
    ),
]
OrderNo = Annotated[
    str,
    Meta(
        max_length=32,
        description=(
            "服务方系统订单流水号 / our order number (orderNo of the order's answer); when "
            "given it must be this order's (ORDER_NO_MISMATCH)"
        ),
        examples=["TP2026112609000328353070000"],
    ),
]
Sign = Annotated[
    str,
    Meta(
        max_length=128,
        description=(
            "签名 / signature over every other non-empty parameter: see the `signature` "
            "security scheme (BAD_SIGNATURE)"
        ),
        examples=["63444ae588f7486e37d4702ccbd9fa24c530323ea4df70e3ce11158c13e28fe1"],
    ),
]
Timestamp = Annotated[
    str,
    Meta(
        max_length=20,
        pattern="^[0-9]{1,16}$",
        description=(
            "时间戳 / Unix time in seconds or milliseconds (MALFORMED_TIMESTAMP), within "
            "300 seconds of the server's clock (STALE_TIMESTAMP)"
        ),
        examples=["1764064800"],
    ),
]
AppId = Annotated[
    str,
    Meta(
        max_length=64,
        description="调用者 appID / the app's id, as the operator registered it (UNKNOWN_APP)",
        examples=["demo"],
    ),
]


_SUPPLIER_OR_PHONE = (
    "供应商名称 / Supplier: the carrier whose products to list; exactly one of Supplier or "
    "phoneNo (otherwise UNKNOWN_SUPPLIER)"
)
_PHONE_OR_SUPPLIER = (
    "手机号码 / list the products of the carrier this 11-digit mainland number most likely "
    "belongs to; exactly one of Supplier or phoneNo (INVALID_PHONE, UNKNOWN_SUPPLIER)"
)


class TokenParams(msgspec.Struct, kw_only=True):
    """获取 access_token / get an access token."""

    appID: Annotated[AppId, NONEMPTY]
    ts: Annotated[Timestamp, NONEMPTY]
    sign: Annotated[Sign, NONEMPTY]


class OrderParams(msgspec.Struct, kw_only=True):
    """产品订购 / place a top-up order."""

    access_token: Annotated[AccessToken, NONEMPTY]
    company: Annotated[Company, NONEMPTY]
    Supplier: Annotated[SupplierName, NONEMPTY]
    phoneNo: Annotated[PhoneNo, NONEMPTY]
    productId: Annotated[ProductId, NONEMPTY]
    cstmOrderName: Annotated[CstmOrderName, NONEMPTY]
    cstmOrderNo: Annotated[CstmOrderNo, NONEMPTY]
    appID: Annotated[AppId, NONEMPTY]
    ts: Annotated[Timestamp, NONEMPTY]
    sign: Annotated[Sign, NONEMPTY]


class StatusParams(msgspec.Struct, kw_only=True):
    """订单状态查询 / query an order."""

    access_token: Annotated[AccessToken, NONEMPTY]
    company: Annotated[Company, NONEMPTY]
    Supplier: Annotated[SupplierName, NONEMPTY]
    cstmOrderNo: Annotated[CstmOrderNo, NONEMPTY]
    appID: Annotated[AppId, NONEMPTY]
    ts: Annotated[Timestamp, NONEMPTY]
    sign: Annotated[Sign, NONEMPTY]
    orderNo: OrderNo = ""


class ProductsParams(msgspec.Struct, kw_only=True):
    """产品列表 / the products of a carrier: the one named by Supplier, or the one phoneNo
    most likely belongs to. Exactly one of the two (neither: MISSING_PARAMETER; both:
    INVALID_PARAMETER)."""

    # Each alone is optional; one of them is required (core/partner.py checks it).
    one_of: ClassVar[tuple[str, str]] = ("Supplier", "phoneNo")

    access_token: Annotated[AccessToken, NONEMPTY]
    company: Annotated[Company, NONEMPTY]
    appID: Annotated[AppId, NONEMPTY]
    ts: Annotated[Timestamp, NONEMPTY]
    sign: Annotated[Sign, NONEMPTY]
    Supplier: Annotated[SupplierName, Meta(description=_SUPPLIER_OR_PHONE)] = ""
    phoneNo: Annotated[PhoneNo, Meta(description=_PHONE_OR_SUPPLIER)] = ""


class BalanceParams(msgspec.Struct, kw_only=True):
    """余额查询 / the prepaid account."""

    access_token: Annotated[AccessToken, NONEMPTY]
    company: Annotated[Company, NONEMPTY]
    appID: Annotated[AppId, NONEMPTY]
    ts: Annotated[Timestamp, NONEMPTY]
    sign: Annotated[Sign, NONEMPTY]


# The core's name of each call -> its parameters.
PARAMS: Final[dict[str, type[msgspec.Struct]]] = {
    "token": TokenParams,
    "order": OrderParams,
    "status": StatusParams,
    "products": ProductsParams,
    "balance": BalanceParams,
}


def _metas(annotation: object) -> list[Meta]:
    """The Meta constraints of a field's annotation, outermost last (nested Annotated
    aliases are flattened by typing)."""
    return [meta for meta in getattr(annotation, "__metadata__", ()) if isinstance(meta, Meta)]


def _constraint(annotation: object, name: str) -> object:
    found = [getattr(meta, name) for meta in _metas(annotation) if getattr(meta, name) is not None]
    return found[-1] if found else None


def required(params: type[msgspec.Struct]) -> tuple[str, ...]:
    """The call's required parameters, in the Struct's order."""
    return tuple(field.encode_name for field in msgspec.structs.fields(params) if field.required)


def _per_name(constraint: str) -> dict[str, Any]:
    """``{parameter: its constraint}`` over every call; one name means one thing, so the
    same parameter must carry the same constraint in every call that has it."""
    found: dict[str, Any] = {}
    for params in PARAMS.values():
        for field in msgspec.structs.fields(params):
            value = _constraint(field.type, constraint)
            if value is None:
                continue
            if found.setdefault(field.encode_name, value) != value:
                raise TypeError(
                    f"{field.encode_name}: {constraint} {value} in {params.__name__}, "
                    f"{found[field.encode_name]} elsewhere"
                )
    return found


def max_lengths() -> dict[str, int]:
    """Every parameter's length limit, checked whichever call it is sent to."""
    return {name: int(limit) for name, limit in _per_name("max_length").items()}


def pattern(name: str) -> re.Pattern[str]:
    """The pattern of parameter ``name``, compiled; use it with ``fullmatch``: the
    patterns are anchored for JSON Schema, and only ``fullmatch`` keeps Python's ``$``
    from accepting a trailing newline."""
    return re.compile(str(_per_name("pattern")[name]))
