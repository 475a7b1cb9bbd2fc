"""The conformance suite as a plugin's own package would run it, against whichever plugin
class the running test hands in. Not collected by itself: tests/test_conformance.py runs
it in process (pytester) once per mutant, with the fixtures ``simulator``, ``inbox``,
``plugin_class``, ``api_key`` and ``plugin_timeout`` provided by a plugin object."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from topup.testing import CallbackInbox, SimulatorUpstream, SupplierConformance


class TestPlugin(SupplierConformance):
    @pytest.fixture
    def upstream(self, simulator: str, inbox: CallbackInbox) -> SimulatorUpstream:
        return SimulatorUpstream(simulator, "acme", inbox)

    @pytest.fixture
    async def supplier(
        self,
        simulator: str,
        inbox: CallbackInbox,
        plugin_class: type,
        api_key: str,
        plugin_timeout: float,
        monkeypatch: pytest.MonkeyPatch,
    ) -> AsyncIterator:
        from topup_acme import AcmeSettings

        monkeypatch.setenv("TOPUP_ACME_API_KEY", api_key)
        settings = AcmeSettings(
            base_url=simulator, callback_url=f"{inbox.url}/acme", timeout=plugin_timeout
        )
        plugin = plugin_class(settings)
        yield plugin
        await plugin.aclose()
