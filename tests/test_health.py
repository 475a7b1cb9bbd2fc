"""/healthz and /readyz of real `topup serve` processes, with the database taken away
(PostgreSQL behind a TCP forwarder the test stops and starts) and the schema behind."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

import httpx
import pytest

from core.migrate import HEAD_REVISION
from tests.conftest import new_partner
from tests.support import Backend, eventually, fresh_order_no, sandbox_config
from topup.testing import free_port


def readyz(base_url: str) -> httpx.Response:
    return httpx.get(f"{base_url}/readyz", timeout=10)


def wait_readyz(base_url: str, status: int, within: float = 20) -> httpx.Response:
    def answered() -> httpx.Response:
        reply = readyz(base_url)
        assert reply.status_code == status, reply.text
        return reply

    return eventually(answered, within, interval=0.1, what=f"/readyz answering {status}")


def test_readyz_reports_each_check_when_ready(services, backend: Backend):
    service = services(sandbox_config())
    assert httpx.get(f"{service.url}/healthz").json() == {"status": "ok"}
    reply = readyz(service.url)
    assert reply.status_code == 200
    assert reply.json() == {
        "status": "ready",
        "checks": {
            "database": {"ok": True, "detail": backend.name.replace("postgres", "postgresql")},
            "schema": {"ok": True, "detail": f"revision {HEAD_REVISION}"},
            "plugins": {"ok": True, "detail": "sandbox"},
        },
    }
    # Probes are neither rate-limited (a partner's limit is 400/s per address by
    # default; these come faster than a partner may) nor logged one line each.
    for _ in range(30):
        assert readyz(service.url).status_code == 200
    assert service.log().count("topup.health") == 1  # "ready", at the first probe


def test_readyz_is_503_while_the_schema_is_behind_the_release(services):
    service = services(sandbox_config())
    service.sql("UPDATE alembic_version SET version_num = '0004'")
    reply = wait_readyz(service.url, 503)
    checks = reply.json()["checks"]
    assert reply.json()["status"] == "not ready"
    assert checks["schema"]["ok"] is False
    assert "0004" in checks["schema"]["detail"] and "topup db upgrade" in checks["schema"]["detail"]
    assert checks["database"]["ok"] is True and checks["plugins"]["ok"] is True
    # A newer release's revision (a rolling upgrade under way): this one stays in service.
    service.sql("UPDATE alembic_version SET version_num = '9999'")
    newer = wait_readyz(service.url, 200).json()["checks"]["schema"]
    assert newer["ok"] is True
    assert newer["detail"] == f"revision 9999, newer than this release's {HEAD_REVISION}"
    service.sql("UPDATE alembic_version SET version_num = ?", HEAD_REVISION)
    assert wait_readyz(service.url, 200).json()["checks"]["schema"]["ok"] is True


class Forwarder:
    """A TCP forwarder to PostgreSQL: while stopped, nothing listens on its port and the
    connections it carried are cut, as when the database host goes away."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@pytest.fixture
def forwarder() -> Forwarder:
    forwarder = Forwarder(("127.0.0.1", 5432))
    forwarder.start()
    yield forwarder
    forwarder.stop()


def test_readyz_is_503_naming_the_database_while_it_is_unreachable(
    services, backend: Backend, forwarder: Forwarder, tmp_path: Path
):
    if backend.name != "postgres":
        pytest.skip("SQLite is a file inside the service's own process: nothing to take away")
    direct = backend.migrated_database(tmp_path)
    assert ":5432/" in direct
    through = direct.replace(":5432/", f":{forwarder.port}/")
    service = services(sandbox_config(), database_url=through)
    partner = new_partner(service)
    assert wait_readyz(service.url, 200).json()["status"] == "ready"

    forwarder.stop()
    reply = wait_readyz(service.url, 503)
    body = reply.json()
    assert body["status"] == "not ready"
    assert body["checks"]["database"]["ok"] is False
    assert body["checks"]["database"]["detail"].startswith(("unreachable", "no answer"))
    assert body["checks"]["schema"] == {"ok": False, "detail": "not checked: no database"}
    assert body["checks"]["plugins"]["ok"] is True
    for _ in range(5):
        assert readyz(service.url).status_code == 503
    # Alive all the same: a liveness probe must not restart a service for its database.
    assert httpx.get(f"{service.url}/healthz").status_code == 200
    metrics = httpx.get(f"{service.url}/metrics").text
    assert "topup_database_up 0.0" in metrics

    forwarder.start()
    assert wait_readyz(service.url, 200).json()["status"] == "ready"
    # One line when readiness went, one when it came back; none per probe.
    log = service.wait_for_log("topup.health", count=3)
    assert log.count("not ready: database: ") == 1, log[-3000:]
    # And the service serves again.
    cstm = fresh_order_no("back")
    assert partner.order(cstm)["code"] == "0"
    assert partner.wait_status(cstm, {"2"})
