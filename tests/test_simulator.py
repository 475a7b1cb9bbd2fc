"""The supplier simulator (``topup simulate``), driven from outside as each supplier's client.

Every signature here is computed from docs/supplier-protocols.md, not with the simulator's
own helpers, so a drift between the two shows up as a failure.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from tests.support import eventually
from topup import _lifeline as lifeline

REPO = Path(__file__).resolve().parent.parent

CREDENTIALS = {
    "TOPUP_JUHE_KEY": "test-juhe-key",
    "TOPUP_JUHE_OPENID": "test-juhe-openid",
    "TOPUP_RELOADLY_CLIENT_ID": "test-reloadly-id",
    "TOPUP_RELOADLY_CLIENT_SECRET": "test-reloadly-secret",
    "TOPUP_RELOADLY_WEBHOOK_SECRET": "test-reloadly-webhook-secret",
    "TOPUP_ACME_API_KEY": "test-acme-key",
}
SETTLE = 0.2
CALLBACK_INTERVAL = 0.2
CALLBACK_RETRIES = 3
_phones = itertools.count(1)


def new_phone(last_digit: str = "1") -> str:
    """A number no other test uses, so that per-number faults never leak between tests."""
    return f"139{next(_phones):07d}{last_digit}"


def new_reference() -> str:
    return f"TP{uuid.uuid4().hex[:24].upper()}A1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def md5_hex(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def hmac_hex(key: str, message: bytes) -> str:
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


# -- the simulator process ----------------------------------------------------------------------


class SimulatorProcess:
    """``python -m service.simulator.cli`` in its own process group."""

    def __init__(self, log_path: Path, args: list[str], env: dict[str, str]) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.args = ["--port", str(self.port), *args]
        self.env = {**env, "PYTHONPATH": str(REPO)}
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=5.0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SimulatorProcess:
        code = lifeline.command("from service.simulator.cli import simulate; simulate()")
        command = [sys.executable, "-c", code, str(os.getpid()), *self.args]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command, env=self.env, cwd=REPO, stdout=log, stderr=log, start_new_session=True
            )
        eventually(self._healthy, 30, what=f"the simulator ready; its log:\n{self.log()}")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"simulator exited early:\n{self.log()}")
        try:
            return self.http.get("/_sim/health", timeout=1).json() == {"status": "ok"}
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        self.http.close()
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, count: int = 1) -> None:
        """Until the simulator logged ``text`` ``count`` times: the event after which it sends
        nothing more about a transaction (a callback lost, acknowledged, or given up)."""
        eventually(lambda: self.log().count(text) >= count, what=f"{text!r} logged {count}x")

    def add_fault(self, phone_no: str, fault: str, seconds: float | None = None) -> None:
        body: dict[str, Any] = {"phone_no": phone_no, "fault": fault}
        if seconds is not None:
            body["seconds"] = seconds
        response = self.http.post("/_sim/faults", json=body)
        assert response.status_code == 200, response.text

    def clear_faults(self) -> None:
        self.http.delete("/_sim/faults").raise_for_status()

    def transaction(self, protocol: str, reference: str) -> dict[str, Any] | None:
        listed = self.http.get("/_sim/transactions").json()
        found = [t for t in listed if (t["protocol"], t["reference"]) == (protocol, reference)]
        return found[0] if found else None


# -- a callback receiver ------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Records every callback; answers wrongly as often as told for a given reference."""

    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def refuse(self, reference: str, times: int) -> None:
        with self.lock:
            self.refusals[reference] = times

    def for_reference(self, path: str, reference: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path and reference.encode() in r.body]

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        with self.lock:
            self.received.append(Received(path, headers, body, time.monotonic()))
            for reference, left in self.refusals.items():
                if left and reference.encode() in body:
                    self.refusals[reference] = left - 1
                    # juhe only accepts the text "success"; the others want any 2xx.
                    return (200, b"fail") if path == "/juhe" else (500, b"busy")
        return 200, b"success" if path == "/juhe" else b"ok"

    def serve(self) -> ThreadingHTTPServer:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, reply = receiver.answer(self.path, headers, body)
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


# -- clients of each protocol -------------------------------------------------------------------

NEUTRAL = {
    "juhe": {"0": "processing", "1": "succeeded", "9": "failed"},
    "reloadly": {"PROCESSING": "processing", "SUCCESSFUL": "succeeded", "FAILED": "failed"},
    "acme": {"accepted": "processing", "succeeded": "succeeded", "failed": "failed"},
}


