"""The shipped conformance tests, run against every plugin we ship or document:
the built-in juhe and reloadly, and the example third-party plugin (acme), each
against the supplier simulator running as its own process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from plugins.juhe import Juhe, JuheSettings
from plugins.reloadly import Reloadly, ReloadlySettings
from topup.testing import CallbackInbox, SimulatorUpstream, SupplierConformance, running_simulator

CREDENTIALS = {
    "TOPUP_JUHE_KEY": "juhe-test-key",
    "TOPUP_JUHE_OPENID": "JHtestopenid",
    "TOPUP_RELOADLY_CLIENT_ID": "reloadly-client",
    "TOPUP_RELOADLY_CLIENT_SECRET": "reloadly-secret",
    "TOPUP_RELOADLY_WEBHOOK_SECRET": "reloadly-webhook-secret",
    "TOPUP_ACME_API_KEY": "acme-key",
}
# Short enough that the "timeout" fault is over in a second, long enough for loopback.
PLUGIN_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def inbox() -> Iterator[CallbackInbox]:
    inbox = CallbackInbox()
    yield inbox
    inbox.close()


@pytest.fixture(scope="module")
def simulator(inbox: CallbackInbox) -> Iterator[str]:
    with running_simulator(
        "--settle",
        "0.3",
        "--callback-interval",
        "0.2",
        "--token-ttl",
        "2",
        "--juhe-callback",
        f"{inbox.url}/juhe",
        "--reloadly-webhook",
        f"{inbox.url}/reloadly",
        env=CREDENTIALS,
    ) as url:
        yield url


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


class TestJuhe(SupplierConformance):
    @pytest.fixture
    def upstream(self, simulator: str, inbox: CallbackInbox) -> SimulatorUpstream:
        return SimulatorUpstream(simulator, "juhe", inbox)

    @pytest.fixture
    async def supplier(self, simulator: str, credentials: None) -> AsyncIterator[Juhe]:
        juhe = Juhe(JuheSettings(base_url=simulator, timeout=PLUGIN_TIMEOUT))
        yield juhe
        await juhe.aclose()


class TestReloadly(SupplierConformance):
    @pytest.fixture
    def upstream(self, simulator: str, inbox: CallbackInbox) -> SimulatorUpstream:
        return SimulatorUpstream(simulator, "reloadly", inbox)

    @pytest.fixture
    async def supplier(self, simulator: str, credentials: None) -> AsyncIterator[Reloadly]:
        settings = ReloadlySettings(
            base_url=simulator,
            auth_url=simulator,
            operators={"中国移动": 1},
            timeout=PLUGIN_TIMEOUT,
        )
        reloadly = Reloadly(settings)
        yield reloadly
        await reloadly.aclose()


class TestExamplePlugin(SupplierConformance):
    """The third-party example, imported from its installed distribution."""

    @pytest.fixture
    def upstream(self, simulator: str, inbox: CallbackInbox) -> SimulatorUpstream:
        return SimulatorUpstream(simulator, "acme", inbox)

    @pytest.fixture
    async def supplier(
        self, simulator: str, inbox: CallbackInbox, credentials: None, example_plugin: None
    ):
        from topup_acme import Acme, AcmeSettings

        acme = Acme(
            AcmeSettings(
                base_url=simulator, callback_url=f"{inbox.url}/acme", timeout=PLUGIN_TIMEOUT
            )
        )
        yield acme
        await acme.aclose()


async def test_reloadly_refreshes_a_stale_token_and_sends_once(
    simulator: str, inbox: CallbackInbox, credentials: None
) -> None:
    from topup.testing import SUCCEED, new_order

    upstream = SimulatorUpstream(simulator, "reloadly", inbox)
    reloadly = Reloadly(
        ReloadlySettings(base_url=simulator, auth_url=simulator, operators={"中国移动": 1})
    )
    try:
        # A token the supplier no longer honours, cached as if it were still good.
        reloadly._token = ("expired-long-ago", float("inf"))
        order = new_order(upstream.phone(SUCCEED))
        result = await reloadly.submit(order)
        assert result.outcome.value in ("pending", "succeeded"), result
        assert upstream.submissions(order.reference) == 1
        assert reloadly._token[0] != "expired-long-ago"
    finally:
        await reloadly.aclose()


async def test_reloadly_without_an_operator_for_the_carrier_fails_over(
    simulator: str, credentials: None
) -> None:
    from topup.testing import new_order

    reloadly = Reloadly(ReloadlySettings(base_url=simulator, auth_url=simulator, operators={}))
    try:
        result = await reloadly.submit(new_order("13800000001"))
        assert result.outcome.value == "failed" and result.failover
    finally:
        await reloadly.aclose()


async def test_unreachable_supplier_is_not_sent_and_may_fail_over(credentials: None) -> None:
    from topup.testing import free_port, new_order

    juhe = Juhe(JuheSettings(base_url=f"http://127.0.0.1:{free_port()}", timeout=1))
    try:
        result = await juhe.submit(new_order("13800000001"))
        assert (result.outcome.value, result.code, result.failover) == ("failed", "NOT_SENT", True)
    finally:
        await juhe.aclose()


def test_plugins_refuse_to_start_without_their_credentials(monkeypatch) -> None:
    from topup import SupplierConfigError

    monkeypatch.delenv("TOPUP_JUHE_KEY", raising=False)
    with pytest.raises(SupplierConfigError, match="TOPUP_JUHE_KEY"):
        Juhe(JuheSettings())
