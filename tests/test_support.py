"""The test harness's own rules: ``eventually`` waits for a condition and says why it
never held."""

from __future__ import annotations

import pytest

from tests.support import eventually, eventually_async


def test_eventually_returns_the_first_value_that_holds() -> None:
    answers = iter([None, [], {"ready": True}])
    assert eventually(lambda: next(answers), timeout=5, interval=0) == {"ready": True}


def test_eventually_retries_a_failing_assertion() -> None:
    tries = []

    def check() -> bool:
        tries.append(1)
        assert len(tries) >= 3, "not yet"
        return True

    assert eventually(check, timeout=5, interval=0) is True
    assert len(tries) == 3


def test_eventually_fails_with_what_was_awaited_and_the_last_assertion() -> None:
    def check() -> bool:
        raise AssertionError("state ['pending']")

    awaited = r"the order final did not hold within 0\.05 s"
    with pytest.raises(AssertionError, match=awaited) as info:
        eventually(check, timeout=0.05, interval=0.01, what="the order final")
    assert "last assertion: state ['pending']" in str(info.value)
    assert isinstance(info.value.__cause__, AssertionError)


def test_eventually_fails_with_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"last value: \[\]"):
        eventually(lambda: [], timeout=0.05, interval=0.01)


def test_an_error_that_is_not_an_assertion_is_not_retried() -> None:
    calls = []

    def check() -> bool:
        calls.append(1)
        raise RuntimeError("the simulator exited")

    with pytest.raises(RuntimeError):
        eventually(check, timeout=5)
    assert calls == [1]


async def test_eventually_async_awaits_a_coroutine_check() -> None:
    answers = iter([0, 0, 7])

    async def check() -> int:
        return next(answers)

    assert await eventually_async(check, timeout=5, interval=0) == 7
