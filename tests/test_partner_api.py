"""The partner contract, through the HTTP API of the app. No rule here needs a real
process: the app is served in the test's own process (tests/inprocess.py), with the
dispatcher running only for the tests that wait for an order to settle."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import TOKEN_SECRET, new_partner
from tests.inprocess import InProcessService
from tests.support import Backend, Partner, Service, fresh_order_no, sandbox_config

ORDER_NO = re.compile(r"TP\d{25}")
ORDER_ID = re.compile(r"Y[0-9a-f]{29}")


@pytest.fixture(scope="module")
def service(in_process: InProcessService) -> Service:
    return in_process


@pytest.fixture(scope="module")
def settling(
    tmp_path_factory: pytest.TempPathFactory, backend: Backend
) -> Iterator[InProcessService]:
    """The app with its dispatcher running, for the tests that need an order to settle."""
    app = InProcessService(
        tmp_path_factory.mktemp(f"settling-{backend.name}"),
        sandbox_config(),
        env={"TOPUP_TOKEN_SECRET": TOKEN_SECRET},
        backend=backend,
        background=True,
    )
    app.start()
    yield app
    app.stop()
    app.drop_database()


def test_token_is_issued_for_a_signed_request(partner: Partner) -> None:
    reply = partner.http.post("/sign/api/token", data=partner.signed({})).json()
    assert reply["code"] == "0" and reply["message"] == "成功"
    assert reply["data"]["expires_in"] == 7200
    assert reply["data"]["access_token"]


def test_order_is_acknowledged_in_the_seed_shape(partner: Partner) -> None:
    cstm = fresh_order_no()
    reply = partner.order(cstm)
    assert list(reply) == ["code", "message", "company", "Supplier", "data"]
    assert reply["code"] == "0"
    assert reply["message"] == "成功"
    assert reply["company"] == partner.company
    assert reply["Supplier"] == "中国移动"
    assert list(reply["data"]) == ["orderNo", "cstmOrderNo", "status", "orderId"]
    assert ORDER_NO.fullmatch(reply["data"]["orderNo"])
    assert ORDER_ID.fullmatch(reply["data"]["orderId"])
    assert reply["data"]["cstmOrderNo"] == cstm
    assert reply["data"]["status"] == "0"


def test_each_order_has_its_own_order_id_carrying_its_order_no(partner: Partner) -> None:
    """orderId is unique because orderNo is (no index checks it: migration 0010): its
    first 21 hex digits are the order number's digits."""
    replies = [partner.order(fresh_order_no())["data"] for _ in range(20)]
    assert len({reply["orderId"] for reply in replies}) == 20
    for reply in replies:
        assert int(reply["orderId"][1:22], 16) == int(reply["orderNo"][2:])


def test_order_at_the_seed_path_with_json_body(partner: Partner) -> None:
    cstm = fresh_order_no()
    params = partner.signed(partner.order_params(cstm))
    reply = partner.http.post("/sign/api/产品订购", json=params).json()
    assert reply["code"] == "0", reply
    status = partner.http.get(
        "/sign/api/订单状态查询",
        params=partner.signed(partner.base(Supplier="中国移动", cstmOrderNo=cstm)),
    ).json()
    assert status["code"] == "0", status
    assert status["data"]["orderNo"] == reply["data"]["orderNo"]


def test_json_numbers_are_taken_as_their_text(partner: Partner) -> None:
    params = partner.signed(partner.order_params(fresh_order_no()))
    body = {**params, "ts": int(params["ts"])}
    reply = partner.http.post("/sign/api/order", json=body).json()
    assert reply["code"] == "0", reply


def test_ts_in_milliseconds_is_accepted(partner: Partner) -> None:
    params = partner.order_params(fresh_order_no(), ts=str(int(time.time() * 1000)))
    reply = partner.http.post("/sign/api/order", data=partner.signed(params)).json()
    assert reply["code"] == "0", reply


