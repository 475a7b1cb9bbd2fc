"""Abuse limits through the real API: rate limits per address and per app, the
failed-signature lock, the per-app IP allowlist, and X-Forwarded-For from trusted proxies.
No rule here needs a real process: the app is served in the test's own process
(tests/inprocess.py), its requests coming from 127.0.0.1 as a local client's would."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from core.config import ConfigError, LimitsConfig, parse_config
from core.ratelimit import AbuseGuard, ClientAddresses, KeyedLimiter, RateLimited
from tests.conftest import new_partner
from tests.inprocess import InProcessService
from tests.support import (
    Partner,
    Service,
    ServiceProcess,
    eventually,
    fresh_order_no,
    sandbox_config,
)

# A rate this small never refills during a test: a bucket holds exactly its burst.
NEVER = 0.0001


def limits(**values: object) -> str:
    lines = ["[limits]"]
    for name, value in values.items():
        text = repr(value).replace("'", '"') if isinstance(value, list) else repr(value)
        lines.append(f"{name} = {text}")
    return "\n".join(lines) + "\n"


def limited_service(in_process_services, **values: object) -> InProcessService:
    return in_process_services(sandbox_config(extra=limits(**values)))


def token_reply(partner: Partner, secret: str | None = None, **headers: str) -> httpx.Response:
    return partner.http.post("/sign/api/token", data=partner.signed({}, secret), headers=headers)


def post_order(partner: Partner, cstm_order_no: str) -> httpx.Response:
    params = partner.signed(partner.order_params(cstm_order_no))
    return partner.http.post("/sign/api/order", data=params)


def assert_rate_limited(reply: httpx.Response) -> dict:
    body = reply.json()
    assert reply.status_code == 429, body
    assert body["code"] == "1" and body["errorCode"] == "RATE_LIMITED", body
    assert body["data"] == ""
    assert int(reply.headers["retry-after"]) >= 1
    assert f"{reply.headers['retry-after']} 秒" in body["message"]
    return body


def stored(service: Service, cstm_order_no: str) -> int:
    query = "SELECT count(*) FROM orders WHERE cstm_order_no = ?"
    return service.sql(query, cstm_order_no)[0][0]


def wait_for(check, what: str):
    """Until ``check`` holds: a reload or an app change reaches the service within seconds."""
    return eventually(check, timeout=20, interval=0.2, what=what)


# -- rate limits ----------------------------------------------------------------------------


def test_address_limit_answers_429_with_retry_after_stores_nothing_and_follows_reload(
    in_process_services,
) -> None:
    service = limited_service(in_process_services, ip_rate=NEVER, ip_burst=3)
    partner = new_partner(service)
    partner.token()
    assert partner.order(fresh_order_no())["code"] == "0"
    assert partner.order(fresh_order_no())["code"] == "0"

    refused = fresh_order_no()
    body = assert_rate_limited(post_order(partner, refused))
    assert "127.0.0.1" in body["message"]
    assert stored(service, refused) == 0 and service.count_orders() == 2
    # Counted before the body is read: an unreadable one is refused the same way.
    garbage = partner.http.post(
        "/sign/api/order", content=b"\xff\xfe", headers={"content-type": "text/plain"}
    )
    assert_rate_limited(garbage)

    service.config_path.write_text(sandbox_config(extra=limits(ip_rate=0)), encoding="utf-8")
    service.cli("reload")
    again = fresh_order_no()
    wait_for(lambda: post_order(partner, again).json()["code"] == "0", "the reload applied")
    assert stored(service, again) == 1


def test_app_limit_counts_only_signed_calls_and_spares_other_apps(in_process_services) -> None:
    service = limited_service(in_process_services, app_rate=NEVER, app_burst=3)
    victim, other = new_partner(service), new_partner(service)
    stranger = service.http_client()
    ts = str(int(time.time()))
    for n in range(30):
        forged = {"appID": victim.app_id, "ts": ts, "sign": f"{n:064x}"}
        assert stranger.post("/sign/api/token", data=forged).json()["code"] == "1"
        assert stranger.post("/sign/api/token", data={"appID": victim.app_id}).json()["code"] == "1"

    # The flood spent none of the victim's budget of three calls: a token and two orders.
    victim.token()
    assert victim.order(fresh_order_no())["code"] == "0"
    assert victim.order(fresh_order_no())["code"] == "0"
    refused = fresh_order_no()
    body = assert_rate_limited(post_order(victim, refused))
    assert victim.app_id in body["message"]
    assert stored(service, refused) == 0
    # Another app has a budget of its own.
    other.token()
    assert other.order(fresh_order_no())["code"] == "0"


def test_a_thousand_bad_signatures_lock_only_that_apps_wrong_signatures(
    in_process_services,
) -> None:
    # The address limit is off: the thousand requests all come from one address.
    service = limited_service(in_process_services, ip_rate=0, bad_signature_window=3600)
    victim, other = new_partner(service), new_partner(service)
    replies = [token_reply(victim, secret=f"guess-{n:06d}-of-a-secret") for n in range(1000)]
    codes = [reply.json()["errorCode"] for reply in replies]

    assert codes[:20] == ["BAD_SIGNATURE"] * 20
    assert set(codes[20:]) == {"RATE_LIMITED"}
    for reply in replies[20:25]:
        assert "签名错误次数过多" in assert_rate_limited(reply)["message"]

    # During the lock the app's correctly signed calls go through as ever.
    assert token_reply(victim).json()["code"] == "0"
    cstm = fresh_order_no()
    assert victim.order(cstm)["code"] == "0"
    assert stored(service, cstm) == 1
    assert_rate_limited(token_reply(victim, secret="still-a-wrong-secret"))
    # Another app is not locked.
    assert token_reply(other, secret="a-wrong-secret-too").json()["errorCode"] == "BAD_SIGNATURE"
    assert token_reply(other).json()["code"] == "0"


# -- the IP allowlist -----------------------------------------------------------------------


def test_allowlist_refuses_other_addresses_and_can_be_cleared(in_process: InProcessService) -> None:
    service = in_process
    partner = new_partner(service)
    service.cli("app", "set", partner.app_id, "--allow-ip", "203.0.113.0/24")
    assert "allowed IPs:  203.0.113.0/24" in service.cli("app", "show", partner.app_id).stdout

    refused = wait_for(
        lambda: (
            (reply := token_reply(partner)).json().get("errorCode") == "IP_NOT_ALLOWED" and reply
        ),
        "the allowlist applied",
    )
    body = refused.json()
    assert refused.status_code == 200 and body["code"] == "1", body
    assert "127.0.0.1" in body["message"] and partner.app_id in body["message"]

    service.cli("app", "set", partner.app_id, "--allow-ip", "127.0.0.1/32,203.0.113.0/24")
    wait_for(lambda: token_reply(partner).json()["code"] == "0", "127.0.0.1/32 allowed")
    assert partner.order(fresh_order_no())["code"] == "0"

    service.cli("app", "set", partner.app_id, "--allow-ip", "198.51.100.0/24")
    wait_for(
        lambda: token_reply(partner).json().get("errorCode") == "IP_NOT_ALLOWED",
        "the narrower allowlist applied",
    )
    cstm = fresh_order_no()
    assert post_order(partner, cstm).json()["errorCode"] == "IP_NOT_ALLOWED"
    assert stored(service, cstm) == 0

    service.cli("app", "set", partner.app_id, "--allow-ip", "")
    assert "allowed IPs:  any" in service.cli("app", "show", partner.app_id).stdout
    wait_for(lambda: token_reply(partner).json()["code"] == "0", "the allowlist cleared")


def test_an_app_change_reaches_a_running_service_as_its_app_cache_allows(
    in_process_services,
) -> None:
    """TOPUP_APP_CACHE_SECONDS: 0 reads the app on every request; a long one keeps what
    the service read until it runs out."""
    uncached = in_process_services(sandbox_config(), env={"TOPUP_APP_CACHE_SECONDS": "0"})
    cached = in_process_services(sandbox_config(), env={"TOPUP_APP_CACHE_SECONDS": "600"})
    partners = [new_partner(uncached), new_partner(cached)]
    for service, partner in zip((uncached, cached), partners, strict=True):
        assert token_reply(partner).json()["code"] == "0"  # the app read, and kept
        service.cli("app", "set", partner.app_id, "--allow-ip", "203.0.113.0/24")
    assert token_reply(partners[0]).json()["errorCode"] == "IP_NOT_ALLOWED"
    assert token_reply(partners[1]).json()["code"] == "0"


def test_allow_ip_refuses_a_malformed_block(tmp_path: Path) -> None:
    service = ServiceProcess(tmp_path, sandbox_config())
    service.add_app("acme", "阿克米")
    result = service.cli(
        "app", "set", "acme", "--allow-ip", "203.0.113.0/24,10.0.0.300/8", check=False
    )
    assert result.returncode != 0
    assert "--allow-ip" in result.stderr
    assert "'10.0.0.300/8' is not an IP address or CIDR block" in result.stderr
    assert "Traceback" not in result.stderr
    assert "allowed IPs:  any" in service.cli("app", "show", "acme").stdout


# -- X-Forwarded-For ------------------------------------------------------------------------


def spend(service: Service, forwarded_for: str) -> str:
    """An unsigned call (refused, but counted against the caller's address)."""
    with service.http_client() as client:
        reply = client.post("/sign/api/token", headers={"X-Forwarded-For": forwarded_for})
    return reply.json()["errorCode"]


def test_forwarded_for_is_believed_from_a_trusted_proxy(in_process_services) -> None:
    proxied = limited_service(
        in_process_services, ip_rate=NEVER, ip_burst=2, trusted_proxies=["127.0.0.1/32"]
    )
    partner = new_partner(proxied)
    proxied.cli("app", "set", partner.app_id, "--allow-ip", "198.51.100.0/24")

    # The right-most address that is not a trusted proxy is the client's.
    forwarded = {"X-Forwarded-For": "203.0.113.9, 198.51.100.7"}
    assert token_reply(partner, **forwarded).json()["code"] == "0"
    spoofed = {"X-Forwarded-For": "198.51.100.7, 203.0.113.9"}
    assert token_reply(partner, **spoofed).json()["errorCode"] == "IP_NOT_ALLOWED"
    assert token_reply(partner).json()["errorCode"] == "IP_NOT_ALLOWED"  # 127.0.0.1 itself

    # Each forwarded address has a budget of its own.
    assert [spend(proxied, "198.51.100.1") for _ in range(3)] == [
        "MISSING_PARAMETER",
        "MISSING_PARAMETER",
        "RATE_LIMITED",
    ]
    assert spend(proxied, "198.51.100.2") == "MISSING_PARAMETER"
    assert spend(proxied, "198.51.100.2, 198.51.100.1") == "RATE_LIMITED"


def test_forwarded_for_is_ignored_from_anyone_else(in_process_services) -> None:
    direct = limited_service(in_process_services, ip_rate=NEVER, ip_burst=2)
    partner = new_partner(direct)
    direct.cli("app", "set", partner.app_id, "--allow-ip", "198.51.100.0/24")

    reply = token_reply(partner, **{"X-Forwarded-For": "198.51.100.7"})
    assert reply.json()["errorCode"] == "IP_NOT_ALLOWED"
    assert "127.0.0.1" in reply.json()["message"]
    # Every call counts against 127.0.0.1, whatever it claims to forward.
    assert spend(direct, "198.51.100.1") == "MISSING_PARAMETER"
    assert spend(direct, "198.51.100.2") == "RATE_LIMITED"
    assert spend(direct, "198.51.100.3") == "RATE_LIMITED"


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[limits]\nip_rate = -5", "`float` >= 0.0 - at `$.limits.ip_rate`"),
        ("[limits]\napp_burst = 0", "`int` >= 1 - at `$.limits.app_burst`"),
        ("[limits]\nip_rat = 5", "unknown field `ip_rat` - at `$.limits`"),
        (
            '[limits]\ntrusted_proxies = ["10.0.0.0/33"]',
            "limits.trusted_proxies[0]: '10.0.0.0/33' is not an IP address or CIDR block",
        ),
    ],
)
def test_reload_refuses_bad_limits_with_the_key(tmp_path: Path, toml: str, message: str) -> None:
    service = ServiceProcess(tmp_path, sandbox_config(extra=toml))
    result = service.cli("reload", check=False)
    assert result.returncode != 0
    assert "invalid configuration" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_negative_rate(tmp_path: Path) -> None:
    service = ServiceProcess(tmp_path, sandbox_config(extra="[limits]\napp_rate = -1"))
    result = service.cli("serve", check=False)
    assert result.returncode != 0 and "$.limits.app_rate" in result.stderr


