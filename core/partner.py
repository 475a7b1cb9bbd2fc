"""The partner API's rules, independent of HTTP: who may call, and what each call does.

The service decodes a request into a flat ``{name: value}`` mapping of strings and
hands it here; every refusal is a ``TopupError`` carrying its ``ErrorCode``.
Checks run in a fixed order: presence, shape, app, the app's IP allowlist, timestamp,
signature (then the app's rate limit), token, company, then the business checks;
nothing is written until all have passed. ``client`` is the caller's address as the
service determined it (a plain string; the core knows no HTTP).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import msgspec

from core import metrics, partner_params
from core.apps import App, AppStore, CarrierMismatch
from core.carriers import find_carrier
from core.config import Product
from core.errors import ErrorCode, TopupError
from core.ids import OrderNumbers, new_order_id
from core.ledger import Account, Ledger
from core.lifecycle import Lifecycle
from core.numbering import carrier_of
from core.order_store import OrderStore
from core.orders import NewOrder, OrderRecord
from core.ratelimit import AbuseGuard
from core.runtime import Runtime
from core.signing import verify_sign
from core.tokens import TokenIssuer

TIMESTAMP_TOLERANCE_SECONDS = 300

# What each call requires and how long and of what shape each value may be, from the
# Structs that the OpenAPI document publishes (core/partner_params.py); derived once here.
# Products also needs exactly one of Supplier or phoneNo (PartnerDesk.products).
REQUIRED = {call: partner_params.required(params) for call, params in partner_params.PARAMS.items()}
MAX_LENGTH = partner_params.max_lengths()
_PRINTABLE_ASCII = partner_params.pattern("cstmOrderNo")
_MAINLAND_MOBILE = partner_params.pattern("phoneNo")
_DIGITS = partner_params.pattern("ts")


class TokenGrant(msgspec.Struct, frozen=True):
    access_token: str
    expires_in: int


class ProductOffer(msgspec.Struct, frozen=True):
    """A carrier's products; asked by phoneNo, also how the carrier was found."""

    carrier: str
    products: list[Product]
    carrier_source: str | None = None
    """None when the partner named the carrier (Supplier); else ``segment`` or
    ``supplier:NAME`` (core/carriers.py)."""


