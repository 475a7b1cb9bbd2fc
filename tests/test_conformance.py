"""The shipped conformance tests, run against every plugin we ship or document:
the built-in juhe and reloadly, and the example third-party plugin (acme), each
against the supplier simulator running as its own process; and against each broken
plugin of tests/mutants/, which the suite must fail."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from plugins.juhe import Juhe, JuheSettings
from plugins.reloadly import Reloadly, ReloadlySettings
from topup.testing import CallbackInbox, SimulatorUpstream, SupplierConformance, running_simulator

# pytester runs the conformance suite in process against each mutant plugin (below).
pytest_plugins = ["pytester"]

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
        "0.1",
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


# -- the suite's own power: each mutant plugin must fail it ---------------------------------

MUTANTS = Path(__file__).parent / "mutants"
# Mutant (tests/mutants/NAME.py) -> the conformance test written to catch its mistake.
CAUGHT_BY = {
    "busy_fails_over": "test_no_proper_answer_is_unknown_and_a_query_finds_the_truth[busy]",
    "undocumented_error_fails_over": (
        "test_no_proper_answer_is_unknown_and_a_query_finds_the_truth[undocumented_error]"
    ),
    "every_callback_succeeds": "test_callback_reports_the_outcome[failure]",
    "processing_callback_succeeds": "test_a_processing_callback_settles_nothing",
    "failed_callback_fails_over": "test_callback_reports_the_outcome[failure]",
    "failed_query_fails_over": "test_failure_after_acceptance_is_final_without_failover",
    "query_unguarded": "test_a_query_while_the_supplier_is_unreachable_is_unknown",
    "amount_in_yuan": "test_the_order_reaches_the_supplier_as_asked[1000]",
    "wrong_product": "test_the_order_reaches_the_supplier_as_asked[5000]",
    "query_not_implemented": "test_query_is_implemented",
}


class SharedFixtures:
    """The inner run's fixtures: this module's simulator and inbox, and the plugin class."""

    def __init__(self, simulator: str, inbox: CallbackInbox, plugin_class: type) -> None:
        self._simulator, self._inbox, self._plugin_class = simulator, inbox, plugin_class

    @pytest.fixture
    def simulator(self) -> str:
        return self._simulator

    @pytest.fixture
    def inbox(self) -> CallbackInbox:
        return self._inbox

    @pytest.fixture
    def plugin_class(self) -> type:
        return self._plugin_class

    @pytest.fixture
    def api_key(self) -> str:
        return CREDENTIALS["TOPUP_ACME_API_KEY"]

    @pytest.fixture
    def plugin_timeout(self) -> float:
        return PLUGIN_TIMEOUT


def run_suite(pytester: pytest.Pytester, fixtures: SharedFixtures, *args: str):
    """The conformance suite (tests/mutants/conformance.py) in process; its recorder."""
    return pytester.inline_run(
        str(MUTANTS / "conformance.py"),
        "--noconftest",
        "-p",
        "no:cacheprovider",
        *args,
        plugins=[fixtures],
    )


def test_the_suite_passes_the_example_plugin_as_the_mutants_run_it(
    pytester: pytest.Pytester, simulator: str, inbox: CallbackInbox, example_plugin: None
) -> None:
    """The control for the mutants below: the same run, with the correct plugin, passes."""
    from topup_acme import Acme

    recorder = run_suite(pytester, SharedFixtures(simulator, inbox, Acme))
    passed, _skipped, failed = recorder.listoutcomes()
    assert not failed, [report.longreprtext for report in failed]
    assert len(passed) > 20


@pytest.mark.parametrize("mutant", sorted(CAUGHT_BY))
def test_the_suite_fails_a_plugin_with_a_mistake_that_costs_money(
    pytester: pytest.Pytester,
    simulator: str,
    inbox: CallbackInbox,
    example_plugin: None,
    mutant: str,
) -> None:
    plugin = importlib.import_module(f"tests.mutants.{mutant}").Plugin
    # -x: one failure is the verdict; the rest of the suite would only take time.
    recorder = run_suite(pytester, SharedFixtures(simulator, inbox, plugin), "-x")
    _passed, _skipped, failed = recorder.listoutcomes()
    assert failed, f"the conformance suite passed {mutant}"
    caught = [report.nodeid.rpartition("::")[2] for report in failed]
    assert caught == [CAUGHT_BY[mutant]], (caught, failed[0].longreprtext)
    if mutant == "query_not_implemented":
        assert "does not implement query" in failed[0].longreprtext
        assert "NotImplementedError" not in failed[0].longreprtext.splitlines()[0]
