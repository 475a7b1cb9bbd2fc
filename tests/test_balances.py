"""Our balance with a supplier: juhe's 余额 call against the simulator, and the console's
cache, which never makes a page wait for a supplier."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from core.balances import BalanceCache
from core.suppliers import Supplier, SupplierResult, UpstreamOrder
from plugins.juhe import BalanceError, Juhe, JuheSettings
from tests.support import eventually_async
from tests.test_conformance import CREDENTIALS
from topup.testing import new_order, running_simulator, settle


@pytest.fixture(scope="module")
def simulator() -> Iterator[str]:
    with running_simulator("--settle", "0.2", env=CREDENTIALS) as url:
        yield url


@pytest.fixture
async def juhe(simulator: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Juhe]:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    plugin = Juhe(JuheSettings(base_url=simulator, timeout=2.0))
    yield plugin
    await plugin.aclose()


async def test_juhe_tells_its_balance_in_fen_and_a_top_up_takes_its_price(juhe: Juhe) -> None:
    before = await juhe.balance()
    assert isinstance(before, int) and before > 0
    await juhe.submit(new_order("13800138001"))
    # Taken on acceptance; the simulator keeps 0.3%, so a 10 yuan top-up costs 9.97.
    assert before - await juhe.balance() == 997
    failing = new_order("13800138004")
    await juhe.submit(failing)
    assert before - await juhe.balance() == 2 * 997
    await settle(juhe, failing)  # a failed top-up is given back
    assert before - await juhe.balance() == 997


async def test_a_refused_balance_query_raises_with_juhe_s_reason(
    simulator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOPUP_JUHE_KEY", "not-the-key")
    monkeypatch.setenv("TOPUP_JUHE_OPENID", CREDENTIALS["TOPUP_JUHE_OPENID"])
    plugin = Juhe(JuheSettings(base_url=simulator))
    try:
        with pytest.raises(BalanceError, match="10001"):
            await plugin.balance()
    finally:
        await plugin.aclose()


class BalanceOnly(Supplier):
    """A supplier these tests ask only about balances."""

    async def submit(self, order: UpstreamOrder) -> SupplierResult:
        raise AssertionError("a balance test submitted an order")

    async def query(self, order: UpstreamOrder) -> SupplierResult:
        raise AssertionError("a balance test queried an order")


class Silent(BalanceOnly):
    """A supplier that never answers a balance query."""

    name = "silent"

    async def balance(self) -> int | None:
        await asyncio.Event().wait()
        return 0


class Unsupported(BalanceOnly):
    name = "unsupported"


async def test_the_cache_answers_at_once_and_refreshes_in_the_background(juhe: Juhe) -> None:
    suppliers = {"juhe": juhe, "silent": Silent(None), "unsupported": Unsupported(None)}
    cache = BalanceCache(lambda: suppliers, max_age=60, timeout=0.5)
    first = cache.read()  # nothing known yet; a refresh starts
    assert {name: b.fen for name, b in first.items()} == dict.fromkeys(suppliers)
    # The silent plugin's timeout is the last of the refresh to end.
    await eventually_async(lambda: cache.read()["silent"].error, timeout=5, what="a refresh")
    known = cache.read()
    assert known["juhe"].fen == await juhe.balance() and known["juhe"].checked_at
    assert known["silent"].fen is None and known["silent"].error == "no answer in time"
    assert not known["unsupported"].supported
    # Within max_age a read starts nothing new: the figures stay as they were.
    await juhe.submit(new_order("13800138002"))
    # Kept as a sleep: a refresh not started leaves no event to await; 0.1 s is ample for one
    # against the local simulator to have changed the figure.
    await asyncio.sleep(0.1)
    assert cache.read()["juhe"].fen == known["juhe"].fen
    await cache.stop()


def test_the_simulator_refuses_a_balance_query_with_a_bad_sign(simulator: str) -> None:
    params = {"timestamp": "1", "key": CREDENTIALS["TOPUP_JUHE_KEY"], "sign": "0" * 32}
    reply = httpx.get(f"{simulator}/ofpay/mobile/yue", params=params).json()
    assert reply["error_code"] == 208505