class PartnerDesk:
    def __init__(
        self,
        apps: AppStore,
        tokens: TokenIssuer,
        store: OrderStore,
        lifecycle: Lifecycle,
        ledger: Ledger,
        runtime: Callable[[], Runtime],
        on_accepted: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        order_numbers: OrderNumbers | None = None,
        guard: AbuseGuard | None = None,
    ) -> None:
        self._apps = apps
        self._tokens = tokens
        self._store = store
        self._lifecycle = lifecycle
        self._ledger = ledger
        self._runtime = runtime
        self._on_accepted = on_accepted
        self._clock = clock
        self._order_numbers = order_numbers or OrderNumbers()
        self._guard = guard or AbuseGuard(runtime().config.limits)

    async def issue_token(self, params: Mapping[str, str], client: str = "") -> TokenGrant:
        """A token bound to the secret that signed this request; replaying the same
        request returns the same token."""
        app, secret = await self._authenticate(params, "token", client)
        token = self._tokens.issue(app.app_id, secret, _seconds(params["ts"]), params["sign"])
        return TokenGrant(token, self._tokens.expires_in(token, self._clock()))

    async def place_order(
        self, params: Mapping[str, str], client: str = ""
    ) -> tuple[OrderRecord, bool]:
        """Accept an order durably; a repeat returns the original and creates nothing."""
        app, _secret = await self._authenticate(params, "order", client)
        product = self._product(params)
        phone_no = params["phoneNo"]
        if not _MAINLAND_MOBILE.fullmatch(phone_no):
            raise TopupError(
                ErrorCode.INVALID_PHONE,
                f"手机号码格式错误: {phone_no!r} 不是 11 位中国大陆手机号",
            )
        # One dict probe or three; a supplier is never asked here (the accept path).
        segment = carrier_of(phone_no)
        mismatch = segment if segment is not None and segment != product.carrier else None
        if mismatch and app.carrier_mismatch is CarrierMismatch.REFUSE:
            await self._refuse_mismatch(app, params, product, mismatch)
        order_no = self._order_numbers.next()
        new = NewOrder(
            order_no=order_no,
            order_id=new_order_id(order_no),
            app_id=app.app_id,
            cstm_order_no=params["cstmOrderNo"],
            cstm_order_name=params["cstmOrderName"],
            company=app.company,
            carrier=product.carrier,
            phone_no=phone_no,
            product_id=product.product_id,
            face_value=product.face_value,
            price=product.price,
            segment_carrier=mismatch,
        )
        order, created = await self._lifecycle.accept(new)
        if not created and not order.same_request(new):
            raise TopupError(
                ErrorCode.ORDER_CONFLICT,
                f"cstmOrderNo {new.cstm_order_no} 已用于另一笔订单 (手机号 {order.phone_no}, "
                f"产品 {order.product_id}, 供应商 {order.carrier}); 原订单未改变",
            )
        if created:
            metrics.order_accepted(order.carrier, order.order_no, self._runtime().router)
            self._on_accepted()
        return order, created

    async def order_status(self, params: Mapping[str, str], client: str = "") -> OrderRecord:
        app, _secret = await self._authenticate(params, "status", client)
        cstm_order_no = params["cstmOrderNo"]
        order = await self._store.find(app.app_id, cstm_order_no)
        if order is None:
            raise TopupError(ErrorCode.ORDER_NOT_FOUND, f"订单不存在: cstmOrderNo {cstm_order_no}")
        order_no = params.get("orderNo", "")
        if order_no and order_no != order.order_no:
            raise TopupError(
                ErrorCode.ORDER_NO_MISMATCH,
                f"orderNo {order_no} 与 cstmOrderNo {cstm_order_no} 的订单不符",
            )
        if params["Supplier"] != order.carrier:
            raise TopupError(
                ErrorCode.SUPPLIER_MISMATCH,
                f"该订单的供应商是 {order.carrier}, 不是 {params['Supplier']}",
            )
        return order

    async def balance(self, params: Mapping[str, str], client: str = "") -> Account:
        app, _secret = await self._authenticate(params, "balance", client)
        account = await self._ledger.account(app.app_id)
        return account or Account(app.app_id, 0, 0, 0, 0)

    async def products(self, params: Mapping[str, str], client: str = "") -> ProductOffer:
        """The products of the carrier named by ``Supplier``, or of the carrier ``phoneNo``
        most likely belongs to (exactly one of the two: with both, they could disagree
        about a ported number and no one answer would be right)."""
        _check_one_of(params, REQUIRED["products"], *partner_params.ProductsParams.one_of)
        await self._authenticate(params, "products", client)
        runtime = self._runtime()
        carrier = params.get("Supplier")
        if carrier:
            if not runtime.catalog.has_carrier(carrier):
                raise _unknown_carrier(carrier, runtime.catalog.carriers)
            return ProductOffer(carrier, runtime.catalog.products(carrier))
        phone_no = params["phoneNo"]
        if not _MAINLAND_MOBILE.fullmatch(phone_no):
            raise TopupError(
                ErrorCode.INVALID_PHONE,
                f"手机号码格式错误: {phone_no!r} 不是 11 位中国大陆手机号",
            )
        found = await find_carrier(phone_no, runtime)
        if found is None:
            raise TopupError(
                ErrorCode.INVALID_PHONE,
                f"手机号码 {phone_no} 的号段 {phone_no[:3]} 未分配给任何运营商",
            )
        if not runtime.catalog.has_carrier(found.carrier):
            raise TopupError(
                ErrorCode.UNKNOWN_SUPPLIER,
                f"手机号码 {phone_no} 属于{found.carrier} (来源 {found.source}),"
                f" 未开通该运营商的产品; 可用: {', '.join(runtime.catalog.carriers) or '无'}",
            )
        products = runtime.catalog.products(found.carrier)
        return ProductOffer(found.carrier, products, found.source)

    async def _refuse_mismatch(
        self, app: App, params: Mapping[str, str], product: Product, segment: str
    ) -> None:
        """CARRIER_MISMATCH, unless this is a repeat of an order already stored (accepted
        before the app was set to refuse): a repeat gets the original, as always."""
        if await self._store.find(app.app_id, params["cstmOrderNo"]) is not None:
            return
        raise TopupError(
            ErrorCode.CARRIER_MISMATCH,
            f"手机号码 {params['phoneNo']} 的号段属于{segment}, 与 Supplier {product.carrier} 不符;"
            f" 该应用设置为拒绝此类订单 (携号转网的号码请联系运营方改为接受)",
        )

    def _product(self, params: Mapping[str, str]) -> Product:
        carrier, product_id = params["Supplier"], params["productId"]
        catalog = self._runtime().catalog
        if not catalog.has_carrier(carrier):
            raise _unknown_carrier(carrier, catalog.carriers)
        product = catalog.product(carrier, product_id)
        if product is None:
            raise TopupError(
                ErrorCode.UNKNOWN_PRODUCT, f"供应商 {carrier} 没有产品 productId {product_id}"
            )
        return product

    async def _authenticate(
        self, params: Mapping[str, str], call: str, client: str
    ) -> tuple[App, str]:
        """The calling app and the secret that signed this request, once every check
        of ``call``'s parameters, address, timestamp, signature, token and company has
        passed."""
        _check_present(params, REQUIRED[call])
        _check_shapes(params)
        app = await self._apps.get(params["appID"])
        if app is None:
            raise TopupError(ErrorCode.UNKNOWN_APP, f"appID {params['appID']} 未注册")
        _check_client(app, client)
        self._check_timestamp(params["ts"])
        now = self._clock()
        secret = _signing_secret(params, app, now)
        if secret is None:
            raise self._guard.signature_failed(app.app_id) or TopupError(
                ErrorCode.BAD_SIGNATURE,
                f"签名错误: 请按 {app.sign_type} 规则对除 sign 外的非空参数排序后签名",
            )
        # Counted only now: unsigned calls naming this appID cannot spend its budget.
        self._guard.check_app(app.app_id)
        if "access_token" in REQUIRED[call]:
            live_secrets = app.secrets_at(int(now * 1000))
            self._tokens.check(params["access_token"], app.app_id, live_secrets, now)
        if "company" in REQUIRED[call] and params["company"] != app.company:
            raise TopupError(
                ErrorCode.COMPANY_MISMATCH,
                f"company {params['company']} 与 appID {app.app_id} 登记的公司不符",
            )
        return app, secret

    def _check_timestamp(self, raw: str) -> None:
        if not _DIGITS.fullmatch(raw):
            raise TopupError(
                ErrorCode.MALFORMED_TIMESTAMP,
                f"ts 格式错误: {raw!r} 应为 Unix 时间戳 (秒或毫秒)",
            )
        drift = abs(self._clock() - _seconds(raw))
        if drift > TIMESTAMP_TOLERANCE_SECONDS:
            raise TopupError(
                ErrorCode.STALE_TIMESTAMP,
                f"ts 与服务器时间相差 {int(drift)} 秒, 超过 {TIMESTAMP_TOLERANCE_SECONDS} 秒",
            )