class Juhe:
    name = "juhe"
    path = "/juhe"

    def __init__(self, sim: SimulatorProcess, receiver: Receiver, creds: dict[str, str]) -> None:
        self.sim, self.receiver = sim, receiver
        self.key, self.openid = creds["TOPUP_JUHE_KEY"], creds["TOPUP_JUHE_OPENID"]

    def submit(
        self, phone: str, reference: str, timeout: float = 5.0, amount_fen: int = 1000
    ) -> httpx.Response:
        cardnum = str(amount_fen // 100)
        form = {
            "phoneno": phone,
            "cardnum": cardnum,
            "orderid": reference,
            "key": self.key,
            "sign": md5_hex(self.openid + self.key + phone + cardnum + reference),
        }
        return self.sim.http.post("/ofpay/mobile/onlineorder", data=form, timeout=timeout)

    def query(self, reference: str) -> dict[str, Any]:
        params = {"orderid": reference, "key": self.key}
        return self.sim.http.get("/ofpay/mobile/ordersta", params=params).json()

    def accepted(self, response: httpx.Response) -> bool:
        body = response.json()
        return body["error_code"] == 0 and body["result"]["game_state"] == "0"

    def refused_for_balance(self, response: httpx.Response) -> bool:
        return response.status_code == 200 and response.json()["error_code"] == 208507

    def duplicate(self, response: httpx.Response) -> bool:
        return response.status_code == 200 and response.json()["error_code"] == 208509

    def status(self, reference: str) -> str | None:
        body = self.query(reference)
        if body["error_code"] == 208506:
            return None
        return NEUTRAL[self.name][body["result"]["game_state"]]

    def callbacks(self, reference: str) -> list[Received]:
        return self.receiver.for_reference(self.path, reference)

    def callback_status(self, callback: Received) -> str:
        return NEUTRAL[self.name][callback.form()["sta"]]

    def signature_ok(self, callback: Received) -> bool:
        form = callback.form()
        return form["sign"] == md5_hex(self.key + form["sporder_id"] + form["orderid"])


class Reloadly:
    name = "reloadly"
    path = "/reloadly"

    def __init__(self, sim: SimulatorProcess, receiver: Receiver, creds: dict[str, str]) -> None:
        self.sim, self.receiver = sim, receiver
        self.client_id = creds["TOPUP_RELOADLY_CLIENT_ID"]
        self.client_secret = creds["TOPUP_RELOADLY_CLIENT_SECRET"]
        self.webhook_secret = creds["TOPUP_RELOADLY_WEBHOOK_SECRET"]
        self.token = ""

    def fetch_token(self, secret: str | None = None) -> httpx.Response:
        body = {
            "client_id": self.client_id,
            "client_secret": secret or self.client_secret,
            "grant_type": "client_credentials",
            "audience": self.sim.url,
        }
        response = self.sim.http.post("/oauth/token", json=body)
        if response.status_code == 200:
            self.token = response.json()["access_token"]
        return response

    def headers(self) -> dict[str, str]:
        if not self.token:
            self.fetch_token()
        return {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/com.reloadly.topups-v1+json",
        }

    def submit(
        self, phone: str, reference: str, timeout: float = 5.0, amount_fen: int = 1000
    ) -> httpx.Response:
        body = {
            "operatorId": 1,
            # Whole yuan go out as an integer, as they always have.
            "amount": amount_fen // 100 if amount_fen % 100 == 0 else amount_fen / 100,
            "useLocalAmount": True,
            "customIdentifier": reference,
            "recipientPhone": {"countryCode": "CN", "number": phone},
        }
        return self.sim.http.post("/topups", json=body, headers=self.headers(), timeout=timeout)

    def report(self, reference: str) -> dict[str, Any]:
        params = {"customIdentifier": reference}
        return self.sim.http.get(
            "/topups/reports/transactions", params=params, headers=self.headers()
        ).json()

    def accepted(self, response: httpx.Response) -> bool:
        return response.status_code == 200 and response.json()["status"] == "PROCESSING"

    def refused_for_balance(self, response: httpx.Response) -> bool:
        return response.json()["errorCode"] == "INSUFFICIENT_BALANCE"

    def duplicate(self, response: httpx.Response) -> bool:
        return response.json()["errorCode"] == "DUPLICATED_CUSTOM_IDENTIFIER"

    def status(self, reference: str) -> str | None:
        content = self.report(reference)["content"]
        return NEUTRAL[self.name][content[0]["status"]] if content else None

    def callbacks(self, reference: str) -> list[Received]:
        return self.receiver.for_reference(self.path, reference)

    def callback_status(self, callback: Received) -> str:
        return NEUTRAL[self.name][callback.json()["data"]["status"]]

    def signature_ok(self, callback: Received) -> bool:
        stamp = callback.headers["x-reloadly-request-timestamp"]
        expected = hmac_hex(self.webhook_secret, callback.body + b":" + stamp.encode())
        return callback.headers["x-reloadly-signature"] == expected


class Acme:
    name = "acme"
    path = "/acme"

    def __init__(self, sim: SimulatorProcess, receiver: Receiver, creds: dict[str, str]) -> None:
        self.sim, self.receiver = sim, receiver
        self.api_key = creds["TOPUP_ACME_API_KEY"]

    def submit(
        self, phone: str, reference: str, timeout: float = 5.0, amount_fen: int = 1000
    ) -> httpx.Response:
        body = {
            "reference": reference,
            "msisdn": phone,
            "amount": amount_fen,
            "carrier": "中国移动",
            "callback_url": self.receiver.url + self.path,
        }
        headers = {"X-Api-Key": self.api_key}
        return self.sim.http.post("/acme/v1/topups", json=body, headers=headers, timeout=timeout)

    def query(self, reference: str) -> httpx.Response:
        return self.sim.http.get(
            f"/acme/v1/topups/{reference}", headers={"X-Api-Key": self.api_key}
        )

    def accepted(self, response: httpx.Response) -> bool:
        return response.status_code == 200 and response.json()["status"] == "accepted"

    def refused_for_balance(self, response: httpx.Response) -> bool:
        return response.status_code == 402 and response.json() == {"error": "INSUFFICIENT_FUNDS"}

    def duplicate(self, response: httpx.Response) -> bool:
        return response.status_code == 409 and response.json() == {"error": "DUPLICATE_REFERENCE"}

    def status(self, reference: str) -> str | None:
        response = self.query(reference)
        if response.status_code == 404:
            assert response.json() == {"error": "NOT_FOUND"}
            return None
        return NEUTRAL[self.name][response.json()["status"]]

    def callbacks(self, reference: str) -> list[Received]:
        return self.receiver.for_reference(self.path, reference)

    def callback_status(self, callback: Received) -> str:
        return NEUTRAL[self.name][callback.json()["status"]]

    def signature_ok(self, callback: Received) -> bool:
        return callback.headers["x-acme-signature"] == hmac_hex(self.api_key, callback.body)


Client = Juhe | Reloadly | Acme
PROTOCOLS = {"juhe": Juhe, "reloadly": Reloadly, "acme": Acme}


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    server = receiver.serve()
    yield receiver
    server.shutdown()
    server.server_close()


def start_simulator(
    tmp_path: Path, args: list[str], credentials: dict[str, str] | None = CREDENTIALS
) -> SimulatorProcess:
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIALS}
    env |= credentials or {}
    return SimulatorProcess(tmp_path / "simulator.log", args, env).start()


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[SimulatorProcess]:
    args = [
        *("--settle", str(SETTLE)),
        *("--callback-interval", str(CALLBACK_INTERVAL)),
        *("--callback-retries", str(CALLBACK_RETRIES)),
        *("--juhe-callback", receiver.url + "/juhe"),
        *("--reloadly-webhook", receiver.url + "/reloadly"),
    ]
    process = start_simulator(tmp_path_factory.mktemp("sim"), args)
    yield process
    process.stop()


