"""Signing in to the operations console: accounts, sessions, CSRF, roles, throttling.
No rule here needs a real process: the app is served in the test's own process
(tests/inprocess.py)."""

from __future__ import annotations

import itertools
import time

import pytest

from core.clock import FakeClock, use_clock
from tests.inprocess import InProcessService
from tests.support import Console, Service, sandbox_config

_names = itertools.count(1)


def _name(role: str) -> str:
    return f"{role}{next(_names)}-{time.monotonic_ns() % 100000}"


@pytest.fixture(scope="module")
def service(in_process: InProcessService) -> Service:
    return in_process


@pytest.fixture
def console(service):
    console = Console(service)
    yield console
    console.close()


def test_a_page_sends_a_stranger_to_sign_in_and_back(service, console) -> None:
    name = _name("viewer")
    service.add_operator(name, "viewer")
    refused = console.get("/console", x="1")
    assert refused.status_code == 303
    assert refused.headers["location"] == "/console/login?next=/console%3Fx%3D1"
    signed_in = console.sign_in(name)
    assert signed_in.status_code == 303
    cookie = signed_in.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    overview = console.get("/console")
    assert overview.status_code == 200
    assert name in overview.text and "只读" in overview.text


def test_a_wrong_password_is_refused_without_saying_which_part_was_wrong(service, console):
    name = _name("viewer")
    service.add_operator(name, "viewer")
    wrong_password = console.sign_in(name, "not the password at all")
    unknown_name = console.sign_in("nobody-" + name, "not the password at all")
    for reply in (wrong_password, unknown_name):
        assert reply.status_code == 401
        assert "用户名或密码错误" in reply.text
    assert console.get("/console").status_code == 303


def test_repeated_failures_lock_the_name_even_with_the_right_password(
    in_process_services,
) -> None:
    service = in_process_services(sandbox_config())  # its own: the lock must not reach others
    service.add_operator("target", "admin")
    service.add_operator("colleague", "admin")
    console = Console(service)
    try:
        for _ in range(4):
            assert console.sign_in("target", "guessing-password").status_code == 401
        locked = console.sign_in("target", "guessing-password")
        assert locked.status_code == 429
        assert "登录失败次数过多" in locked.text
        assert console.sign_in("target").status_code == 429  # even the right password
        assert console.sign_in("colleague").status_code == 303  # others are unaffected
    finally:
        console.close()


def test_sign_out_ends_the_session_on_the_server(service, console) -> None:
    name = _name("viewer")
    service.add_operator(name, "viewer")
    console.sign_in(name)
    stolen = dict(console.http.cookies)
    assert console.post("/console/logout").status_code == 303
    console.http.cookies.clear()
    console.http.cookies.update(stolen)  # the old cookie, replayed: the session is gone
    assert console.get("/console").status_code == 303


def test_a_form_post_without_the_csrf_token_is_refused(service, console) -> None:
    name = _name("viewer")
    service.add_operator(name, "viewer")
    console.sign_in(name)
    forged = console.http.post("/console/logout", data={"csrf_token": "forged"})
    assert forged.status_code == 403
    assert "CSRF" in forged.text
    missing = console.http.post("/console/logout")
    assert missing.status_code == 403
    assert console.get("/console").status_code == 200  # still signed in: nothing happened


def test_the_sign_in_form_itself_needs_its_token(service, console) -> None:
    name = _name("viewer")
    service.add_operator(name, "viewer")
    reply = console.http.post("/console/login", data={"name": name, "password": "x" * 12})
    assert reply.status_code == 403
    assert "topup_console=" not in reply.headers.get("set-cookie", "")


def test_after_sign_in_only_console_paths_are_followed(service, console) -> None:
    name = _name("viewer")
    service.add_operator(name, "viewer")
    form = console.get("/console/login", next="https://evil.example/")
    from tests.support import csrf_of

    reply = console.http.post(
        "/console/login",
        data={
            "name": name,
            "password": "correct horse battery staple",
            "csrf_token": csrf_of(form.text),
            "next": "https://evil.example/",
        },
    )
    assert reply.headers["location"] == "/console"


def test_the_operator_cli_refuses_short_passwords_and_duplicates(service) -> None:
    name = _name("admin")
    short = service.cli("operator", "add", name, "--password-stdin", check=False, input="short")
    assert short.returncode == 1 and "at least 10 characters" in short.stderr
    service.add_operator(name, "admin")
    again = service.cli("operator", "add", name, "--password-stdin", check=False, input="x" * 12)
    assert again.returncode == 1 and "already exists" in again.stderr
    listing = service.cli("operator", "list").stdout
    assert f"{name}  admin" in listing
    stored = service.sql("SELECT password_hash FROM operators WHERE name = ?", name)[0][0]
    assert stored.startswith("$argon2id$") and "correct horse" not in stored


def test_disabling_an_operator_ends_their_sessions(service, console) -> None:
    name = _name("operator")
    service.add_operator(name, "operator")
    console.sign_in(name)
    assert console.get("/console").status_code == 200
    service.cli("operator", "set", name, "--disable", "--reason", "left the team")
    assert console.get("/console").status_code == 303
    assert console.sign_in(name).status_code == 401
    actions = service.sql(
        "SELECT actor, action, reason FROM audit_log WHERE target = ? ORDER BY id", name
    )
    assert [action for _actor, action, _reason in actions] == ["operator.add", "operator.change"]
    assert actions[1][2] == "left the team"


def test_the_audit_log_refuses_changes(service) -> None:
    name = _name("viewer")
    service.add_operator(name, "viewer")
    with pytest.raises(Exception, match="append-only"):
        service.sql("UPDATE audit_log SET reason = 'edited' WHERE target = ?", name)
    with pytest.raises(Exception, match="append-only"):
        service.sql("DELETE FROM audit_log WHERE target = ?", name)


def test_an_idle_session_ends(in_process_services) -> None:
    service = in_process_services(sandbox_config(), env={"TOPUP_CONSOLE_IDLE_MINUTES": "0.02"})
    service.add_operator("idle", "viewer")
    console = Console(service)
    # The app runs in this process: its clock moves on instead of the test sleeping.
    clock = FakeClock()
    try:
        with use_clock(clock):
            console.sign_in("idle")
            assert console.get("/console").status_code == 200
            clock.advance(1.5)  # more than 0.02 minutes without a request
            assert console.get("/console").status_code == 303
    finally:
        console.close()
