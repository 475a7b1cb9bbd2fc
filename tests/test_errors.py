"""Every refusal: the seed's envelope, code "1", its own errorCode, a message that says
what is wrong, and nothing written. No rule here needs a real process: the app is served
in the test's own process (tests/inprocess.py)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

from core import writer
from core.tokens import TokenIssuer
from tests.conftest import TOKEN_SECRET
from tests.inprocess import InProcessService
from tests.support import Partner, Service, fresh_order_no


@pytest.fixture(scope="module")
def service(in_process: InProcessService) -> Service:
    return in_process


@pytest.fixture
def unchanged(service: Service) -> Iterator[None]:
    """Asserts that the test wrote no order."""
    before = service.count_orders()
    yield
    assert service.count_orders() == before


def post_order(partner: Partner, params: dict[str, str]) -> dict:
    return partner.http.post("/sign/api/order", data=params).json()


def assert_refused(reply: dict, error_code: str, *fragments: str) -> None:
    assert reply["code"] == "1", reply
    assert reply["errorCode"] == error_code, reply
    assert reply["data"] == ""
    for fragment in fragments:
        assert fragment in reply["message"], reply
    assert "Traceback" not in reply["message"]


@pytest.mark.parametrize("name", ["phoneNo", "productId", "cstmOrderNo", "company", "ts"])
def test_missing_parameter_is_named(partner: Partner, unchanged: None, name: str) -> None:
    params = partner.order_params(fresh_order_no())
    params.pop(name, None)
    signed = partner.signed(params)
    signed.pop(name, None)
    assert_refused(post_order(partner, signed), "MISSING_PARAMETER", name)


def test_empty_parameter_counts_as_missing(partner: Partner, unchanged: None) -> None:
    signed = partner.signed(partner.order_params(fresh_order_no(), cstmOrderName=""))
    signed["cstmOrderName"] = ""
    assert_refused(post_order(partner, signed), "MISSING_PARAMETER", "cstmOrderName")


def test_several_missing_parameters_are_all_named(partner: Partner, unchanged: None) -> None:
    reply = partner.http.post("/sign/api/order", data={"appID": partner.app_id}).json()
    assert_refused(reply, "MISSING_PARAMETER", "access_token", "phoneNo", "sign", "ts")


def test_unknown_app(partner: Partner, unchanged: None) -> None:
    params = partner.signed({**partner.order_params(fresh_order_no()), "appID": "nobody"})
    assert_refused(post_order(partner, params), "UNKNOWN_APP", "nobody")


def test_bad_signature(partner: Partner, unchanged: None) -> None:
    params = partner.signed(partner.order_params(fresh_order_no()), secret="not-the-secret")
    assert_refused(post_order(partner, params), "BAD_SIGNATURE", "签名")


def test_parameters_changed_after_signing(partner: Partner, unchanged: None) -> None:
    params = partner.signed(partner.order_params(fresh_order_no()))
    params["phoneNo"] = "13900000000"
    assert_refused(post_order(partner, params), "BAD_SIGNATURE")


@pytest.mark.parametrize("ts", ["yesterday", "17e9", "-1700000000", "1.7e9"])
def test_malformed_ts(partner: Partner, unchanged: None, ts: str) -> None:
    params = partner.signed({**partner.order_params(fresh_order_no()), "ts": ts})
    assert_refused(post_order(partner, params), "MALFORMED_TIMESTAMP", "ts")


@pytest.mark.parametrize("offset", [-301, 301, -86400])
def test_stale_ts(partner: Partner, unchanged: None, offset: int) -> None:
    ts = str(int(time.time()) + offset)
    params = partner.signed({**partner.order_params(fresh_order_no()), "ts": ts})
    assert_refused(post_order(partner, params), "STALE_TIMESTAMP", "300")


def test_forged_token(partner: Partner, unchanged: None) -> None:
    params = partner.order_params(fresh_order_no())
    params["access_token"] = "1999999999.abcdef.0123456789abcdef0123456789abcdef01234567"
    assert_refused(post_order(partner, partner.signed(params)), "INVALID_TOKEN")


def test_garbage_token(partner: Partner, unchanged: None) -> None:
    params = {**partner.order_params(fresh_order_no()), "access_token": "garbage"}
    assert_refused(post_order(partner, partner.signed(params)), "INVALID_TOKEN")


def test_token_of_another_app(service: Service, partner: Partner, unchanged: None) -> None:
    from tests.conftest import new_partner

    other = new_partner(service)
    params = {**partner.order_params(fresh_order_no()), "access_token": other.token()}
    assert_refused(post_order(partner, partner.signed(params)), "INVALID_TOKEN")


def test_expired_token(partner: Partner, unchanged: None) -> None:
    # The test service's token key is known here, so a token from three hours ago can be made.
    issuer = TokenIssuer(TOKEN_SECRET.encode())
    old = issuer.issue(partner.app_id, partner.secret, int(time.time()) - 3 * 3600, "f" * 64)
    params = {**partner.order_params(fresh_order_no()), "access_token": old}
    assert_refused(post_order(partner, partner.signed(params)), "EXPIRED_TOKEN", "过期")


def test_company_mismatch(partner: Partner, unchanged: None) -> None:
    params = {**partner.order_params(fresh_order_no()), "company": "别的公司"}
    assert_refused(post_order(partner, partner.signed(params)), "COMPANY_MISMATCH", "别的公司")


def test_unknown_supplier(partner: Partner, unchanged: None) -> None:
    params = {**partner.order_params(fresh_order_no()), "Supplier": "中国铁通"}
    assert_refused(post_order(partner, partner.signed(params)), "UNKNOWN_SUPPLIER", "中国铁通")


def test_unknown_product(partner: Partner, unchanged: None) -> None:
    params = {**partner.order_params(fresh_order_no()), "productId": "YD999"}
    assert_refused(post_order(partner, partner.signed(params)), "UNKNOWN_PRODUCT", "YD999")


@pytest.mark.parametrize(
    "phone",
    ["1380013800", "138001380001", "23800138000", "12800138000", "1380013800a", "+8613800138000"],
)
def test_malformed_phone(partner: Partner, unchanged: None, phone: str) -> None:
    params = partner.signed(partner.order_params(fresh_order_no(), phone=phone))
    assert_refused(post_order(partner, params), "INVALID_PHONE", phone)


def test_body_not_json(partner: Partner, unchanged: None) -> None:
    reply = partner.http.post(
        "/sign/api/order", content=b"{not json", headers={"content-type": "application/json"}
    ).json()
    assert_refused(reply, "UNDECODABLE_BODY", "JSON")


def test_json_that_is_not_an_object(partner: Partner, unchanged: None) -> None:
    reply = partner.http.post("/sign/api/order", json=["appID", "x"]).json()
    assert_refused(reply, "UNDECODABLE_BODY", "JSON")


def test_form_body_not_utf8(partner: Partner, unchanged: None) -> None:
    reply = partner.http.post(
        "/sign/api/order",
        content="company=彩生活".encode("gbk"),
        headers={"content-type": "application/x-www-form-urlencoded"},
    ).json()
    assert_refused(reply, "UNDECODABLE_BODY", "UTF-8")


def test_unsupported_content_type(partner: Partner, unchanged: None) -> None:
    reply = partner.http.post(
        "/sign/api/order", content=b"<xml/>", headers={"content-type": "application/xml"}
    ).json()
    assert_refused(reply, "UNDECODABLE_BODY", "application/xml")


def test_json_value_that_is_not_a_string(partner: Partner, unchanged: None) -> None:
    params = partner.signed(partner.order_params(fresh_order_no()))
    reply = partner.http.post("/sign/api/order", json={**params, "phoneNo": ["13800138000"]})
    assert_refused(reply.json(), "INVALID_PARAMETER", "phoneNo")


def test_overlong_parameter(partner: Partner, unchanged: None) -> None:
    params = partner.signed(partner.order_params("x" * 65))
    assert_refused(post_order(partner, params), "INVALID_PARAMETER", "cstmOrderNo")


def test_duplicate_parameter_with_different_values(partner: Partner, unchanged: None) -> None:
    params = partner.signed(partner.order_params(fresh_order_no()))
    body = "&".join(f"{k}={v}" for k, v in params.items()) + "&phoneNo=13900139000"
    reply = partner.http.post(
        "/sign/api/order",
        content=body.encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    ).json()
    assert_refused(reply, "DUPLICATE_PARAMETER", "phoneNo")


def test_unknown_path(partner: Partner) -> None:
    response = partner.http.get("/sign/api/nothing-here")
    assert response.status_code == 404
    assert_refused(response.json(), "NOT_FOUND", "/sign/api/nothing-here")


def test_wrong_method(partner: Partner) -> None:
    response = partner.http.get("/sign/api/order")
    assert response.status_code == 405
    assert_refused(response.json(), "METHOD_NOT_ALLOWED", "GET")


@pytest.mark.parametrize(
    "path", ["/sign/api/order/status", "/sign/api/订单状态查询", "/sign/api/order/status/"]
)
def test_a_bug_answers_the_envelope_and_logs_the_trace(
    service: InProcessService, partner: Partner, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    # The exact paths are served past Litestar's router, the one with a slash through it:
    # both must answer a bug the same way.
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug planted by the test")

    monkeypatch.setattr(service.services.desk, "order_status", broken)
    params = partner.signed(partner.base(Supplier="中国移动", cstmOrderNo=fresh_order_no()))
    response = partner.http.get(path, params=params)
    assert response.status_code == 500
    assert_refused(response.json(), "INTERNAL_ERROR", "cstmOrderNo")
    assert "a bug planted" not in response.text
    assert "RuntimeError: a bug planted by the test" in service.log()


def test_oversized_body(partner: Partner, unchanged: None) -> None:
    response = partner.http.post("/sign/api/order", data={"x": "y" * 100_000})
    assert response.status_code == 413
    assert_refused(response.json(), "UNDECODABLE_BODY")


def test_refusal_echoes_company_and_supplier(partner: Partner) -> None:
    params = {**partner.order_params(fresh_order_no()), "productId": "nope"}
    reply = post_order(partner, partner.signed(params))
    assert list(reply) == ["code", "message", "company", "Supplier", "data", "errorCode"]
    assert reply["company"] == partner.company and reply["Supplier"] == "中国移动"


def test_storage_busy_past_the_writers_wait_is_503_and_nothing_written(
    service: InProcessService, partner: Partner, unchanged: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds SQLite's write lock for longer than the writer waits (30 s in
    service; a fraction of a second here): the partner hears that nothing was accepted and
    to send the same order again, never an internal error."""
    if not service.database_url.startswith("sqlite"):
        pytest.skip("SQLite's write lock")
    monkeypatch.setattr(writer, "BUSY_SECONDS", 0.3)
    other = sqlite3.connect(make_url(service.database_url).database, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        response = partner.http.post(
            "/sign/api/order", data=partner.signed(partner.order_params(fresh_order_no()))
        )
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert response.status_code == 503
    assert_refused(response.json(), "SERVICE_UNAVAILABLE", "cstmOrderNo", "重试")