@pytest.fixture
def faults(sim: SimulatorProcess) -> Iterator[SimulatorProcess]:
    """The shared simulator, with every fault cleared after the test."""
    yield sim
    sim.clear_faults()


@pytest.fixture(params=list(PROTOCOLS))
def client(request: pytest.FixtureRequest, sim: SimulatorProcess, receiver: Receiver) -> Client:
    return PROTOCOLS[request.param](sim, receiver, CREDENTIALS)


def wait_settled(client: Client, reference: str, expected: str = "succeeded") -> None:
    eventually(lambda: client.status(reference) == expected)


# -- happy paths --------------------------------------------------------------------------------


def test_juhe_submit_query_balance_and_callback(sim: SimulatorProcess, receiver: Receiver) -> None:
    juhe = Juhe(sim, receiver, CREDENTIALS)
    phone, reference = new_phone("0"), new_reference()
    before = float(juhe_balance(sim)["result"]["money"])

    body = juhe.submit(phone, reference).json()

    assert body["error_code"] == 0
    result = body["result"]
    assert result["uorderid"] == reference
    assert result["game_userid"] == phone
    assert result["game_state"] == "0"
    assert result["ordercash"] == pytest.approx(9.97)
    # 充值中 until it settles ("1" already when a loaded machine is slower than --settle;
    # test_digit_6_never_settles pins the in-progress answer down).
    assert juhe.query(reference)["result"]["game_state"] in ("0", "1")
    callback = eventually(lambda: juhe.callbacks(reference))[0]
    form = callback.form()
    assert form["sta"] == "1"
    assert form["sporder_id"] == result["sporder_id"]
    assert juhe.signature_ok(callback)
    queried = juhe.query(reference)["result"]
    assert queried == {"uordercash": "9.970", "sporder_id": result["sporder_id"], "game_state": "1"}
    assert float(juhe_balance(sim)["result"]["money"]) == pytest.approx(before - 9.97)
    listed = sim.transaction("juhe", reference)
    assert listed is not None
    assert (listed["phone_no"], listed["amount_fen"], listed["status"]) == (
        phone,
        1000,
        "succeeded",
    )
    assert (listed["submits"], listed["paid"]) == (1, 1)
    assert listed["settled_at"] is not None


