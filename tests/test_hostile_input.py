"""Every input is answered with the envelope, never a 500, and never a traceback in the log:
multipart bodies, broken or nested JSON, repeated names, bodies at the limit, clients that
hang up halfway. Through the HTTP API of the app, served in the test's own process
(tests/inprocess.py); clients that hang up halfway need a socket, so a real service process."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import params
from service.params import MAX_BODY_BYTES
from tests.conftest import new_partner
from tests.inprocess import InProcessService
from tests.support import Partner, Service, ServiceProcess, eventually, fresh_order_no
from tests.test_conformance import CREDENTIALS
from tests.test_errors import assert_refused
from tests.test_fuzz import CALLBACK_CONFIG, juhe_sign, reloadly_sign

BOUNDARY = "topupBoundary7MA4YWxkTrZu0gW"


@pytest.fixture(scope="module")
def service(in_process: InProcessService) -> Service:
    return in_process


@pytest.fixture(scope="module")
def process_partner(service_process: ServiceProcess) -> Iterator[Partner]:
    """A partner app on the shared service process."""
    client = new_partner(service_process)
    yield client
    client.close()


@pytest.fixture
def quiet_log(service: Service) -> Iterator[None]:
    """Asserts that the test's requests logged no error and no traceback."""
    start = len(service.log())
    yield
    added = service.log()[start:]
    assert "Traceback" not in added, added
    assert "unhandled error" not in added, added


def multipart(fields: list[tuple[str, str]], boundary: str = BOUNDARY) -> bytes:
    """A multipart/form-data body as browsers and curl -F write it."""
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields
    ]
    return ("".join(parts) + f"--{boundary}--\r\n").encode()


def post(partner: Partner, path: str, body: bytes, content_type: str | None) -> httpx.Response:
    headers = {"Content-Type": content_type} if content_type is not None else {}
    return partner.http.post(path, content=body, headers=headers)


def post_multipart(partner: Partner, path: str, body: bytes, boundary: str = BOUNDARY) -> dict:
    reply = post(partner, path, body, f"multipart/form-data; boundary={boundary}")
    assert reply.status_code < 500, reply.text
    return reply.json()


# -- multipart/form-data --------------------------------------------------------------


def test_token_as_multipart_like_curl_f(partner: Partner, quiet_log: None) -> None:
    fields = [(name, value) for name, value in partner.signed({}).items()]
    files = {name: (None, value) for name, value in fields}  # what curl -F name=value sends
    reply = partner.http.post("/sign/api/token", files=files)
    assert reply.status_code == 200, reply.text
    assert reply.json()["code"] == "0", reply.json()


def test_signed_multipart_order_is_accepted_like_the_same_form(
    partner: Partner, service: Service, quiet_log: None
) -> None:
    cstm = fresh_order_no()
    params = partner.signed(partner.order_params(cstm))
    reply = post_multipart(partner, "/sign/api/产品订购", multipart(list(params.items())))
    assert reply["code"] == "0", reply
    stored = service.sql("SELECT order_no FROM orders WHERE cstm_order_no = ?", cstm)
    assert stored == [(reply["data"]["orderNo"],)]
    as_form = partner.http.post("/sign/api/order", data=params).json()
    assert as_form["code"] == "0" and as_form["data"] == reply["data"], as_form


def test_multipart_with_charset_parameters_and_a_quoted_boundary(partner: Partner) -> None:
    params = partner.signed(partner.order_params(fresh_order_no()))
    body = multipart(list(params.items()))
    content_type = f'multipart/form-data; charset=UTF-8; boundary="{BOUNDARY}"'
    reply = post(partner, "/sign/api/order", body, content_type).json()
    assert reply["code"] == "0", reply


def test_multipart_repeated_field_with_different_values_is_refused(
    partner: Partner, service: Service, quiet_log: None
) -> None:
    before = service.count_orders()
    params = partner.signed(partner.order_params(fresh_order_no()))
    fields = [*params.items(), ("phoneNo", "13900000000")]
    reply = post_multipart(partner, "/sign/api/order", multipart(fields))
    assert_refused(reply, "DUPLICATE_PARAMETER", "phoneNo")
    assert service.count_orders() == before


def test_multipart_repeated_field_with_the_same_value_is_taken_once(partner: Partner) -> None:
    params = partner.signed(partner.order_params(fresh_order_no()))
    fields = [*params.items(), ("phoneNo", params["phoneNo"])]
    assert post_multipart(partner, "/sign/api/order", multipart(fields))["code"] == "0"


def test_multipart_file_part_is_refused(partner: Partner, quiet_log: None) -> None:
    params = partner.signed({})
    files = {"appID": (None, params["appID"]), "ts": ("ts.txt", params["ts"], "text/plain")}
    reply = partner.http.post("/sign/api/token", data={"sign": params["sign"]}, files=files)
    assert reply.status_code == 200, reply.text
    assert_refused(reply.json(), "INVALID_PARAMETER", "ts", "文件")


