"""core/deadlines.py: asyncio.timeout's behaviour, with one timer for calls begun together."""

from __future__ import annotations

import asyncio

import pytest

from core.deadlines import JOIN_WINDOW, SharedDeadlines


async def answer_after(seconds: float, value: str) -> str:
    await asyncio.sleep(seconds)
    return value


async def test_each_call_gets_its_whole_timeout_and_only_late_ones_time_out() -> None:
    deadlines = SharedDeadlines()
    loop = asyncio.get_running_loop()
    started = loop.time()
    quick, slow = await asyncio.gather(
        deadlines.within(0.3, answer_after(0.05, "quick")),
        deadlines.within(0.3, answer_after(5, "slow")),
        return_exceptions=True,
    )
    assert quick == "quick"
    assert isinstance(slow, TimeoutError)
    assert 0.3 <= loop.time() - started < 0.3 + JOIN_WINDOW + 2  # not cut short


async def test_a_call_begun_later_is_not_cut_by_an_earlier_groups_timer() -> None:
    deadlines = SharedDeadlines()
    first = asyncio.create_task(deadlines.within(0.2, answer_after(5, "first")))
    await asyncio.sleep(0.1)
    second = asyncio.create_task(deadlines.within(0.2, answer_after(0.15, "second")))
    with pytest.raises(TimeoutError):
        await first
    assert await second == "second"  # 0.25 s after the first began: its own deadline


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    deadlines = SharedDeadlines()
    call = asyncio.create_task(deadlines.within(5, answer_after(10, "never")))
    await asyncio.sleep(0.05)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


async def test_a_timeout_leaves_the_task_able_to_go_on() -> None:
    deadlines = SharedDeadlines()
    with pytest.raises(TimeoutError):
        await deadlines.within(0.05, answer_after(5, "late"))
    assert asyncio.current_task().cancelling() == 0
    assert await deadlines.within(1, answer_after(0.01, "next")) == "next"