def juhe_balance(sim: SimulatorProcess, sign: str | None = None) -> dict[str, Any]:
    key, openid = CREDENTIALS["TOPUP_JUHE_KEY"], CREDENTIALS["TOPUP_JUHE_OPENID"]
    stamp = str(int(time.time()))
    params = {"timestamp": stamp, "key": key, "sign": sign or md5_hex(openid + key + stamp)}
    return sim.http.get("/ofpay/mobile/yue", params=params).json()


def test_juhe_refuses_bad_key_sign_and_unknown_order(
    sim: SimulatorProcess, receiver: Receiver
) -> None:
    juhe = Juhe(sim, receiver, CREDENTIALS)
    phone, reference = new_phone(), new_reference()
    juhe.key = "wrong"
    assert juhe.submit(phone, reference).json()["error_code"] == 10001
    juhe.key, juhe.openid = CREDENTIALS["TOPUP_JUHE_KEY"], "wrong-openid"
    refused = juhe.submit(phone, reference)
    assert refused.status_code == 200
    assert refused.json() == {
        "reason": "错误的请求参数或校验值",
        "result": None,
        "error_code": 208505,
    }
    assert juhe.query(reference)["error_code"] == 208506
    assert juhe_balance(sim, sign="0" * 32)["error_code"] == 208505
    assert sim.transaction("juhe", reference) is None


def test_reloadly_token_topup_status_report_and_webhook(
    sim: SimulatorProcess, receiver: Receiver
) -> None:
    reloadly = Reloadly(sim, receiver, CREDENTIALS)
    phone, reference = new_phone("2"), new_reference()
    token = reloadly.fetch_token().json()
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 3600

    transaction = reloadly.submit(phone, reference).json()

    assert transaction["status"] == "PROCESSING"
    assert transaction["customIdentifier"] == reference
    assert transaction["requestedAmount"] == 10
    assert transaction["deliveredAmountCurrencyCode"] == "CNY"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", transaction["transactionDate"])
    webhook = eventually(lambda: reloadly.callbacks(reference))[0]
    event = webhook.json()
    assert event["type"] == "airtime_transaction.status"
    assert event["data"]["transactionId"] == transaction["transactionId"]
    assert event["data"]["status"] == "SUCCESSFUL"
    assert reloadly.signature_ok(webhook)
    status_url = f"/topups/{transaction['transactionId']}/status"
    status = sim.http.get(status_url, headers=reloadly.headers()).json()
    assert (status["code"], status["message"], status["status"]) == (None, None, "SUCCESSFUL")
    assert status["transaction"]["customIdentifier"] == reference
    report = reloadly.report(reference)
    assert report["totalElements"] == 1
    assert report["content"][0]["status"] == "SUCCESSFUL"
    assert reloadly.report(new_reference()) == {"content": [], "totalElements": 0}
    missing = sim.http.get("/topups/987654321/status", headers=reloadly.headers())
    assert (missing.status_code, missing.json()["errorCode"]) == (404, "TRANSACTION_NOT_FOUND")
    assert sim.transaction("reloadly", reference)["paid"] == 1


def test_reloadly_refuses_wrong_credentials_and_tokens(
    sim: SimulatorProcess, receiver: Receiver
) -> None:
    reloadly = Reloadly(sim, receiver, CREDENTIALS)
    refused = reloadly.fetch_token(secret="wrong")
    assert refused.status_code == 401
    assert refused.json()["errorCode"] == "INVALID_CREDENTIALS"
    assert set(refused.json()) == {
        "timeStamp",
        "message",
        "path",
        "errorCode",
        "infoLink",
        "details",
    }
    reloadly.token = "not-a-token"
    response = reloadly.submit(new_phone(), new_reference())
    assert (response.status_code, response.json()["errorCode"]) == (401, "INVALID_TOKEN")
    reloadly.fetch_token()
    invalid = reloadly.submit("12345", new_reference())
    assert invalid.json()["errorCode"] == "INVALID_PHONE_NUMBER"