def test_defaults_are_on_and_documented_in_the_shipped_file() -> None:
    defaults = parse_config("").limits
    assert defaults.ip_rate > 0 and defaults.app_rate > 0 and defaults.trusted_proxies == []
    shipped = (Path(__file__).resolve().parent.parent / "plugins.toml").read_text()
    for name in LimitsConfig.__struct_fields__:
        assert f"# {name} = " in shipped, name


# -- the limiter itself ---------------------------------------------------------------------


def test_limiter_memory_stays_bounded_under_many_addresses() -> None:
    limiter = KeyedLimiter(rate=10, burst=20, max_keys=1000)
    for n in range(200_000):
        assert limiter.take(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", now=n * 1e-4) == 0
        assert len(limiter) <= 1000
    # Idle buckets (full again) are dropped at the next sweep.
    limiter.take("late", now=10_000.0)
    assert len(limiter) == 1


def test_limiter_is_a_token_bucket() -> None:
    limiter = KeyedLimiter(rate=2, burst=3, max_keys=10)
    assert [limiter.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a", now=0.0) == pytest.approx(0.5)
    assert limiter.take("b", now=0.0) == 0.0
    assert limiter.take("a", now=0.5) == 0.0


def test_failed_signature_lock_and_its_refusal() -> None:
    now = [0.0]
    guard = AbuseGuard(
        LimitsConfig(bad_signatures=3, bad_signature_window=60, bad_signature_lock=100),
        clock=lambda: now[0],
    )
    assert [guard.signature_failed("a") for _ in range(3)] == [None, None, None]
    refusal = guard.signature_failed("a")
    assert isinstance(refusal, RateLimited) and refusal.retry_after == 100
    assert guard.signature_failed("b") is None
    now[0] = 100.5
    assert guard.signature_failed("a") is None


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("10.0.0.2", "203.0.113.9", "203.0.113.9"),
        ("10.0.0.2", "198.51.100.1, 203.0.113.9", "203.0.113.9"),
        ("10.0.0.2", "203.0.113.9, 10.0.0.3", "203.0.113.9"),
        ("10.0.0.2", "10.0.0.4, 10.0.0.3", "10.0.0.4"),
        ("10.0.0.2", "", "10.0.0.2"),
        ("192.0.2.1", "203.0.113.9", "192.0.2.1"),
        ("::ffff:10.0.0.2", "2001:db8::1", "2001:db8::1"),
    ],
)
def test_client_address_from_forwarded_for(peer: str, forwarded: str, client: str) -> None:
    addresses = ClientAddresses(LimitsConfig(trusted_proxies=["10.0.0.0/8"]).proxy_networks)
    assert addresses.client(peer, forwarded) == client


def test_config_error_names_a_bad_proxy() -> None:
    with pytest.raises(ConfigError, match=r"limits\.trusted_proxies\[1\]: 'proxy'"):
        parse_config('[limits]\ntrusted_proxies = ["10.0.0.0/8", "proxy"]')
