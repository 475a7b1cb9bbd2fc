"""juhe: the md5-signed form API in the style of 聚合数据 话费充值."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any
from urllib.parse import urlencode

import httpx
import msgspec
from litestar import Request, Response, Router, get, post

from service.simulator.answers import bend_submit_answer
from service.simulator.state import (
    Callback,
    Simulator,
    Status,
    Transaction,
    Verdict,
    beijing_time,
    is_mobile_number,
    is_reference,
    price_fen,
    yuan,
)

PROTOCOL = "juhe"
JSON = "application/json; charset=utf-8"
# The supplier keeps 0.3% of the face value.
PRICE_RATIO = 0.997
# The same in thousandths, so that prices are computed in whole fen, never in floats.
PRICE_PER_MILLE = round(PRICE_RATIO * 1000)
OPENING_BALANCE = 100_000.00
FACE_VALUES = range(1, 501)
FAILURE_MESSAGE = "运营商充值失败"

REASONS = {
    10001: "错误的请求KEY",
    10002: "该KEY无请求权限",
    10003: "KEY过期",
    10004: "错误的OPENID",
    10012: "请求超过次数限制",
    10014: "系统内部异常",
    10020: "接口维护",
    10021: "接口停用",
    208501: "不允许充值的手机号码及金额",
    208502: "请求手机号码归属地出错",
    208505: "错误的请求参数或校验值",
    208506: "订单号不存在",
    208507: "账户余额不足",
    208509: "订单号重复",
}
# How the faults of answers.CODED_FAULTS are answered: 系统内部异常, and a code juhe's
# documentation does not list.
CODED_FAULTS = {"busy": (10014, REASONS[10014]), "undocumented_error": (209999, "未知错误")}
GAME_STATE = {Status.PROCESSING: "0", Status.SUCCEEDED: "1", Status.FAILED: "9"}
STATEMENT_HEADER = (
    "orderid",
    "sporder_id",
    "phoneno",
    "cardnum",
    "ordercash",
    "game_state",
    "order_time",
)


class Reply(msgspec.Struct):
    reason: str
    result: Any
    error_code: int


def md5_hex(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def reply(result: Any, reason: str) -> Response:
    return Response(msgspec.json.encode(Reply(reason, result, 0)), media_type=JSON)


def refuse(error_code: int, reason: str | None = None) -> Response:
    body = Reply(reason or REASONS[error_code], None, error_code)
    # juhe answers every error with HTTP 200; only error_code tells.
    return Response(msgspec.json.encode(body), media_type=JSON)


def sporder_id(tx: Transaction) -> str:
    return f"J{tx.seq:020d}"


def order_cash(tx: Transaction) -> float:
    # Rounded in fen, so that the answers agree with the statement to the fen.
    return price_fen(tx.amount_fen, PRICE_PER_MILLE) / 100


def statement_line(tx: Transaction) -> tuple[str, ...]:
    """One line of the daily statement, in the order of ``STATEMENT_HEADER``."""
    return (
        tx.reference,
        sporder_id(tx),
        tx.phone_no,
        yuan(tx.amount_fen),
        yuan(tx.charged_fen(PRICE_PER_MILLE)),
        GAME_STATE[tx.status],
        beijing_time(tx.created_at),
    )


def _submit_error(fields: dict[str, str], sim: Simulator) -> int | None:
    creds = sim.credentials
    if fields["key"] != creds.juhe_key:
        return 10001
    if not is_reference(fields["orderid"], 8, 32) or not fields["sign"]:
        return 208505
    expected = md5_hex(
        creds.juhe_openid
        + creds.juhe_key
        + fields["phoneno"]
        + fields["cardnum"]
        + fields["orderid"]
    )
    if fields["sign"].lower() != expected:
        return 208505
    if not is_mobile_number(fields["phoneno"]):
        return 208502
    if not fields["cardnum"].isdigit() or int(fields["cardnum"]) not in FACE_VALUES:
        return 208501
    return None


@post("/onlineorder", status_code=200)
async def submit(request: Request, sim: Simulator) -> Response:
    form = await request.form()
    names = ("phoneno", "cardnum", "orderid", "key", "sign")
    fields = {name: str(form.get(name) or "").strip() for name in names}
    error = _submit_error(fields, sim)
    if error is not None:
        return refuse(error)
    verdict, tx, faults = await sim.submit(
        PROTOCOL, fields["orderid"], fields["phoneno"], int(fields["cardnum"]) * 100
    )
    if verdict is Verdict.DUPLICATE:
        answer = refuse(208509)
    elif verdict is Verdict.REFUSED:
        answer = refuse(208507)
    else:
        answer = reply(_submit_result(tx), "订单提交成功，等待充值")
    return await bend_submit_answer(faults, answer, coded_fault)


def coded_fault(fault: str) -> Response:
    return refuse(*CODED_FAULTS[fault])


def _submit_result(tx: Transaction) -> dict[str, Any]:
    face = tx.amount_fen // 100
    return {
        "cardid": f"{10000 + face}",
        "cardnum": "1",
        "ordercash": order_cash(tx),
        "cardname": f"手机话费{face}元直充",
        "sporder_id": sporder_id(tx),
        "uorderid": tx.reference,
        "game_userid": tx.phone_no,
        # Per the protocol a submit always answers 充值中, even when it settled at once.
        "game_state": "0",
    }


@get("/ordersta")
async def query(orderid: str = "", key: str = "", *, sim: Simulator) -> Response:
    if key != sim.credentials.juhe_key:
        return refuse(10001)
    tx = sim.find(PROTOCOL, orderid)
    if tx is None:
        return refuse(208506)
    result = {
        "uordercash": f"{order_cash(tx):.3f}",
        "sporder_id": sporder_id(tx),
        "game_state": GAME_STATE[tx.status],
    }
    if tx.status is Status.FAILED:
        result["err_msg"] = FAILURE_MESSAGE
    return reply(result, "查询成功")


@get("/telquery")
async def telquery(
    cardnum: str = "", phoneno: str = "", key: str = "", *, sim: Simulator
) -> Response:
    """The product juhe would use for ``cardnum`` yuan to ``phoneno``: its ``game_area``
    ends with the carrier serving the number now (a ported number's new carrier). The
    simulator does not model 归属地: every number is in 广东广州."""
    if key != sim.credentials.juhe_key:
        return refuse(10001)
    faults = sim.faults.for_phone(phoneno)
    if "slow_lookup" in faults:
        await asyncio.sleep(faults.seconds("slow_lookup"))
    carrier = sim.carrier_of(phoneno) if is_mobile_number(phoneno) else None
    if carrier is None:
        return refuse(208502)
    if not cardnum.isdigit() or int(cardnum) not in FACE_VALUES:
        return refuse(208501)
    short = carrier.removeprefix("中国")
    face = int(cardnum)
    result = {
        "cardid": f"{10000 + face}",
        "cardname": f"广东{short}话费{face}元直充",
        "inprice": f"{price_fen(face * 100, PRICE_PER_MILLE) / 100:.3f}",
        "game_area": f"广东广州{short}",
    }
    return reply(result, "查询成功")


@get("/yue")
async def balance(
    timestamp: str = "", key: str = "", sign: str = "", *, sim: Simulator
) -> Response:
    creds = sim.credentials
    if key != creds.juhe_key:
        return refuse(10001)
    if sign.lower() != md5_hex(creds.juhe_openid + creds.juhe_key + timestamp):
        return refuse(208505)
    # As a supplier's account does: the price is taken when a top-up is accepted and given
    # back if it fails. Summed in fen: adding up float prices drifts by fractions of a fen.
    spent = sum(
        price_fen(tx.amount_fen, PRICE_PER_MILLE)
        for tx in sim.transactions(PROTOCOL)
        if tx.status in (Status.PROCESSING, Status.SUCCEEDED)
    )
    return reply({"money": yuan(round(OPENING_BALANCE * 100) - spent)}, "查询成功")


def callback_for(sim: Simulator, tx: Transaction, bad_signature: bool) -> Callback | None:
    url = sim.options.juhe_callback
    if not url:
        return None
    key = sim.credentials.juhe_key + ("-wrong" if bad_signature else "")
    fields = {"sporder_id": sporder_id(tx), "orderid": tx.reference, "sta": GAME_STATE[tx.status]}
    if tx.status is Status.FAILED:
        fields["err_msg"] = FAILURE_MESSAGE
    fields["sign"] = md5_hex(key + fields["sporder_id"] + fields["orderid"])
    body = urlencode(fields).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    return Callback(url, lambda: (body, headers), _acknowledged)


def _acknowledged(response: httpx.Response) -> bool:
    return response.status_code == 200 and response.text.strip() == "success"


def router() -> Router:
    return Router(path="/ofpay/mobile", route_handlers=[submit, query, telquery, balance])