def test_acme_submit_query_and_callback(sim: SimulatorProcess, receiver: Receiver) -> None:
    acme = Acme(sim, receiver, CREDENTIALS)
    phone, reference = new_phone("3"), new_reference()

    response = acme.submit(phone, reference)

    assert response.status_code == 200
    accepted = response.json()
    assert (accepted["reference"], accepted["status"]) == (reference, "accepted")
    callback = eventually(lambda: acme.callbacks(reference))[0]
    assert callback.json() == {
        "reference": reference,
        "id": accepted["id"],
        "status": "succeeded",
        "reason": "",
    }
    assert acme.signature_ok(callback)
    assert acme.query(reference).json()["status"] == "succeeded"
    assert sim.transaction("acme", reference)["amount_fen"] == 1000


def test_acme_refuses_wrong_key_and_bad_msisdn(sim: SimulatorProcess, receiver: Receiver) -> None:
    acme = Acme(sim, receiver, CREDENTIALS)
    acme.api_key = "wrong"
    assert acme.submit(new_phone(), new_reference()).status_code == 401
    acme.api_key = CREDENTIALS["TOPUP_ACME_API_KEY"]
    invalid = acme.submit("1380013800", new_reference())
    assert (invalid.status_code, invalid.json()) == (422, {"error": "INVALID_MSISDN"})


# -- outcomes by last digit ---------------------------------------------------------------------


def test_digit_4_is_accepted_then_fails(client: Client, sim: SimulatorProcess) -> None:
    reference = new_reference()
    assert client.accepted(client.submit(new_phone("4"), reference))
    wait_settled(client, reference, "failed")
    callback = eventually(lambda: client.callbacks(reference))[0]
    assert client.callback_status(callback) == "failed"
    assert client.signature_ok(callback)
    assert sim.transaction(client.name, reference)["paid"] == 0


def test_digit_5_is_refused_for_balance(client: Client, sim: SimulatorProcess) -> None:
    reference = new_reference()
    assert client.refused_for_balance(client.submit(new_phone("5"), reference))
    assert client.status(reference) is None
    listed = sim.transaction(client.name, reference)
    assert (listed["status"], listed["paid"], listed["submits"]) == ("refused", 0, 1)


def test_digit_6_never_settles(client: Client, sim: SimulatorProcess) -> None:
    reference, later = new_reference(), new_reference()
    assert client.accepted(client.submit(new_phone("6"), reference))
    # Every top-up settles the same delay after its submit: once one sent later has settled
    # and called back, the first has had its chance.
    assert client.accepted(client.submit(new_phone("1"), later))
    wait_settled(client, later)
    eventually(lambda: client.callbacks(later), what="the later top-up's callback")
    assert client.status(reference) == "processing"
    assert client.callbacks(reference) == []
    assert sim.transaction(client.name, reference)["settled_at"] is None


# -- faults -------------------------------------------------------------------------------------


def check_slow(client: Client, phone: str, reference: str) -> None:
    started = time.monotonic()
    assert client.accepted(client.submit(phone, reference))
    assert time.monotonic() - started >= 0.4
    wait_settled(client, reference)


def check_timeout(client: Client, phone: str, reference: str) -> None:
    with pytest.raises(httpx.ReadTimeout):
        client.submit(phone, reference, timeout=0.3)
    wait_settled(client, reference)


def check_error_after_topup(client: Client, phone: str, reference: str) -> None:
    response = client.submit(phone, reference)
    assert response.status_code == 500
    with pytest.raises(ValueError):
        response.json()
    wait_settled(client, reference)


def check_garbage(client: Client, phone: str, reference: str) -> None:
    response = client.submit(phone, reference)
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    wait_settled(client, reference)


def check_reject(client: Client, phone: str, reference: str) -> None:
    assert client.refused_for_balance(client.submit(phone, reference))
    assert client.status(reference) is None


def check_lose_callback(client: Client, phone: str, reference: str) -> None:
    assert client.accepted(client.submit(phone, reference))
    wait_settled(client, reference)
    client.sim.wait_for_log(f"{reference}: callback lost on purpose")
    assert client.callbacks(reference) == []


def check_duplicate_callback(client: Client, phone: str, reference: str) -> None:
    assert client.accepted(client.submit(phone, reference))
    first, second = eventually(
        lambda: len(client.callbacks(reference)) == 2 and client.callbacks(reference)
    )
    assert first.body == second.body
    assert client.signature_ok(first) and client.signature_ok(second)
    client.sim.wait_for_log(f"{reference}: callback acknowledged", count=2)
    assert len(client.callbacks(reference)) == 2


