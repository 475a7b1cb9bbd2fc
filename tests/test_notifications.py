"""Partner notifications, against a real receiving HTTP server that fails, times out and
then accepts."""

from __future__ import annotations

import datetime
import itertools
import ssl
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.signing import verify_sign
from tests.conftest import new_partner
from tests.support import (
    Backend,
    Partner,
    ServiceProcess,
    eventually,
    fresh_order_no,
    sandbox_config,
)

NOTIFY_PATH = "/topup/notify"
SCHEDULE = [0.3, 0.6, 1.2, 2.4]
NOTIFY = f"""
[notify]
schedule = {SCHEDULE}
timeout = 0.5
scan_interval = 0.1
"""


class Receiver:
    """A partner's notification endpoint. Answers each order's deliveries from a script:
    ``fail`` (HTTP 500), ``timeout`` (answers too late), ``hold`` (answers only once the
    receiver closes), ``wrong`` (200 but not "success"), ``redirect`` (307 to /elsewhere,
    which would accept), ``accept`` ("success"); after the script, accepts. Requests to
    any path but the notify URL's are kept in ``strays``."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.scripts: dict[str, list[str]] = {}
        self.default = "accept"
        self.received: dict[str, list[tuple[float, dict[str, str], str]]] = defaultdict(list)
        self.hosts: list[str] = []
        self.strays: list[str] = []
        self.closing = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path != NOTIFY_PATH:
                    receiver.strays.append(self.path)
                    self._answer(200, b"success")
                    return
                params = dict(parse_qsl(body.decode()))
                cstm = params.get("cstmOrderNo", "")
                script = receiver.scripts.get(cstm) or []
                behaviour = script.pop(0) if script else receiver.default
                receiver.received[cstm].append((time.monotonic(), params, behaviour))
                receiver.hosts.append(self.headers.get("host", ""))
                if behaviour == "timeout":
                    time.sleep(1.5)
                if behaviour == "hold":
                    receiver.closing.wait()
                if behaviour == "redirect":
                    self._answer(307, b"", location="/elsewhere")
                    return
                status, reply = {"fail": (500, b"oops"), "wrong": (200, b"ok")}.get(
                    behaviour, (200, b"success")
                )
                self._answer(status, reply)

            do_GET = do_POST

            def _answer(self, status: int, reply: bytes, location: str | None = None) -> None:
                try:
                    self.send_response(status)
                    if location:
                        self.send_header("Location", location)
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except OSError:
                    pass  # the service gave up waiting, as it should

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}{NOTIFY_PATH}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def wait(self, cstm: str, deliveries: int, within: float = 20.0) -> list:
        eventually(
            lambda: len(self.received[cstm]) >= deliveries,
            within,
            what=f"{deliveries} deliveries for {cstm}",
        )
        return self.received[cstm]

    def close(self) -> None:
        self.closing.set()
        self._server.shutdown()
        self._server.server_close()


def wait_outbox_done(service: ServiceProcess, order_no: str) -> tuple[int, int]:
    """(attempts, delivered) once the notifier is done with the order's notification: no
    next attempt scheduled and no lease held, so it is never claimed again."""
    query = (
        "SELECT attempts, CASE WHEN delivered_at IS NULL THEN 0 ELSE 1 END FROM notifications "
        "WHERE order_no = ? AND next_attempt_at IS NULL AND lease_owner IS NULL"
    )
    [row] = eventually(lambda: service.sql(query, order_no), 20, interval=0.1, what="done")
    return row


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def notifying_service(
    tmp_path_factory: pytest.TempPathFactory, backend: Backend
) -> Iterator[ServiceProcess]:
    workdir = tmp_path_factory.mktemp(f"notify-{backend.name}")
    service = ServiceProcess(workdir, sandbox_config(extra=NOTIFY), backend=backend)
    service.start()
    yield service
    service.stop()
    service.drop_database()


def subscribed(service: ServiceProcess, receiver: Receiver) -> Partner:
    partner = new_partner(service)
    # The receiver is on loopback, which only an operator's --allow-private permits.
    service.cli("app", "set", partner.app_id, "--notify-url", receiver.url, "--allow-private")
    return partner


def test_each_final_state_is_delivered_signed_and_retried_until_accepted(
    notifying_service: ServiceProcess, receiver: Receiver
) -> None:
    partner = subscribed(notifying_service, receiver)
    succeeded, failed = fresh_order_no("ok"), fresh_order_no("ko")
    receiver.scripts[succeeded] = ["fail", "timeout", "wrong", "accept"]
    partner.order(succeeded, phone="13800138000")
    partner.order(failed, phone="13800138004")

    deliveries = receiver.wait(succeeded, 4)
    [only] = receiver.wait(failed, 1)
    for _at, params, _behaviour in [*deliveries, only]:
        assert verify_sign(params, partner.secret, partner.sign_type), params
        assert params["appID"] == partner.app_id and params["company"] == partner.company
        assert params["Supplier"] == "中国移动" and params["ts"]
    assert {p["status"] for _at, p, _b in deliveries} == {"2"}
    assert deliveries[0][1]["fundStatus"] == "captured"
    assert only[1]["status"] == "3" and only[1]["fundStatus"] == "released"
    assert only[1]["failReason"] == "充值失败，款项已退回"
    # The waits grow with the schedule (each at least its delay after the previous answer).
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(deliveries)]
    for gap, delay in zip(gaps, SCHEDULE, strict=False):
        assert gap >= delay * 0.9, (gaps, SCHEDULE)
    # Once the outbox row is delivered, unscheduled and unleased, nothing sends it again.
    order_no = deliveries[0][1]["orderNo"]
    assert wait_outbox_done(notifying_service, order_no) == (4, 1)
    assert len(receiver.received[succeeded]) == 4, "delivered again after it was accepted"


def test_the_status_query_agrees_with_the_notification(
    notifying_service: ServiceProcess, receiver: Receiver
) -> None:
    partner = subscribed(notifying_service, receiver)
    cstm = fresh_order_no()
    partner.order(cstm, phone="13800138007")  # settles only after a timeout and a query
    [(_at, params, _behaviour)] = receiver.wait(cstm, 1)
    queried = partner.status(cstm)["data"]
    for field in ("orderNo", "cstmOrderNo", "orderId", "status", "phoneNo", "finishTime"):
        assert params[field] == queried[field]


def test_an_app_without_a_notify_url_is_not_notified(notifying_service: ServiceProcess) -> None:
    partner = new_partner(notifying_service)
    cstm = fresh_order_no()
    partner.order(cstm)
    partner.wait_status(cstm, {"2"})
    rows = notifying_service.sql(
        "SELECT count(*) FROM notifications WHERE app_id = ?", partner.app_id
    )
    assert rows == [(0,)]


def test_a_notification_is_given_up_after_the_schedule(
    notifying_service: ServiceProcess, receiver: Receiver
) -> None:
    partner = subscribed(notifying_service, receiver)
    cstm = fresh_order_no()
    receiver.scripts[cstm] = ["fail"] * 10
    order_no = partner.order(cstm)["data"]["orderNo"]
    receiver.wait(cstm, len(SCHEDULE) + 1)
    assert wait_outbox_done(notifying_service, order_no) == (len(SCHEDULE) + 1, 0)
    assert len(receiver.received[cstm]) == len(SCHEDULE) + 1
    notifying_service.wait_for_log("given up")


def test_a_stuck_receiver_does_not_hold_up_orders(
    notifying_service: ServiceProcess, receiver: Receiver
) -> None:
    partner = subscribed(notifying_service, receiver)
    receiver.default = "timeout"
    cstms = [fresh_order_no() for _ in range(20)]
    for cstm in cstms:
        assert partner.order(cstm)["code"] == "0"
    for cstm in cstms:
        assert partner.wait_status(cstm, {"2"})["data"]["status"] == "2"


def test_pending_notifications_survive_a_crash(services, receiver: Receiver) -> None:
    service = services(sandbox_config(extra=NOTIFY))
    partner = subscribed(service, receiver)
    cstm = fresh_order_no()
    receiver.default = "fail"
    partner.order(cstm)
    receiver.wait(cstm, 1)
    service.kill9()
    receiver.default = "accept"
    service.start()
    deliveries = receiver.wait(cstm, 2, within=30)
    assert deliveries[-1][2] == "accept" and deliveries[-1][1]["status"] == "2"


def test_a_notification_in_flight_at_a_kill_9_is_delivered_within_seconds_of_the_restart(
    services, receiver: Receiver
) -> None:
    # A delivery's lease (notify.timeout plus a margin) outlasts the test by far: only the
    # dead notifier's stopped heartbeat can explain a quick delivery after the restart.
    slow_partner = NOTIFY.replace("timeout = 0.5", "timeout = 60")
    service = services(sandbox_config(extra=slow_partner))
    partner = subscribed(service, receiver)
    cstm = fresh_order_no()
    receiver.scripts[cstm] = ["hold"]
    partner.order(cstm)
    receiver.wait(cstm, 1)  # the delivery is under way; the partner holds it

    service.kill9()
    restarted = time.monotonic()
    service.start()

    deliveries = receiver.wait(cstm, 2, within=15)
    assert deliveries[-1][0] - restarted < 15
    assert deliveries[-1][2] == "accept" and deliveries[-1][1]["status"] == "2"


# -- where notifications may go ---------------------------------------------------------------


def notify_setting(service: ServiceProcess, app_id: str) -> list[tuple]:
    return service.sql("SELECT notify_url, notify_allow_private FROM apps WHERE app_id = ?", app_id)


def test_a_notify_url_to_an_internal_address_is_refused(
    notifying_service: ServiceProcess, receiver: Receiver
) -> None:
    partner = new_partner(notifying_service)
    refusals = [
        (receiver.url, [], "loopback"),
        (f"http://localhost:{receiver.port}{NOTIFY_PATH}", [], "localhost resolves to"),
        (f"http://[::1]:{receiver.port}{NOTIFY_PATH}", [], "loopback"),
        ("http://10.20.30.40/notify", [], "private"),
        ("http://169.254.169.254/latest/meta-data/", [], "metadata"),
        # No partner lives on a cloud metadata service: not even the flag allows it.
        ("http://169.254.169.254/latest/meta-data/", ["--allow-private"], "metadata"),
        ("ftp://partner.example/notify", [], "http"),
        ("http://user:secret@partner.example/notify", [], "credentials"),
    ]
    for url, flags, why in refusals:
        refused = notifying_service.cli(
            "app", "set", partner.app_id, "--notify-url", url, *flags, check=False
        )
        assert refused.returncode != 0, url
        assert why in refused.stderr, (url, refused.stderr)
        assert notify_setting(notifying_service, partner.app_id) == [(None, False)], url


def test_allow_private_is_stored_and_the_host_name_is_kept(
    notifying_service: ServiceProcess, receiver: Receiver
) -> None:
    partner = new_partner(notifying_service)
    url = f"http://localhost:{receiver.port}{NOTIFY_PATH}"
    notifying_service.cli("app", "set", partner.app_id, "--notify-url", url, "--allow-private")
    assert notify_setting(notifying_service, partner.app_id) == [(url, True)]
    cstm = fresh_order_no()
    partner.order(cstm)
    receiver.wait(cstm, 1)
    # Sent to the address that was checked, under the name the partner gave.
    assert receiver.hosts[-1] == f"localhost:{receiver.port}"


def test_a_redirect_is_not_followed_and_counts_as_a_failed_delivery(
    notifying_service: ServiceProcess, receiver: Receiver
) -> None:
    partner = subscribed(notifying_service, receiver)
    cstm = fresh_order_no()
    receiver.scripts[cstm] = ["redirect"]
    partner.order(cstm)
    deliveries = receiver.wait(cstm, 2)  # retried on the schedule, at the same URL
    assert [behaviour for _at, _params, behaviour in deliveries] == ["redirect", "accept"]
    assert receiver.strays == [], "the redirect was followed"


def test_the_address_is_checked_again_when_sending(
    notifying_service: ServiceProcess, receiver: Receiver
) -> None:
    partner = new_partner(notifying_service)
    # The stored URL's name now resolves to loopback (a DNS rebinding), and the operator never
    # allowed private addresses for this app.
    notifying_service.sql(
        "UPDATE apps SET notify_url = ?, notify_allow_private = ? WHERE app_id = ?",
        f"http://localhost:{receiver.port}{NOTIFY_PATH}",
        False,
        partner.app_id,
    )
    cstm = fresh_order_no()
    order_no = partner.order(cstm)["data"]["orderNo"]
    query = "SELECT attempts, last_error FROM notifications WHERE order_no = ?"
    [(attempts, error)] = eventually(
        lambda: (rows := notifying_service.sql(query, order_no)) and rows[0][1] and rows,
        20,
        interval=0.1,
        what="a delivery attempt recorded",
    )
    assert attempts >= 1 and error.startswith("refused: localhost resolves to"), error
    assert "loopback" in error
    assert receiver.received[cstm] == [], "sent to an address it had refused"
    assert "not sent to" in notifying_service.log()


def certificate_for(name: str, where: Path) -> tuple[Path, Path]:
    """A self-signed certificate valid for the DNS name ``name`` only (no IP address)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = where / "cert.pem", where / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https_goes_to_the_checked_address_with_the_certificate_checked_for_the_name(
    services, tmp_path: Path
) -> None:
    cert, key = certificate_for("localhost", tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    receiver = Receiver(tls=tls)
    try:
        # The service trusts this certificate, which names localhost and no address: the
        # delivery only succeeds if TLS checks the name while the connection goes to the IP.
        service = services(sandbox_config(extra=NOTIFY), env={"SSL_CERT_FILE": str(cert)})
        partner = new_partner(service)
        url = f"https://localhost:{receiver.port}{NOTIFY_PATH}"
        service.cli("app", "set", partner.app_id, "--notify-url", url, "--allow-private")
        cstm = fresh_order_no()
        partner.order(cstm)
        [(_at, params, _behaviour)] = receiver.wait(cstm, 1)
        assert params["status"] == "2"
        assert receiver.hosts[-1] == f"localhost:{receiver.port}"
    finally:
        receiver.close()
