"""juhe: a md5-signed form API in the style of 聚合数据 话费充值 (docs/supplier-protocols.md).

Submit ``onlineorder`` with our reference as ``orderid``; query ``ordersta`` by it;
states 0 充值中, 1 成功, 9 撤销; POST callbacks signed ``md5(key + sporder_id + orderid)``,
which the core takes only as a cue to query (the sign does not cover the outcome);
``yue`` tells our balance (余额查询); ``telquery`` which carrier serves a number now
(携号转网 included), read from the area of the product it would use.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from urllib.parse import parse_qsl

import httpx
import msgspec

from topup import (
    Callback,
    CallbackReply,
    CallbackRequest,
    ErrorClass,
    ErrorTable,
    FailReason,
    Outcome,
    StatementLine,
    Supplier,
    SupplierResult,
    UpstreamOrder,
    classify_error,
    exchange,
    hookimpl,
    read_statement_csv,
    secret_from_env,
    unknown_answer,
    yuan_to_fen,
)

log = logging.getLogger("topup.plugins.juhe")

# The supplier's own error codes answering onlineorder, read as the protocol documents
# them. A code not listed here is unknown and raises an alert (see classify_error).
# Refusals about our account or the interface rather than the order are transient:
# another supplier may try, and they count towards opening juhe's circuit.
ERRORS: ErrorTable = {
    "10001": ErrorClass.TRANSIENT,  # 错误的请求KEY
    "10002": ErrorClass.TRANSIENT,  # 该KEY无请求权限
    "10003": ErrorClass.TRANSIENT,  # KEY过期
    "10004": ErrorClass.TRANSIENT,  # 错误的OPENID
    "10012": ErrorClass.TRANSIENT,  # 请求超过次数限制
    "10014": ErrorClass.UNKNOWN,  # 系统内部异常: it may have been processed
    "10020": ErrorClass.TRANSIENT,  # 接口维护
    "10021": ErrorClass.TRANSIENT,  # 接口停用
    # 不允许充值的手机号码及金额: juhe's own list; another supplier may serve it.
    "208501": (ErrorClass.DEFINITIVE, FailReason.AMOUNT_NOT_SUPPORTED),
    # 请求手机号码归属地出错: juhe could not place the number; another supplier may.
    "208502": (ErrorClass.DEFINITIVE, FailReason.NUMBER_NOT_SUPPORTED),
    "208505": ErrorClass.TRANSIENT,  # 错误的请求参数或校验值: our signing, every order
    "208506": ErrorClass.UNKNOWN,  # 订单号不存在 (from a query: never_received)
    "208507": ErrorClass.TRANSIENT,  # 账户余额不足
    "208509": ErrorClass.UNKNOWN,  # 订单号重复: usually the first try was paid
}
# ordersta's answer for an orderid juhe never accepted.
NO_SUCH_ORDER = "208506"

GAME_STATE = {
    "0": SupplierResult.pending,
    "1": SupplierResult.succeeded,
}
STATEMENT_COLUMNS = ("orderid", "sporder_id", "phoneno", "ordercash", "game_state")
STATEMENT_STATE = {"1": Outcome.SUCCEEDED, "9": Outcome.FAILED, "0": Outcome.PENDING}
# telquery names the product for one face value; any face value juhe sells will do.
LOOKUP_CARDNUM = "10"
# telquery's game_area ends with the carrier's short name: 江苏苏州电信.
CARRIER_NAMES = {"移动": "中国移动", "联通": "中国联通", "电信": "中国电信", "广电": "中国广电"}
SUCCESS_REPLY = CallbackReply(200, b"success")
REFUSED_REPLY = CallbackReply(200, b"fail")  # anything but "success" makes juhe retry


class BalanceError(Exception):
    """The balance could not be read; the message says what juhe answered."""


class LookupFailed(Exception):
    """telquery could not be asked or refused; the message says what happened."""


class JuheSettings(msgspec.Struct, forbid_unknown_fields=True):
    base_url: str = "http://op.juhe.cn"
    key_env: str = "TOPUP_JUHE_KEY"
    openid_env: str = "TOPUP_JUHE_OPENID"
    # Seconds for any one HTTP exchange, connect included.
    timeout: float = 10.0
    # Seconds for a carrier lookup (telquery): a partner is waiting for it, and without an
    # answer the number-segment table answers instead.
    lookup_timeout: float = 2.0


class JuheReply(msgspec.Struct):
    error_code: int | str
    reason: str = ""
    result: dict | None = None


class Juhe(Supplier):
    name = "juhe"
    Settings = JuheSettings
    settings: JuheSettings
    # The callback's sign, md5(key + sporder_id + orderid), covers neither ``sta`` nor a
    # time: anyone who saw one callback could resend it with the opposite outcome. So a
    # callback only has the core query the order (the base class's default, said aloud).
    authoritative_callbacks = False
    # juhe documents orderid as unique: a second onlineorder with one it has seen is
    # refused with 208509 (订单号重复), which submit reads as unknown.
    refuses_reused_reference = True

    def __init__(self, settings: JuheSettings) -> None:
        super().__init__(settings)
        self._key = secret_from_env(settings.key_env)
        self._openid = secret_from_env(settings.openid_env)
        self._http = httpx.AsyncClient(
            base_url=settings.base_url, timeout=httpx.Timeout(settings.timeout)
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def submit(self, order: UpstreamOrder) -> SupplierResult:
        if order.face_value % 100:
            return SupplierResult.failed(
                code="FACE_VALUE",
                message="juhe tops up whole yuan only",
                failover=True,
                reason=FailReason.AMOUNT_NOT_SUPPORTED,
            )
        cardnum = str(order.face_value // 100)
        payload = {
            "phoneno": order.phone_no,
            "cardnum": cardnum,
            "orderid": order.reference,
            "key": self._key,
            "sign": _md5(self._openid + self._key + order.phone_no + cardnum + order.reference),
        }
        reply = await self._exchange("POST", "/ofpay/mobile/onlineorder", data=payload)
        if isinstance(reply, SupplierResult):
            return reply
        if str(reply.error_code) != "0":
            return classify_error(self.name, ERRORS, str(reply.error_code), reply.reason)
        return _from_state(reply.result or {}, reply.reason)

    async def query(self, order: UpstreamOrder) -> SupplierResult:
        params = {"orderid": order.reference, "key": self._key}
        reply = await self._exchange("GET", "/ofpay/mobile/ordersta", params=params)
        if isinstance(reply, SupplierResult):
            # A query that went nowhere says nothing about the order; never fail over on it.
            return SupplierResult.unknown(code=reply.code, message=reply.message)
        if str(reply.error_code) == NO_SUCH_ORDER:
            return SupplierResult.never_received(code=NO_SUCH_ORDER, message=reply.reason)
        if str(reply.error_code) != "0":
            # An error on a status query is about the query, not the order.
            return SupplierResult.unknown(code=str(reply.error_code), message=reply.reason)
        return _from_state(reply.result or {}, reply.reason)

    async def balance(self) -> int:
        """``GET yue``: our account's balance (余额), signed md5(openid + key + timestamp)."""
        timestamp = str(int(time.time()))
        params = {
            "timestamp": timestamp,
            "key": self._key,
            "sign": _md5(self._openid + self._key + timestamp),
        }
        reply = await self._exchange("GET", "/ofpay/mobile/yue", params=params)
        if isinstance(reply, SupplierResult):
            raise BalanceError(f"juhe balance query failed: {reply.code} {reply.message}")
        if str(reply.error_code) != "0":
            raise BalanceError(f"juhe balance query refused: {reply.error_code} {reply.reason}")
        try:
            money = Decimal(str((reply.result or {})["money"]))
        except (KeyError, InvalidOperation) as exc:
            raise BalanceError(f"juhe balance answer without a money amount: {exc!r}") from exc
        # juhe writes three decimals ("9.990"); we keep whole fen.
        return int((money * 100).to_integral_value(ROUND_DOWN))

    async def lookup_carrier(self, phone_no: str) -> str | None:
        """``GET telquery``: the product juhe would top the number up with; its
        ``game_area`` (江苏苏州电信) ends with the carrier that serves the number now."""
        params = {"cardnum": LOOKUP_CARDNUM, "phoneno": phone_no, "key": self._key}
        reply = await self._exchange(
            "GET", "/ofpay/mobile/telquery", params=params, timeout=self.settings.lookup_timeout
        )
        if isinstance(reply, SupplierResult):
            raise LookupFailed(f"juhe telquery failed: {reply.code} {reply.message}")
        if str(reply.error_code) != "0":
            raise LookupFailed(f"juhe telquery refused: {reply.error_code} {reply.reason}")
        area = str((reply.result or {}).get("game_area", ""))
        return next((name for short, name in CARRIER_NAMES.items() if area.endswith(short)), None)

    def parse_callback(self, request: CallbackRequest) -> Callback:
        fields = dict(parse_qsl(request.body.decode("utf-8", errors="replace")))
        sporder_id, orderid = fields.get("sporder_id", ""), fields.get("orderid", "")
        expected = _md5(self._key + sporder_id + orderid)
        if not orderid or not _same_sign(fields.get("sign", ""), expected):
            log.warning("juhe callback with a bad signature for orderid %r", orderid)
            return Callback(REFUSED_REPLY)
        status = fields.get("sta")
        if status == "1":
            result = SupplierResult.succeeded(supplier_ref=sporder_id, code="1")
        elif status == "9":
            result = SupplierResult.failed(
                code="9", message=fields.get("err_msg") or "撤销", supplier_ref=sporder_id
            )
        else:
            log.warning("juhe callback for %s with unexpected sta %r", orderid, status)
            return Callback(SUCCESS_REPLY, orderid)
        return Callback(SUCCESS_REPLY, orderid, result)

    def parse_statement(self, content: bytes) -> list[StatementLine]:
        rows = read_statement_csv(content, STATEMENT_COLUMNS)
        return [
            StatementLine(
                reference=row["orderid"],
                outcome=STATEMENT_STATE.get(row["game_state"], Outcome.PENDING),
                charged=yuan_to_fen(row["ordercash"]),
                supplier_ref=row["sporder_id"],
                phone_no=row["phoneno"],
            )
            for row in rows
        ]

    async def _exchange(self, method: str, path: str, **kwargs) -> JuheReply | SupplierResult:
        """One HTTP exchange; a transport problem comes back as the result it implies.

        juhe answers errors with HTTP 200 and a code in the body, so even a 5xx is read:
        its body decides, and a body that is not juhe's JSON proves nothing."""
        response = await exchange(self._http, method, path, plugin=self.name, **kwargs)
        if isinstance(response, SupplierResult):
            return response
        try:
            return msgspec.json.decode(response.content, type=JuheReply)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return unknown_answer(response, "juhe answered something that is not its JSON")


def _from_state(result: dict, reason: str) -> SupplierResult:
    state = str(result.get("game_state", ""))
    sporder_id = result.get("sporder_id") or None
    if state == "9":
        return SupplierResult.failed(
            code="9", message=result.get("err_msg") or reason or "撤销", supplier_ref=sporder_id
        )
    make = GAME_STATE.get(state)
    if make is None:
        return SupplierResult.unknown(code=f"game_state={state!r}", message=reason)
    return make(supplier_ref=sporder_id, code=state, message=reason)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _same_sign(given: str, expected: str) -> bool:
    # As bytes: compare_digest raises on a str with non-ASCII characters, which anyone can send.
    return hmac.compare_digest(given.lower().encode(), expected.encode())


@hookimpl
def register_suppliers(register):
    register(Juhe)