def check_early_callback(client: Client, phone: str, reference: str) -> None:
    response = client.submit(phone, reference)
    answered = time.monotonic()
    callbacks = client.callbacks(reference)
    assert len(callbacks) == 1
    assert callbacks[0].at < answered
    assert client.callback_status(callbacks[0]) == "succeeded"
    assert response.status_code == 200
    assert client.status(reference) == "succeeded"


def check_bad_signature_callback(client: Client, phone: str, reference: str) -> None:
    assert client.accepted(client.submit(phone, reference))
    callback = eventually(lambda: client.callbacks(reference))[0]
    assert not client.signature_ok(callback)


FAULT_CHECKS: dict[str, tuple[float | None, Callable[[Client, str, str], None]]] = {
    "slow": (0.4, check_slow),
    "timeout": (1.0, check_timeout),
    "error_after_topup": (None, check_error_after_topup),
    "garbage": (None, check_garbage),
    "reject": (None, check_reject),
    "lose_callback": (None, check_lose_callback),
    "duplicate_callback": (None, check_duplicate_callback),
    "early_callback": (None, check_early_callback),
    "bad_signature_callback": (None, check_bad_signature_callback),
}
PAID = {"reject": 0}


def run_fault(faults: SimulatorProcess, client: Client, fault: str, scope: str) -> None:
    seconds, check = FAULT_CHECKS[fault]
    phone, reference = new_phone("8"), new_reference()
    faults.add_fault(phone if scope == "number" else "*", fault, seconds)
    check(client, phone, reference)
    listed = faults.transaction(client.name, reference)
    assert listed is not None
    assert (listed["submits"], listed["paid"]) == (1, PAID.get(fault, 1))


@pytest.mark.parametrize("fault", list(FAULT_CHECKS))
def test_fault_per_number(faults: SimulatorProcess, client: Client, fault: str) -> None:
    run_fault(faults, client, fault, "number")


@pytest.mark.parametrize(
    ("fault", "protocol"), list(zip(FAULT_CHECKS, itertools.cycle(PROTOCOLS), strict=False))
)
def test_fault_for_the_whole_run(
    faults: SimulatorProcess, receiver: Receiver, fault: str, protocol: str
) -> None:
    run_fault(faults, PROTOCOLS[protocol](faults, receiver, CREDENTIALS), fault, "*")


def test_a_fault_on_one_number_spares_the_others(
    faults: SimulatorProcess, receiver: Receiver
) -> None:
    acme = Acme(faults, receiver, CREDENTIALS)
    faults.add_fault(new_phone("8"), "reject")
    assert acme.accepted(acme.submit(new_phone("8"), new_reference()))


def test_unknown_fault_is_refused(faults: SimulatorProcess) -> None:
    response = faults.http.post("/_sim/faults", json={"phone_no": "*", "fault": "meteor"})
    assert response.status_code == 400


# -- duplicate references -----------------------------------------------------------------------


def test_duplicate_reference_is_refused_and_never_paid_twice(
    client: Client, sim: SimulatorProcess
) -> None:
    phone, reference = new_phone("7"), new_reference()
    assert client.accepted(client.submit(phone, reference))
    assert client.duplicate(client.submit(phone, reference))
    wait_settled(client, reference)
    listed = sim.transaction(client.name, reference)
    assert (listed["submits"], listed["paid"]) == (2, 1)


def test_resend_after_a_timeout_is_a_duplicate(
    faults: SimulatorProcess, receiver: Receiver
) -> None:
    juhe = Juhe(faults, receiver, CREDENTIALS)
    phone, reference = new_phone("7"), new_reference()
    faults.add_fault(phone, "timeout", 0.5)
    with pytest.raises(httpx.ReadTimeout):
        juhe.submit(phone, reference, timeout=0.2)
    faults.clear_faults()
    assert juhe.duplicate(juhe.submit(phone, reference))
    wait_settled(juhe, reference)
    listed = faults.transaction("juhe", reference)
    assert (listed["submits"], listed["paid"]) == (2, 1)


# -- callback delivery --------------------------------------------------------------------------


def test_callback_is_retried_until_acknowledged(client: Client, receiver: Receiver) -> None:
    reference = new_reference()
    receiver.refuse(reference, 1)
    assert client.accepted(client.submit(new_phone("9"), reference))
    refused, acknowledged = eventually(
        lambda: len(client.callbacks(reference)) == 2 and client.callbacks(reference)
    )
    assert acknowledged.at - refused.at >= CALLBACK_INTERVAL * 0.9
    assert client.signature_ok(acknowledged)
    client.sim.wait_for_log(f"{reference}: callback acknowledged (try 2)")
    assert len(client.callbacks(reference)) == 2