@pytest.mark.parametrize(
    ("body", "content_type", "fragment"),
    [
        (multipart([("appID", "VALUE")]).replace(b"VALUE", b"\xff\xfe"), None, "UTF-8"),
        (multipart([("appID", "x")])[:-20], None, "multipart"),
        (b"--" + BOUNDARY.encode() + b"\r\nno headers here\r\n\r\nx", None, "multipart"),
        (b"appID=x", "multipart/form-data", "boundary"),
        (b"appID=x", "multipart/form-data; boundary=", "boundary"),
        (multipart([("a\xff", "x")]).replace("a\xff".encode(), b"a\xff"), None, "multipart"),
    ],
    ids=[
        "undecodable-part",
        "truncated",
        "no-disposition",
        "no-boundary",
        "empty-boundary",
        "undecodable-name",
    ],
)
def test_broken_multipart_is_undecodable(
    partner: Partner, quiet_log: None, body: bytes, content_type: str | None, fragment: str
) -> None:
    content_type = content_type or f"multipart/form-data; boundary={BOUNDARY}"
    reply = post(partner, "/sign/api/token", body, content_type)
    assert reply.status_code == 200, reply.text
    assert_refused(reply.json(), "UNDECODABLE_BODY", fragment)


# -- bodies at the limit ----------------------------------------------------------------


def padded_to(size: int, encode, params: dict[str, str], partner: Partner) -> bytes:
    """A signed order whose encoded body is exactly ``size`` bytes (the padding is an
    extra parameter, which is signed like any other)."""
    pad = "p" * (size - len(encode(partner.signed({**params, "pad": "p"}))) + 1)
    body = encode(partner.signed({**params, "pad": pad}))
    assert len(body) == size
    return body


ENCODINGS = {
    "form": (lambda p: str(httpx.QueryParams(p)).encode(), None),
    "json": (lambda p: json.dumps(p).encode(), "application/json"),
    "multipart": (
        lambda p: multipart(list(p.items())),
        f"multipart/form-data; boundary={BOUNDARY}",
    ),
}


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_body_of_exactly_the_limit_is_accepted_and_one_byte_more_is_413(
    partner: Partner, service: Service, encoding: str
) -> None:
    encode, content_type = ENCODINGS[encoding]
    params = partner.order_params(fresh_order_no())
    at_limit = padded_to(MAX_BODY_BYTES, encode, params, partner)
    reply = post(partner, "/sign/api/order", at_limit, content_type)
    assert reply.status_code == 200 and reply.json()["code"] == "0", reply.text

    before = service.count_orders()
    over = padded_to(MAX_BODY_BYTES + 1, encode, partner.order_params(fresh_order_no()), partner)
    reply = post(partner, "/sign/api/order", over, content_type)
    assert reply.status_code == 413, reply.text
    assert_refused(reply.json(), "UNDECODABLE_BODY", str(MAX_BODY_BYTES))
    assert service.count_orders() == before


# -- JSON ----------------------------------------------------------------------------------


def test_json_with_invalid_utf8_in_a_string(partner: Partner, quiet_log: None) -> None:
    body = json.dumps(partner.signed({})).encode().replace(b'"appID": "', b'"appID": "\xff\xfe')
    reply = post(partner, "/sign/api/token", body, "application/json")
    assert reply.status_code == 200, reply.text
    assert_refused(reply.json(), "UNDECODABLE_BODY", "UTF-8")


def test_json_nested_5000_deep_in_a_value(partner: Partner, quiet_log: None) -> None:
    deep = "[" * 5000 + "]" * 5000
    body = f'{{"appID": {deep}, "ts": "1"}}'.encode()
    reply = post(partner, "/sign/api/token", body, "application/json")
    assert reply.status_code == 200, reply.text
    assert_refused(reply.json(), "INVALID_PARAMETER", "字符串")


@pytest.mark.parametrize("deep", ["[" * 5000, '{"a":' * 5000, "[" * 5000 + "]" * 5000])
def test_json_nested_5000_deep_at_the_top(partner: Partner, quiet_log: None, deep: str) -> None:
    reply = post(partner, "/sign/api/token", deep.encode(), "application/json")
    assert reply.status_code == 200, reply.text
    assert reply.json()["errorCode"] in ("UNDECODABLE_BODY", "INVALID_PARAMETER"), reply.text


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("1.5", "ts"), ("true", "ts"), ('{"a": "b"}', "ts"), ('["1"]', "ts"), ("9" * 5000, "")],
    ids=["float", "bool", "object", "array", "huge-integer"],
)
def test_json_value_that_is_not_text_is_invalid(
    partner: Partner, quiet_log: None, value: str, fragment: str
) -> None:
    body = f'{{"appID": "{partner.app_id}", "ts": {value}, "sign": "x"}}'.encode()
    reply = post(partner, "/sign/api/token", body, "application/json")
    assert reply.status_code == 200, reply.text
    assert_refused(reply.json(), "INVALID_PARAMETER", fragment)


