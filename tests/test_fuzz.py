"""Property-based fuzzing of every partner route and the supplier callback routes, through
the HTTP API of the app, served in the test's own process (tests/inprocess.py) so that a
case costs the app's work alone: whatever arrives, no 5xx, every partner-route answer is
the envelope (code "1" with a known errorCode whenever it is not "0"), and no traceback in
the service log.

Signed cases carry a valid signature (and often a valid token) of a registered partner
over hostile values, so the checks past the signature run too. Seeded and bounded: set
``TOPUP_FUZZ_EXAMPLES`` (default 150 per test and backend) to search longer, e.g.
``TOPUP_FUZZ_EXAMPLES=5000 .venv/bin/pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core.errors import ErrorCode
from core.signing import compute_sign
from tests.conftest import new_partner
from tests.inprocess import InProcessService
from tests.support import Partner
from tests.test_conformance import CREDENTIALS

EXAMPLES = int(os.environ.get("TOPUP_FUZZ_EXAMPLES", "150"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
    print_blob=True,
)

# path -> (its method, the call whose parameters it takes)
PARTNER_ROUTES = {
    "/sign/api/order": ("POST", "order"),
    "/sign/api/产品订购": ("POST", "order"),
    "/sign/api/order/status": ("GET", "status"),
    "/sign/api/订单状态查询": ("GET", "status"),
    "/sign/api/token": ("POST", "token"),
    "/sign/api/balance": ("GET", "balance"),
    "/sign/api/products": ("GET", "products"),
}
OTHER_PATHS = [
    "/healthz",
    "/",
    "/sign/api/",
    "/sign/api/nope",
    "/SIGN/API/ORDER",
    "/sign/api/order/status/x",
    "/sign/api/%ff",
    "/%00",
    "/healthz/x",
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
CALL_PARAMS = {
    "token": [],
    "order": [
        "access_token",
        "company",
        "Supplier",
        "phoneNo",
        "productId",
        "cstmOrderName",
        "cstmOrderNo",
    ],
    "status": ["access_token", "company", "Supplier", "cstmOrderNo", "orderNo"],
    "balance": ["access_token", "company"],
    "products": ["access_token", "company", "Supplier"],
}
ERROR_CODES = {str(code) for code in ErrorCode}
PAST_THE_SIGNATURE = {
    "INVALID_TOKEN",
    "EXPIRED_TOKEN",
    "COMPANY_MISMATCH",
    "UNKNOWN_SUPPLIER",
    "UNKNOWN_PRODUCT",
    "INVALID_PHONE",
    "ORDER_CONFLICT",
    "ORDER_NOT_FOUND",
    "ORDER_NO_MISMATCH",
    "SUPPLIER_MISMATCH",
}

NASTY = [
    "", " ", "\x00", "a\x00b", "²", "①", "٣", "１２３", "𝟙𝟚𝟛", "-1", "0", "1e9", "NaN", "null",
    "true", "[]", "{}", "%ff", "%00", "%", "&", "=", "\r\n", "\t", "\u202e", "\ufeff", "\\",
    '"', "' OR 1=1--", "中国移动", "中国联通", "YD10", "YD50", "13800138000", "1" * 11,
    "a" * 129, "9" * 300, "x" * 5000, "TP" + "0" * 25, "😀", "\x7f", "\u0085", "\u2028",
]  # fmt: skip
# Non-ASCII digits pass str.isdigit() but not int() everywhere: tokens made of them.
ODD_DIGITS = "²①٣９𝟙٠"

text_without_surrogates = st.text(st.characters(exclude_categories=("Cs",)), max_size=24)
hostile_text = st.one_of(
    st.sampled_from(NASTY),
    text_without_surrogates,
    st.text(alphabet="0123456789" + ODD_DIGITS + ".", max_size=16),
)
# What a client can put in a header: Latin-1 without controls, no whitespace at the ends.
header_text = (
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40)
    .filter(lambda value: "\x7f" not in value)
    .map(lambda value: value.strip(" \t"))
)


def odd_tokens(real: str) -> list[str]:
    expires, _, rest = real.partition(".")
    return [
        real,
        expires.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")) + "." + rest,
        "²" + real[1:],
        "①." + rest,
        "٣٣٣.nonce.mac",
        "９" * 10 + "." + rest,
        real[:-1],
        real + "x",
        "1.2.3",
        "9" * 120 + ".a.b",
        ".".join([expires, "", ""]),
        "...",
    ]


@dataclass
class Case:
    method: str
    path: str
    query: str
    body: bytes
    content_type: bytes | None
    signed: bool

    def __repr__(self) -> str:  # what Hypothesis prints for a failing example
        return (
            f"Case({self.method} {self.path}?{self.query[:200]} signed={self.signed} "
            f"type={self.content_type!r} body={self.body[:300]!r})"
        )


@dataclass
class Tally:
    """What the fuzzing reached, to show that signed cases pass the signature check."""

    outcomes: Counter = field(default_factory=Counter)


_order_numbers = itertools.count()


def mostly(draw: st.DrawFn, times: int = 4) -> bool:
    """True ``times`` in ``times + 1``, and in Hypothesis's simplest examples: the common
    case first, so that most cases get far into the checks."""
    return draw(st.sampled_from([True] * times + [False]))


# -- request bodies ---------------------------------------------------------------------


def form(params: dict[str, Any]) -> bytes:
    return str(httpx.QueryParams(params)).encode()


def as_number_where_possible(params: dict[str, str]) -> dict[str, Any]:
    """JSON numbers for values whose text the service gives back unchanged."""
    return {
        name: int(value)
        if value.isascii() and value.isdigit() and value == str(int(value))
        else value
        for name, value in params.items()
    }


def multipart(fields: list[tuple[str, str]], boundary: str, file_part: bool = False) -> bytes:
    parts = []
    for index, (name, value) in enumerate(fields):
        quoted = name.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
        filename = '; filename="f.txt"' if file_part and index == 0 else ""
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{quoted}"{filename}\r\n'
            f"\r\n{value}\r\n"
        )
    return ("".join(parts) + f"--{boundary}--\r\n").encode()


# Faithful kinds come twice: half the bodies carry the parameters as they were signed.
BODY_KINDS = ["form", "form", "json", "json", "json-numbers", "multipart", "multipart",
              "json-repeat", "json-nested", "json-not-text", "json-bad-utf8", "multipart-file",
              "multipart-cut", "raw"]  # fmt: skip
FORM_TYPES = [None, b"application/x-www-form-urlencoded", b"text/plain",
              b"application/x-www-form-urlencoded; charset=UTF-8",
              b"Application/X-WWW-Form-Urlencoded;charset=ISO-8859-1"]  # fmt: skip
JSON_TYPES = [b"application/json", b"application/json; charset=utf-8", b"APPLICATION/JSON",
              b"application/problem+json"]  # fmt: skip
MULTIPART_TYPES = ["multipart/form-data; boundary={}",
                   'multipart/form-data; charset=utf-8; boundary="{}"',
                   "Multipart/Form-Data;boundary={}"]  # fmt: skip
ODD_TYPES = [b"multipart/form-data", b"multipart/form-data; boundary=", b"image/png",
             b'multipart/form-data; boundary=""', b"application/json; charset=gbk",
             b"multipart/mixed; boundary=x", b"application/x-www-form-urlencoded", b";",
             b""]  # fmt: skip
# JSON text of values that are not strings (an integer past what Python prints, too).
NOT_TEXT = st.one_of(
    st.one_of(
        st.floats(allow_nan=False),
        st.booleans(),
        st.lists(st.integers(), max_size=3),
        st.integers(min_value=-(10**30), max_value=10**30),
    ).map(json.dumps),
    st.just("9" * 5000),
)


@st.composite
def body_for(draw: st.DrawFn, params: dict[str, str]) -> tuple[bytes, bytes | None]:
    """``params`` as a body of some kind, faithful or broken, and its Content-Type."""
    kind = draw(st.sampled_from(BODY_KINDS))
    if kind == "form":
        return form(params), draw(st.sampled_from(FORM_TYPES))
    if kind.startswith("json"):
        return json_body(draw, kind, params), draw(st.sampled_from(JSON_TYPES))
    if kind.startswith("multipart"):
        boundary = draw(st.sampled_from(["b0undary", "----WebKitFormBoundary7MA4YWxkTrZu0gW"]))
        content_type = draw(st.sampled_from(MULTIPART_TYPES)).format(boundary).encode()
        body = multipart(list(params.items()), boundary, kind == "multipart-file")
        if kind == "multipart-cut":
            body = body[: draw(st.integers(min_value=0, max_value=len(body)))]
        return body, content_type
    latin1 = header_text.map(lambda value: value.encode("latin-1"))
    content_type = draw(st.one_of(st.none(), st.sampled_from(ODD_TYPES), latin1))
    return draw(st.binary(max_size=400)), content_type


def json_body(draw: st.DrawFn, kind: str, params: dict[str, str]) -> bytes:
    if kind == "json":
        return json.dumps(params, ensure_ascii=draw(st.booleans())).encode()
    if kind == "json-numbers":
        return json.dumps(as_number_where_possible(params)).encode()
    if kind == "json-bad-utf8":
        document = json.dumps(params, ensure_ascii=False).encode()
        junk = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe4\xb8", b"\x80"]))
        at = draw(st.integers(min_value=0, max_value=len(document)))
        return document[:at] + junk + document[at:]
    name = draw(st.sampled_from([*params, "appID"]))
    if kind == "json-repeat":  # the repeat comes first, the signed value last
        value = draw(st.one_of(st.just(params.get(name, "")), hostile_text))
        rest = json.dumps(params)[1:]
        return (json.dumps({name: value})[:-1] + (", " if params else "") + rest).encode()
    if kind == "json-nested":
        depth = draw(st.sampled_from([1, 2, 50, 1000, 5000]))
        nested = (
            "[" * depth + "]" * depth
            if draw(st.booleans())
            else '{"a":' * depth + "1" + "}" * depth
        )
        value = nested
        if draw(st.booleans()):
            return nested.encode()  # nested at the top
    else:  # json-not-text
        value = draw(NOT_TEXT)
    return json.dumps({**params, name: "§"}).replace('"§"', value).encode()


# -- partner requests ------------------------------------------------------------------


@st.composite
def partner_cases(draw: st.DrawFn, partner: Partner, token: str) -> Case:
    path = draw(st.sampled_from([*PARTNER_ROUTES, *PARTNER_ROUTES, *OTHER_PATHS]))
    right_method, call = PARTNER_ROUTES.get(path, ("GET", "token"))
    method = right_method if mostly(draw) else draw(st.sampled_from(METHODS))
    valid = {
        "access_token": token,
        "company": partner.company,
        "Supplier": "中国移动",
        "phoneNo": "13800138000",
        "productId": "YD10",
        "cstmOrderName": "fuzz",
        "cstmOrderNo": f"fz-{time.time_ns()}-{next(_order_numbers)}",
        "orderNo": "",
    }
    names = CALL_PARAMS[call]
    params = {name: valid[name] for name in names}
    # A few parameters made odd, the rest valid, so that most signed cases get far.
    for name in draw(st.lists(st.sampled_from(names), max_size=2, unique=True)) if names else []:
        choice = draw(st.sampled_from(["hostile", "missing", "token"]))
        if choice == "token" or name == "access_token":
            params[name] = draw(st.sampled_from(odd_tokens(token)))
        elif choice == "hostile":
            params[name] = draw(hostile_text)
        else:
            del params[name]
    if not mostly(draw, 3):
        params |= draw(st.dictionaries(hostile_text, hostile_text, max_size=3))
    signed = mostly(draw, 2)
    if signed:
        params["appID"] = partner.app_id if mostly(draw, 9) else draw(hostile_text)
        params["ts"] = str(int(time.time())) if mostly(draw, 9) else draw(hostile_text)
        params.pop("sign", None)
        params["sign"] = compute_sign(params, partner.secret, partner.sign_type)
    elif draw(st.booleans()):
        params["sign"] = draw(hostile_text)
    query = ""
    if not signed or not mostly(draw, 5):
        query = draw(st.sampled_from(["", "a=%ff", "%", "a=%zz", "&&==&", "x=1&x=2", "sign="]))
    if method != "POST" or not mostly(draw, 5):
        query = "&".join(filter(None, [form(params).decode(), query]))
        return Case(method, path, query, b"", None, signed)
    body, content_type = draw(body_for(params))
    return Case(method, path, query, body, content_type, signed)


def send(client: httpx.Client, case: Case) -> httpx.Response:
    headers = {} if case.content_type is None else {"Content-Type": case.content_type}
    url = case.path + (f"?{case.query}" if case.query else "")
    return client.request(case.method, url, content=case.body, headers=headers)


def assert_envelope(case: Case, reply: httpx.Response) -> dict | None:
    assert reply.status_code < 500, f"{case!r} -> {reply.status_code} {reply.text[:500]}"
    if case.method == "HEAD" or (case.path == "/healthz" and reply.status_code == 204):
        return None  # no body: HEAD, or the framework's answer to OPTIONS /healthz
    body = reply.json()
    if case.path == "/healthz" and case.method == "GET":
        assert body == {"status": "ok"}
        return None
    assert list(body)[:5] == ["code", "message", "company", "Supplier", "data"], body
    if body["code"] == "0":
        assert "errorCode" not in body, body
    else:
        assert body["code"] == "1", body
        assert body["errorCode"] in ERROR_CODES, body
        assert body["message"] and body["data"] == "", body
        assert "Traceback" not in body["message"], body
    return body


def odd_token_cases(partner: Partner, token: str) -> list[Case]:
    """Every odd token, signed, on a route that checks it: always tried, whatever the search
    draws (a token of non-ASCII digits once made ``int()`` raise)."""
    cases = []
    for odd in odd_tokens(token):
        for path, (method, call) in [
            ("/sign/api/order", PARTNER_ROUTES["/sign/api/order"]),
            ("/sign/api/balance", PARTNER_ROUTES["/sign/api/balance"]),
        ]:
            params = {
                "access_token": odd,
                "company": partner.company,
                "Supplier": "中国移动",
                "phoneNo": "13800138000",
                "productId": "YD10",
                "cstmOrderName": "fuzz",
                "cstmOrderNo": f"fz-odd-{next(_order_numbers)}",
            }
            params = partner.signed({name: params[name] for name in CALL_PARAMS[call]})
            if method == "POST":
                cases.append(Case(method, path, "", form(params), None, signed=True))
            else:
                cases.append(Case(method, path, form(params).decode(), b"", None, signed=True))
    return cases  # fmt: skip


def test_partner_routes_answer_every_input_with_the_envelope(in_process: InProcessService) -> None:
    service = in_process
    partner = new_partner(service)
    token = partner.token()
    tally = Tally()
    log_start = len(service.log())

    def check(case: Case) -> None:
        body = assert_envelope(case, send(partner.http, case))
        if body is not None and case.signed and case.path in PARTNER_ROUTES:
            tally.outcomes[body.get("errorCode", "ok")] += 1

    always_tried = odd_token_cases(partner, token)
    for case in always_tried:
        check = example(case=case)(check)
    run = FUZZ_SETTINGS(given(case=partner_cases(partner, token))(check))
    try:
        run()
    finally:
        partner.close()
    added = service.log()[log_start:]
    assert "Traceback" not in added, added[-5000:]
    # Signed cases got past the signature: accepted, or refused by a later check.
    assert tally.outcomes["ok"] > 0, tally.outcomes
    assert set(tally.outcomes) & PAST_THE_SIGNATURE, tally.outcomes
    assert tally.outcomes["INVALID_TOKEN"] >= len(always_tried) - 2  # all but the real token


# -- supplier callbacks ----------------------------------------------------------------------

CALLBACK_CONFIG = """
enabled = ["juhe", "reloadly", "sandbox"]