def test_callback_gives_up_after_its_tries(sim: SimulatorProcess, receiver: Receiver) -> None:
    acme = Acme(sim, receiver, CREDENTIALS)
    reference = new_reference()
    receiver.refuse(reference, 100)
    assert acme.accepted(acme.submit(new_phone("9"), reference))
    sim.wait_for_log(f"{reference}: callback given up after {CALLBACK_RETRIES} tries")
    assert len(acme.callbacks(reference)) == CALLBACK_RETRIES


# -- separate runs ------------------------------------------------------------------------------


def test_reloadly_token_expires(tmp_path: Path, receiver: Receiver) -> None:
    sim = start_simulator(tmp_path, ["--token-ttl", "1", "--settle", str(SETTLE)])
    try:
        reloadly = Reloadly(sim, receiver, CREDENTIALS)
        assert reloadly.fetch_token().json()["expires_in"] == 1
        assert reloadly.accepted(reloadly.submit(new_phone(), new_reference()))
        time.sleep(1.1)
        phone, reference = new_phone(), new_reference()
        expired = reloadly.submit(phone, reference)
        assert (expired.status_code, expired.json()["errorCode"]) == (401, "TOKEN_EXPIRED")
        assert sim.transaction("reloadly", reference) is None
        reloadly.fetch_token()
        assert reloadly.accepted(reloadly.submit(phone, reference))
        assert sim.transaction("reloadly", reference)["submits"] == 1
    finally:
        sim.stop()


def test_command_line_fault_and_generated_credentials(tmp_path: Path, receiver: Receiver) -> None:
    sim = start_simulator(tmp_path, ["--fault", "reject"], credentials=None)
    try:
        exported = dict(re.findall(r"^export (TOPUP_\w+)=(\S+)$", sim.log(), re.MULTILINE))
        assert set(exported) == set(CREDENTIALS)
        assert not set(exported.values()) & set(CREDENTIALS.values())
        acme = Acme(sim, receiver, exported)
        assert acme.refused_for_balance(acme.submit(new_phone(), new_reference()))
        juhe = Juhe(sim, receiver, exported)
        assert juhe.refused_for_balance(juhe.submit(new_phone(), new_reference()))
        sim.clear_faults()
        assert acme.accepted(acme.submit(new_phone(), new_reference()))
    finally:
        sim.stop()


# -- daily statements ---------------------------------------------------------------------------

BEIJING = timezone(timedelta(hours=8))
STATEMENT_HEADERS = {
    "juhe": "orderid,sporder_id,phoneno,cardnum,ordercash,game_state,order_time",
    "reloadly": (
        "customIdentifier,transactionId,recipientPhone,requestedAmount,cost,status,transactionDate"
    ),
    "acme": "reference,id,msisdn,amount,charged,status,created_at",
}
# The share of the face value each supplier charges, from the spec.
PRICE_RATIOS = {"juhe": Decimal("0.997"), "reloadly": Decimal("0.995"), "acme": Decimal("0.990")}
STATEMENT_STATUS = {
    "juhe": {"processing": "0", "succeeded": "1", "failed": "9"},
    "reloadly": {"processing": "PROCESSING", "succeeded": "SUCCESSFUL", "failed": "FAILED"},
    "acme": {"processing": "accepted", "succeeded": "succeeded", "failed": "failed"},
}
# A face value whose price ends in exactly half a fen, which float rounding gets wrong
# (e.g. 3 yuan at 99.5% is 2.985 yuan: 2.99, where round(3 * 0.995, 2) says 2.98).
HALF_FEN_AMOUNTS = {"juhe": 12500, "reloadly": 300, "acme": 1050}


