"""Secrets at rest and tokens: what a database dump reveals, how secrets rotate, and what
a token can and cannot be made to do. Rules of the app run on the app served in the
test's own process (tests/inprocess.py); what a process does at its start with the wrong
master key, and commands run beside a stopped service, need real processes."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from core.apps import AppStore
from core.db import Database
from core.migrate import upgrade
from core.sealing import MASTER_KEY_ENV, MASTER_KEY_FILE_ENV, new_master_key
from core.signing import compute_sign
from core.tokens import TokenIssuer
from tests.conftest import TOKEN_SECRET, new_partner
from tests.inprocess import InProcessService
from tests.support import (
    REPO,
    TOPUP,
    Partner,
    Service,
    eventually,
    fresh_order_no,
    sandbox_config,
    topup_cli,
)


def token_reply(partner: Partner, params: dict[str, str]) -> dict:
    return partner.http.post("/sign/api/token", data=params).json()


def order_with(partner: Partner, token: str, secret: str | None = None) -> dict:
    params = {**partner.order_params(fresh_order_no()), "access_token": token}
    return partner.http.post("/sign/api/order", data=partner.signed(params, secret)).json()


def fresh_token(partner: Partner, secret: str | None = None) -> dict:
    return token_reply(partner, partner.signed({}, secret))


@pytest.fixture(scope="module")
def service(in_process: InProcessService) -> Service:
    return in_process


def stored_values(service: Service) -> list[str]:
    rows = service.sql("SELECT secret, previous_secret FROM apps")
    rows += service.sql("SELECT value, NULL FROM server_keys")
    return [value for row in rows for value in row if value]


# --- secrets at rest ---------------------------------------------------------------------


def test_a_database_dump_holds_no_secret_in_plaintext(in_process_services, tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "master.key"
    service = in_process_services(sandbox_config(), env={MASTER_KEY_FILE_ENV: str(key_file)})
    partner = new_partner(service)
    assert fresh_token(partner)["code"] == "0"

    values = stored_values(service)
    assert len(values) >= 2  # the app's secret and the token key
    assert all(value.startswith("sealed:v1:") for value in values), values
    assert not any(partner.secret in value for value in values)
    # The key that opens them lives outside the database, readable by its owner only.
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "Traceback" not in service.log()


def test_secrets_open_only_with_the_master_key(services, tmp_path: Path) -> None:
    key = new_master_key()
    service = services(sandbox_config(), env={MASTER_KEY_ENV: key})
    partner = new_partner(service)
    assert fresh_token(partner)["code"] == "0"
    service.stop()

    right = service.cli("sign", "--app", partner.app_id, "appID=x")
    assert right.stdout.strip() == compute_sign({"appID": "x"}, partner.secret, partner.sign_type)
    other = {**service.env, MASTER_KEY_ENV: new_master_key()}
    wrong = topup_cli("sign", "--app", partner.app_id, "appID=x", env=other, check=False)
    assert wrong.returncode != 0
    assert "does not hold" in wrong.stderr and "Traceback" not in wrong.stderr
    # A service with the wrong key stops at start, saying why, instead of failing requests.
    serve = subprocess.run(
        [TOPUP, "serve"], env=other, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert serve.returncode != 0
    assert "does not hold" in serve.stderr and "Traceback" not in serve.stderr


async def test_migration_seals_the_secrets_of_an_existing_database(
    empty_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MASTER_KEY_FILE_ENV, str(tmp_path / "master.key"))
    db = Database(empty_database_url)
    try:
        await upgrade(db, "0003")

        def plaintext_app(conn) -> None:
            conn.exec_driver_sql(
                "INSERT INTO apps (app_id, company, secret, sign_type, created_at) "
                "VALUES ('old', 'co', 'plain-secret-of-old-app', 'hmac-sha256', 1)"
            )
            conn.exec_driver_sql(
                "INSERT INTO server_keys (name, value) VALUES ('token', 'plain-token-key')"
            )

        await db.exclusive(plaintext_app)
        await upgrade(db)
        rows = await db.read(
            lambda conn: conn.exec_driver_sql(
                "SELECT secret FROM apps UNION ALL SELECT value FROM server_keys"
            ).all()
        )
        assert len(rows) == 2 and all(row[0].startswith("sealed:v1:") for row in rows), rows
        app = await AppStore(db).get("old")
        assert app is not None and app.secret == "plain-secret-of-old-app"
    finally:
        await db.dispose()


def test_keys_rotate_reseals_everything_and_running_services_follow(
    in_process_services, tmp_path: Path
) -> None:
    key_file = tmp_path / "master.key"
    env = {MASTER_KEY_FILE_ENV: str(key_file), "TOPUP_APP_CACHE_SECONDS": "1"}
    service = in_process_services(sandbox_config(), env=env)
    partner = new_partner(service)
    old_key = key_file.read_text().strip()

    rotated = service.cli("keys", "rotate")
    assert "sealed again with the new key" in rotated.stdout
    new_key = key_file.read_text().strip()
    assert new_key != old_key and "\n" not in new_key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    new_id = service.cli("keys", "status").stdout
    current = next(line for line in new_id.splitlines() if line.startswith("current:"))
    current_id = current.split()[1]
    assert all(value.startswith(f"sealed:v1:{current_id}:") for value in stored_values(service))

    # The running service opens the resealed secret once its cache of the app expires.
    def token_issued() -> bool:
        partner._token = None
        reply = fresh_token(partner)
        assert reply["code"] == "0", reply
        return True

    eventually(token_issued, 20, interval=0.5, what="the resealed secret opened")
    assert partner.order(fresh_order_no())["code"] == "0"
    assert "Traceback" not in service.log()


# --- tokens ------------------------------------------------------------------------------


def test_a_replayed_token_request_returns_the_same_token(partner: Partner) -> None:
    captured = partner.signed({})
    replies = [token_reply(partner, captured) for _ in range(5)]
    tokens = {reply["data"]["access_token"] for reply in replies}
    assert len(tokens) == 1, replies
    assert 7100 <= replies[0]["data"]["expires_in"] <= 7200
    # A new request (another ts) gets a token of its own.
    another_ts = partner.signed({"ts": str(int(captured["ts"]) - 1)})
    assert token_reply(partner, another_ts)["data"]["access_token"] not in tokens


def test_a_token_dated_far_ahead_is_refused(partner: Partner) -> None:
    # The test service's token key is known here, so a token with any expiry can be made.
    issuer = TokenIssuer(TOKEN_SECRET.encode())
    year_9999 = issuer.issue(partner.app_id, partner.secret, 253402300000, "f" * 64)
    reply = order_with(partner, year_9999)
    assert reply["code"] == "1" and reply["errorCode"] == "INVALID_TOKEN", reply
    just_issued = issuer.issue(partner.app_id, partner.secret, int(time.time()), "e" * 64)
    assert order_with(partner, just_issued)["code"] == "0"


@pytest.mark.parametrize("digits", ["²", "①", "٣", "１"])
def test_a_token_with_non_ascii_digits_is_invalid_not_an_error(
    partner: Partner, digits: str
) -> None:
    token = partner.token()
    forged = digits * 3 + token[3:]
    response = partner.http.post(
        "/sign/api/order",
        data=partner.signed({**partner.order_params(fresh_order_no()), "access_token": forged}),
    )
    assert response.status_code == 200
    assert response.json()["errorCode"] == "INVALID_TOKEN", response.text


# --- rotating an app's secret ------------------------------------------------------------


def test_rotate_secret_keeps_the_old_one_for_the_grace_period(service: Service) -> None:
    partner = new_partner(service)
    old_secret = partner.secret
    old_token = partner.token()
    rotated = service.cli("app", "rotate-secret", partner.app_id, "--grace", "6")
    new_secret = rotated.stdout.strip()
    assert len(new_secret) >= 64 and new_secret != old_secret  # 32 random bytes, hex
    assert old_secret not in rotated.stdout + rotated.stderr
    assert "still signs until" in service.cli("app", "show", partner.app_id).stdout

    # During the grace period both secrets sign, and the old secret's token still works.
    # (The service caches apps for a second here; wait until it sees the new secret. Each
    # look before then is a wrong signature: at 0.5 s apart they stay well under the 20 a
    # minute that lock the app's wrong signatures.)
    eventually(
        lambda: fresh_token(partner, new_secret)["code"] == "0",
        10,
        interval=0.5,
        what="the new secret signing",
    )
    new_token = fresh_token(partner, new_secret)["data"]["access_token"]
    assert order_with(partner, old_token, old_secret)["code"] == "0"
    assert order_with(partner, new_token, new_secret)["code"] == "0"

    # After it, the old secret and every token issued for it stop working.
    eventually(
        lambda: fresh_token(partner, old_secret)["code"] != "0",
        25,
        interval=0.3,
        what="the old secret refused after its grace",
    )
    assert fresh_token(partner, old_secret)["errorCode"] == "BAD_SIGNATURE"
    assert order_with(partner, old_token, new_secret)["errorCode"] == "INVALID_TOKEN"
    assert order_with(partner, new_token, new_secret)["code"] == "0"


def test_secrets_are_long_and_chosen_ones_must_be(service: Service) -> None:
    short = service.cli("app", "add", "shorty", "--company", "c", "--secret", "x" * 15, check=False)
    assert short.returncode != 0 and "at least 16" in short.stderr
    partner = new_partner(service)
    short = service.cli("app", "rotate-secret", partner.app_id, "--secret", "abc", check=False)
    assert short.returncode != 0 and "at least 16" in short.stderr
    missing = service.cli("app", "rotate-secret", "no-such-app", check=False)
    assert missing.returncode != 0 and "no app" in missing.stderr
    assert len(bytes.fromhex(service.add_app("longapp", "c"))) >= 32


def test_a_rotation_without_grace_ends_the_old_secret_at_once(service: Service) -> None:
    partner = new_partner(service)
    old_secret = partner.secret
    new_secret = service.cli("app", "rotate-secret", partner.app_id, "--grace", "0").stdout
    new_secret = new_secret.strip()
    eventually(
        lambda: fresh_token(partner, old_secret)["code"] != "0",
        10,
        interval=0.2,
        what="the old secret refused",
    )
    assert fresh_token(partner, new_secret)["code"] == "0"


def test_master_key_from_the_environment_must_be_well_formed(services, tmp_path: Path) -> None:
    proc = services(sandbox_config(), env={MASTER_KEY_ENV: "not-base64!"}, begin=False)
    result = proc.cli("app", "add", "x", "--company", "c", check=False)
    assert result.returncode != 0 and MASTER_KEY_ENV in result.stderr
    assert "Traceback" not in result.stderr
    short = base64.b64encode(os.urandom(16)).decode()
    result = topup_cli(
        "app", "add", "y", "--company", "c", env={**proc.env, MASTER_KEY_ENV: short}, check=False
    )
    assert result.returncode != 0 and "32 bytes" in result.stderr