[plugin.juhe]
base_url = "http://127.0.0.1:9"
timeout = 1.0

[plugin.reloadly]
base_url = "http://127.0.0.1:9"
auth_url = "http://127.0.0.1:9"
operators = { "中国移动" = 11 }
timeout = 1.0

[suppliers."中国移动"]
route = ["juhe", "reloadly"]
products = [{ product_id = "YD10", face_value = "10", price = "9.95" }]
"""
CALLBACK_PATHS = ["/callback/juhe", "/callback/reloadly", "/callback/sandbox", "/callback/nope"]


def juhe_sign(fields: dict[str, str]) -> str:
    payload = CREDENTIALS["TOPUP_JUHE_KEY"] + fields.get("sporder_id", "") + fields["orderid"]
    return hashlib.md5(payload.encode()).hexdigest()


def reloadly_sign(body: bytes, timestamp: str) -> str:
    secret = CREDENTIALS["TOPUP_RELOADLY_WEBHOOK_SECRET"].encode()
    return hmac.new(secret, body + b":" + timestamp.encode(), hashlib.sha256).hexdigest()


@st.composite
def callback_cases(draw: st.DrawFn) -> tuple[Case, dict[str, bytes]]:
    path = draw(st.sampled_from(CALLBACK_PATHS))
    if not mostly(draw, 5):
        path = "/callback/" + quote(draw(text_without_surrogates.filter(bool)), safe="")
    method = "POST" if mostly(draw, 3) else draw(st.sampled_from(METHODS))
    headers: dict[str, bytes] = {}
    kind = draw(st.sampled_from(["juhe", "reloadly", "raw"]))
    reference = draw(st.one_of(st.sampled_from(["TP" + "0" * 25 + "A1"]), hostile_text))
    if kind == "juhe":
        fields = {
            "sporder_id": draw(hostile_text),
            "orderid": reference,
            "sta": draw(st.sampled_from(["1", "9", "0", "", "x"])),
            "err_msg": draw(hostile_text),
        }
        fields["sign"] = juhe_sign(fields) if draw(st.booleans()) else draw(hostile_text)
        body, content_type = form(fields), b"application/x-www-form-urlencoded"
    elif kind == "reloadly":
        transaction = {
            "status": draw(
                st.one_of(st.sampled_from(["SUCCESSFUL", "FAILED", "PROCESSING"]), hostile_text)
            ),
            "transactionId": draw(st.one_of(st.none(), st.integers(-(2**70), 2**70), hostile_text)),
            "customIdentifier": draw(st.one_of(st.none(), st.just(reference))),
        }
        document: Any = draw(st.sampled_from([{"data": transaction, "type": "x"}, transaction, []]))
        body, content_type = json.dumps(document).encode(), b"application/json"
        if draw(st.booleans()):
            body = draw(st.sampled_from([body, b"[" * 5000, b'{"data": \xff}', body[:-1]]))
        timestamp = draw(st.one_of(st.just(str(int(time.time()))), header_text))
        headers["x-reloadly-request-timestamp"] = timestamp.encode("latin-1")
        signature = reloadly_sign(body, timestamp) if draw(st.booleans()) else draw(header_text)
        headers["x-reloadly-signature"] = signature.encode("latin-1")
    else:
        body, content_type = draw(body_for({"orderid": reference}))
    query = draw(st.sampled_from(["", "a=%ff", "%", "orderid=%00", "x=1&x=2"]))
    return Case(method, path, query, body, content_type, kind != "raw"), headers


def test_callback_routes_never_answer_5xx(in_process_services) -> None:
    receiver: InProcessService = in_process_services(CALLBACK_CONFIG, env=CREDENTIALS)
    client = receiver.http_client()

    @FUZZ_SETTINGS
    @given(drawn=callback_cases())
    def run(drawn: tuple[Case, dict[str, bytes]]) -> None:
        case, headers = drawn
        if case.content_type is not None:
            headers = {**headers, "Content-Type": case.content_type}
        url = case.path + (f"?{case.query}" if case.query else "")
        reply = client.request(case.method, url, content=case.body, headers=headers)
        assert reply.status_code < 500, f"{case!r} -> {reply.status_code} {reply.text[:500]}"

    try:
        run()
    finally:
        client.close()
    assert "Traceback" not in receiver.log(), receiver.log()[-5000:]