def price(protocol: str, amount_fen: int) -> str:
    yuan = Decimal(amount_fen) / 100 * PRICE_RATIOS[protocol]
    return str(yuan.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def supplier_id(client: Client, response: httpx.Response) -> str:
    body = response.json()
    if client.name == "juhe":
        return body["result"]["sporder_id"]
    return str(body["transactionId"] if client.name == "reloadly" else body["id"])


def beijing_created(listed: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(listed["created_at"]).astimezone(BEIJING)


def fetch_statement(sim: SimulatorProcess, protocol: str, day: date | str) -> list[list[str]]:
    response = sim.http.get("/_sim/statement", params={"protocol": protocol, "date": str(day)})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.reader(response.content.decode("utf-8").splitlines()))
    assert ",".join(rows[0]) == STATEMENT_HEADERS[protocol]
    assert all(len(row) == 7 for row in rows)
    return rows[1:]


def test_statement_lists_accepted_transactions_with_their_charge(
    client: Client, sim: SimulatorProcess
) -> None:
    # last digit -> (outcome, amount in fen)
    cases = {
        "1": ("succeeded", 1000),
        "3": ("succeeded", HALF_FEN_AMOUNTS[client.name]),
        "4": ("failed", 1000),
        "6": ("processing", 1000),
    }
    outcomes: dict[str, str] = {}
    expected: dict[str, list[str]] = {}
    for digit, (outcome, amount_fen) in cases.items():
        phone, reference = new_phone(digit), new_reference()
        response = client.submit(phone, reference, amount_fen=amount_fen)
        assert client.accepted(response), response.text
        outcomes[reference] = outcome
        expected[reference] = [
            reference,
            supplier_id(client, response),
            phone,
            str(amount_fen) if client.name == "acme" else f"{amount_fen / 100:.2f}",
            price(client.name, amount_fen) if outcome == "succeeded" else "0.00",
            STATEMENT_STATUS[client.name][outcome],
        ]
    refused = new_reference()
    assert client.refused_for_balance(client.submit(new_phone("5"), refused))
    for reference, outcome in outcomes.items():
        if outcome != "processing":
            wait_settled(client, reference, outcome)
        created = beijing_created(sim.transaction(client.name, reference))
        expected[reference].append(created.strftime("%Y-%m-%d %H:%M:%S"))

    # Fetched per day, in case the test ran across midnight in Beijing.
    days = {row[6][:10] for row in expected.values()}
    lines = {row[0]: row for day in days for row in fetch_statement(sim, client.name, day)}

    for reference, row in expected.items():
        assert lines[reference] == row
    assert refused not in lines
    # Exactly what the simulator accepted those days, and nothing it refused.
    accepted = {
        tx["reference"]
        for tx in sim.http.get("/_sim/transactions", params={"protocol": client.name}).json()
        if tx["status"] != "refused" and beijing_created(tx).strftime("%Y-%m-%d") in days
    }
    assert set(lines) == accepted


def test_reloadly_transaction_date_agrees_with_the_statement(
    sim: SimulatorProcess, receiver: Receiver
) -> None:
    reloadly = Reloadly(sim, receiver, CREDENTIALS)
    reference = new_reference()
    answered = reloadly.submit(new_phone("6"), reference).json()
    day = answered["transactionDate"][:10]
    lines = {row[0]: row for row in fetch_statement(sim, "reloadly", day)}
    assert lines[reference][6] == answered["transactionDate"]


def test_statement_of_a_day_without_transactions_is_only_the_header(
    client: Client, sim: SimulatorProcess
) -> None:
    assert client.accepted(client.submit(new_phone("6"), new_reference()))
    assert fetch_statement(sim, client.name, "2000-01-01") == []


@pytest.mark.parametrize(
    "params",
    [
        {"protocol": "alipay", "date": "2026-01-01"},
        {"protocol": "", "date": "2026-01-01"},
        {"date": "2026-01-01"},
        {"protocol": "juhe", "date": "2026-13-01"},
        {"protocol": "juhe", "date": "20260101"},
        {"protocol": "juhe", "date": "2026-1-1"},
        {"protocol": "juhe", "date": "yesterday"},
        {"protocol": "juhe"},
    ],
)
def test_statement_refuses_unknown_protocol_and_bad_date(
    sim: SimulatorProcess, params: dict[str, str]
) -> None:
    response = sim.http.get("/_sim/statement", params=params)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text.strip()


def test_a_simulator_ends_with_the_process_that_started_it(tmp_path: Path) -> None:
    # topup.testing.running_simulator starts it in a session of its own (so that a kill
    # -9 of a test's servers spares it); a test run killed outright must not leave it
    # holding its port.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from topup.testing import running_simulator\n"
            "with running_simulator() as url:\n"
            "    print(url, flush=True)\n"
            "    time.sleep(600)\n",
        ],
        cwd=REPO,
        env={**os.environ, **CREDENTIALS, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    url = holder.stdout.readline().strip()
    assert httpx.get(f"{url}/_sim/health", timeout=5).json() == {"status": "ok"}

    holder.kill()
    holder.wait(timeout=10)

    def gone() -> bool:
        try:
            httpx.get(f"{url}/_sim/health", timeout=1)
        except httpx.TransportError:
            return True
        return False

    eventually(gone, 10, what=f"the simulator at {url} gone with its starter")