def _seconds(ts: str) -> int:
    """``ts`` in Unix seconds, whether the partner sent seconds or milliseconds."""
    value = int(ts)
    return value // 1000 if value >= 100_000_000_000 else value


def _signing_secret(params: Mapping[str, str], app: App, now: float) -> str | None:
    """The app's secret that signed ``params``: the current one, or during a rotation's
    grace period the previous one; None if neither did."""
    for secret in app.secrets_at(int(now * 1000)):
        if verify_sign(params, secret, app.sign_type):
            return secret
    return None


def _check_client(app: App, client: str) -> None:
    if not app.allows(client):
        raise TopupError(
            ErrorCode.IP_NOT_ALLOWED,
            f"appID {app.app_id} 设置了 IP 白名单, 不接受来自 {client or '未知地址'} 的请求",
        )


def _check_present(params: Mapping[str, str], required: tuple[str, ...]) -> None:
    missing = [name for name in required if not params.get(name)]
    if missing:
        raise TopupError(ErrorCode.MISSING_PARAMETER, f"缺少必填参数: {', '.join(missing)}")


def _check_one_of(
    params: Mapping[str, str], required: tuple[str, ...], first: str, second: str
) -> None:
    """Presence of ``required`` and of exactly one of ``first`` and ``second``; the
    refusal names every missing parameter at once, as ``_check_present``'s does."""
    missing = [name for name in required if not params.get(name)]
    if not params.get(first) and not params.get(second):
        missing.append(f"{first} 或 {second} (二选一)")
    if missing:
        raise TopupError(ErrorCode.MISSING_PARAMETER, f"缺少必填参数: {', '.join(missing)}")
    if params.get(first) and params.get(second):
        raise TopupError(
            ErrorCode.INVALID_PARAMETER, f"{first} 和 {second} 只能给一个: 按运营商或按手机号查询"
        )


def _check_shapes(params: Mapping[str, str]) -> None:
    for name, limit in MAX_LENGTH.items():
        value = params.get(name)
        if value is not None and len(value) > limit:
            raise TopupError(ErrorCode.INVALID_PARAMETER, f"参数 {name} 过长: 最多 {limit} 个字符")
    cstm_order_no = params.get("cstmOrderNo")
    if cstm_order_no and not _PRINTABLE_ASCII.fullmatch(cstm_order_no):
        raise TopupError(
            ErrorCode.INVALID_PARAMETER,
            "参数 cstmOrderNo 只能包含可见 ASCII 字符 (不含空格)",
        )


def _unknown_carrier(carrier: str, known: list[str]) -> TopupError:
    # Said in the partner's words: the field is Supplier (供应商), its value a carrier.
    return TopupError(
        ErrorCode.UNKNOWN_SUPPLIER,
        f"不支持的供应商 Supplier {carrier}; 可用: {', '.join(known) or '无'}",
    )