def test_status_reports_the_order_and_its_times(settling: InProcessService) -> None:
    partner = new_partner(settling)
    cstm = fresh_order_no()
    placed = partner.order(cstm, phone="13912345678")["data"]
    reply = partner.wait_status(cstm, {"2"})
    data = reply["data"]
    assert reply["company"] == partner.company and reply["Supplier"] == "中国移动"
    assert data["orderNo"] == placed["orderNo"]
    assert data["orderId"] == placed["orderId"]
    assert data["cstmOrderNo"] == cstm
    assert data["phoneNo"] == "13912345678"
    assert data["productId"] == "YD10"
    assert data["statusDesc"] == "充值成功"
    assert data["faceValue"] == "10.00" and data["price"] == "9.95"
    for field in ("createTime", "updateTime", "finishTime"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", data[field]), data


def test_status_with_matching_order_no(partner: Partner) -> None:
    cstm = fresh_order_no()
    order_no = partner.order(cstm)["data"]["orderNo"]
    assert partner.status(cstm, orderNo=order_no)["code"] == "0"
    reply = partner.status(cstm, orderNo="TP0000")
    assert reply["code"] == "1" and reply["errorCode"] == "ORDER_NO_MISMATCH"


def test_status_of_unknown_order(partner: Partner) -> None:
    reply = partner.status("never-placed")
    assert reply["code"] == "1" and reply["errorCode"] == "ORDER_NOT_FOUND"
    assert "never-placed" in reply["message"]


def test_status_with_another_supplier_is_refused(partner: Partner) -> None:
    cstm = fresh_order_no()
    partner.order(cstm)
    reply = partner.status(cstm, supplier="中国联通")
    assert reply["errorCode"] == "SUPPLIER_MISMATCH"


def test_an_app_sees_only_its_own_orders(service: Service, partner: Partner) -> None:
    cstm = fresh_order_no()
    assert partner.order(cstm)["code"] == "0"
    other = new_partner(service)
    reply = other.status(cstm)
    assert reply["code"] == "1" and reply["errorCode"] == "ORDER_NOT_FOUND"


def test_repeat_returns_the_original_and_creates_nothing(
    service: Service, partner: Partner
) -> None:
    cstm = fresh_order_no()
    first = partner.order(cstm)
    before = service.count_orders()
    again = partner.order(cstm)
    assert again["code"] == "0"
    assert again["data"] == first["data"]
    assert service.count_orders() == before


def test_same_cstm_order_no_with_other_details_is_refused(
    service: Service, partner: Partner
) -> None:
    cstm = fresh_order_no()
    original = partner.order(cstm, phone="13800138000")["data"]
    before = service.count_orders()
    for changed in (
        partner.order_params(cstm, phone="13900139000"),
        {**partner.order_params(cstm), "productId": "YD50"},
        {**partner.order_params(cstm), "Supplier": "中国联通", "productId": "LT10"},
    ):
        reply = partner.http.post("/sign/api/order", data=partner.signed(changed)).json()
        assert reply["code"] == "1" and reply["errorCode"] == "ORDER_CONFLICT", reply
        assert cstm in reply["message"]
    assert service.count_orders() == before
    data = partner.status(cstm)["data"]
    assert (data["orderNo"], data["phoneNo"], data["productId"]) == (
        original["orderNo"],
        "13800138000",
        "YD10",
    )


def test_fifty_concurrent_identical_orders_make_one(service: Service, partner: Partner) -> None:
    cstm = fresh_order_no()
    params = partner.signed(partner.order_params(cstm))
    before = service.count_orders()

    clients = [service.http_client(timeout=30) for _ in range(50)]

    def send(client) -> dict:
        return client.post("/sign/api/order", data=params).json()

    with ThreadPoolExecutor(max_workers=50) as pool:
        replies = list(pool.map(send, clients))
    assert all(r["code"] == "0" for r in replies), [r for r in replies if r["code"] != "0"]
    assert len({r["data"]["orderNo"] for r in replies}) == 1
    assert service.count_orders() == before + 1
    rows = service.sql("SELECT count(*) FROM orders WHERE cstm_order_no = ?", cstm)
    assert rows == [(1,)]


def test_products_of_a_supplier(partner: Partner) -> None:
    params = partner.signed(partner.base(Supplier="中国移动"))
    reply = partner.http.get("/sign/api/products", params=params).json()
    assert reply["code"] == "0", reply
    assert reply["data"]["products"] == [
        {"productId": "YD10", "productName": "移动10元", "faceValue": "10.00", "price": "9.95"},
        {"productId": "YD50", "productName": "移动50元", "faceValue": "50.00", "price": "49.75"},
    ]


def test_md5_legacy_app_places_and_queries(settling: InProcessService) -> None:
    legacy = new_partner(settling, sign_type="md5")
    cstm = fresh_order_no()
    params = legacy.signed(legacy.order_params(cstm))
    assert re.fullmatch(r"[0-9A-F]{32}", params["sign"])
    assert legacy.http.post("/sign/api/order", data=params).json()["code"] == "0"
    assert legacy.wait_status(cstm, {"2"})["data"]["status"] == "2"


def test_signature_is_case_insensitive(partner: Partner) -> None:
    params = partner.signed(partner.order_params(fresh_order_no()))
    params["sign"] = params["sign"].upper()
    assert partner.http.post("/sign/api/order", data=params).json()["code"] == "0"