def with_repeat(params: dict[str, str], name: str, value: str) -> bytes:
    """The JSON object of ``params``, with ``name`` given a second time first."""
    return (json.dumps({name: value})[:-1] + ", " + json.dumps(params)[1:]).encode()


def test_json_repeated_key_with_a_different_value_is_refused(
    partner: Partner, service: Service, quiet_log: None
) -> None:
    before = service.count_orders()
    params = partner.signed(partner.order_params(fresh_order_no()))
    body = with_repeat(params, "phoneNo", "13900000000")  # the signed value comes last
    reply = post(partner, "/sign/api/order", body, "application/json").json()
    assert_refused(reply, "DUPLICATE_PARAMETER", "phoneNo")
    assert service.count_orders() == before


def test_json_repeated_key_refused_when_values_hold_escaped_quotes(partner: Partner) -> None:
    params = partner.signed(partner.order_params(fresh_order_no(), cstmOrderName='a "quoted" name'))
    body = with_repeat(params, "productId", "YD50")
    reply = post(partner, "/sign/api/order", body, "application/json").json()
    assert_refused(reply, "DUPLICATE_PARAMETER", "productId")


def test_json_repeated_key_with_the_same_value_is_taken_once(partner: Partner) -> None:
    params = partner.signed(partner.order_params(fresh_order_no()))
    body = with_repeat(params, "phoneNo", params["phoneNo"])
    assert post(partner, "/sign/api/order", body, "application/json").json()["code"] == "0"


def test_json_repeated_key_as_number_and_as_the_same_text_is_taken_once(partner: Partner) -> None:
    params = partner.signed({})
    body = (json.dumps(params)[:-1] + f', "ts": {params["ts"]}}}').encode()
    assert post(partner, "/sign/api/token", body, "application/json").json()["code"] == "0"


def test_json_with_escaped_quotes_and_no_repeat_is_accepted(partner: Partner) -> None:
    params = partner.signed(
        partner.order_params(fresh_order_no(), cstmOrderName='say "充值" \\ ok')
    )
    reply = post(partner, "/sign/api/order", json.dumps(params).encode(), "application/json")
    assert reply.json()["code"] == "0", reply.text


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "Application/JSON;charset=UTF-8", "application/x+json"],
)
def test_json_content_type_variants(partner: Partner, content_type: str) -> None:
    params = partner.signed(partner.order_params(fresh_order_no()))
    reply = post(partner, "/sign/api/order", json.dumps(params).encode(), content_type)
    assert reply.json()["code"] == "0", reply.text


def test_form_with_a_legacy_charset_parameter_is_read_as_utf8(partner: Partner) -> None:
    # Java's UrlEncodedFormEntity says ISO-8859-1 by default; the body is ASCII anyway.
    params = partner.signed({})
    body = str(httpx.QueryParams(params)).encode()
    content_type = "application/x-www-form-urlencoded; charset=ISO-8859-1"
    assert post(partner, "/sign/api/token", body, content_type).json()["code"] == "0"


# -- characters storage cannot hold, encodings that do not decode ----------------------------


@pytest.mark.parametrize("name", ["appID", "cstmOrderName"])
def test_nul_in_a_parameter_is_invalid(
    partner: Partner, service: Service, quiet_log: None, name: str
) -> None:
    before = service.count_orders()
    params = partner.order_params(fresh_order_no())
    signed = partner.signed({**params, name: f"{params.get(name, partner.app_id)}\x00x"})
    reply = partner.http.post("/sign/api/order", data=signed)
    assert reply.status_code == 200, reply.text
    assert_refused(reply.json(), "INVALID_PARAMETER", name, "NUL")
    assert service.count_orders() == before


@pytest.mark.parametrize("query", ["appID=%ff", "%e4%b8=1", "a=%c0%af"])
def test_query_string_with_invalid_percent_encoding(
    partner: Partner, quiet_log: None, query: str
) -> None:
    reply = partner.http.get(f"/sign/api/balance?{query}")
    assert reply.status_code == 200, reply.text
    assert_refused(reply.json(), "UNDECODABLE_BODY", "查询字符串")


@settings(max_examples=3000, derandomize=True, deadline=None, database=None)
@given(
    st.one_of(
        st.text(alphabet="ab=&+%; 中E4B8ADcdef09", max_size=24).map(str.encode),
        st.binary(max_size=16),
        # Any text as a client encodes it: long runs of escapes among plain characters.
        st.text(max_size=12).map(lambda text: urlencode({"k": text, text: "v"}).encode()),
    )
)
def test_form_and_query_decoding_is_the_standard_librarys(raw: bytes) -> None:
    """The partner API's own urlencoded decoder (faster, on the hot path) reads every body
    exactly as ``urllib.parse.parse_qsl`` would, and refuses exactly what it refuses."""

    def decoded(parse) -> tuple:
        try:
            return ("read", parse(raw))
        except (UnicodeDecodeError, ValueError):
            return ("refused",)

    standard = decoded(lambda r: parse_qsl(r.decode(), keep_blank_values=True, errors="strict"))
    assert decoded(params._urlencoded_pairs) == standard


# -- clients that hang up -------------------------------------------------------------------


def send_half_and_hang_up(service: ServiceProcess, path: str, body: bytes) -> None:
    """A request that announces more body than it sends, then closes the connection."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body) + 1000}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as conn:
        conn.sendall(head.encode() + body)


def wait_for_log(service: ServiceProcess, start: int, text: str, timeout: float = 10) -> str:
    """The log since ``start`` once it holds ``text``."""

    def logged() -> str:
        since = service.log()[start:]
        assert text in since, f"never logged {text!r}:\n{since}"
        return since

    return eventually(logged, timeout)


@pytest.mark.parametrize(
    "path", ["/callback/sandbox", "/callback/juhe", "/callback/nope", "/sign/api/token"]
)
def test_client_hanging_up_mid_body_is_one_info_line(
    process_partner: Partner, service_process: ServiceProcess, path: str
) -> None:
    partner, service = process_partner, service_process
    start = len(service.log())
    send_half_and_hang_up(service, path, b"sporder_id=1&orderid=2&sta=1&sign=")
    logged = wait_for_log(
        service, start, f"client disconnected before its request body arrived: POST {path}"
    )
    assert "Traceback" not in logged and "ERROR" not in logged, logged
    assert partner.http.get("/healthz").json() == {"status": "ok"}


def test_signed_order_cut_short_by_a_hang_up_is_not_accepted(
    process_partner: Partner, service_process: ServiceProcess
) -> None:
    partner, service = process_partner, service_process
    cstm = fresh_order_no()
    body = str(httpx.QueryParams(partner.signed(partner.order_params(cstm)))).encode()
    start = len(service.log())
    send_half_and_hang_up(service, "/sign/api/order", body)
    wait_for_log(service, start, "client disconnected before its request body arrived")
    assert service.sql("SELECT count(*) FROM orders WHERE cstm_order_no = ?", cstm) == [(0,)]


# -- found by tests/test_fuzz.py ------------------------------------------------------------


@pytest.mark.parametrize("digits", ["²", "①", "٣", "９"])
def test_token_of_non_ascii_digits_is_invalid(
    partner: Partner, quiet_log: None, digits: str
) -> None:
    expires, _, rest = partner.token().partition(".")
    odd = digits * len(expires) + "." + rest
    params = partner.signed({**partner.order_params(fresh_order_no()), "access_token": odd})
    reply = partner.http.post("/sign/api/order", data=params)
    assert reply.status_code == 200, reply.text
    assert_refused(reply.json(), "INVALID_TOKEN", "access_token")


def test_callbacks_with_non_ascii_signatures_or_nul_references(in_process_services) -> None:
    receiver: InProcessService = in_process_services(CALLBACK_CONFIG, env=CREDENTIALS)
    with receiver.http_client() as client:
        juhe = {"sporder_id": "S1", "orderid": "TP1A1", "sta": "1", "sign": "签名é"}
        assert client.post("/callback/juhe", data=juhe).status_code == 200
        webhook = b'{"data": {"status": "SUCCESSFUL", "customIdentifier": "TP1A1"}}'
        headers = {
            "x-reloadly-request-timestamp": "1",
            "x-reloadly-signature": "é".encode("latin-1"),
        }
        assert (
            client.post("/callback/reloadly", content=webhook, headers=headers).status_code == 401
        )

        nul = {"sporder_id": "S1", "orderid": "TP1\x00A1", "sta": "1"}
        reply = client.post("/callback/juhe", data={**nul, "sign": juhe_sign(nul)})
        assert reply.status_code < 500, reply.text
        webhook = b'{"data": {"status": "SUCCESSFUL", "customIdentifier": "TP1\\u0000A1"}}'
        headers = {
            "x-reloadly-request-timestamp": "1",
            "x-reloadly-signature": reloadly_sign(webhook, "1"),
        }
        reply = client.post("/callback/reloadly", content=webhook, headers=headers)
        assert reply.status_code < 500, reply.text
    assert "Traceback" not in receiver.log(), receiver.log()
