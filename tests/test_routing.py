"""Routing rules: weights, failover order, and the circuit breaker."""

from __future__ import annotations

from collections import Counter

import pytest

from core.config import ConfigError, parse_config
from core.routing import CircuitBreaker, Router

WEIGHTED = """
enabled = ["a", "b", "c"]
[suppliers."中国移动"]
route = [{ plugin = "a", weight = 3 }, { plugin = "b", weight = 1 }, "c"]
"""


def test_plain_route_is_a_failover_chain() -> None:
    router = Router(parse_config('enabled = ["a", "b"]\n[suppliers."X"]\nroute = ["a", "b"]'))
    assert router.preference("X", "TP1") == ["a", "b"]
    assert router.next_plugin("X", "TP1", ["a"]) == "b"
    assert router.next_plugin("X", "TP1", ["a", "b"]) is None


def test_weights_share_first_attempts_and_the_rest_is_the_chain() -> None:
    router = Router(parse_config(WEIGHTED))
    firsts = Counter(router.preference("中国移动", f"TP{n}")[0] for n in range(4000))
    assert set(firsts) == {"a", "b"}
    assert 0.70 < firsts["a"] / 4000 < 0.80
    for n in range(50):
        order = router.preference("中国移动", f"TP{n}")
        assert sorted(order[:2]) == ["a", "b"] and order[2] == "c"


def test_the_choice_is_the_same_for_the_same_order() -> None:
    one, two = Router(parse_config(WEIGHTED)), Router(parse_config(WEIGHTED))
    for n in range(100):
        assert one.preference("中国移动", f"TP{n}") == two.preference("中国移动", f"TP{n}")


def test_open_circuit_is_skipped() -> None:
    router = Router(parse_config('enabled = ["a", "b"]\n[suppliers."X"]\nroute = ["a", "b"]'))
    assert router.next_plugin("X", "TP1", [], available=lambda p: p != "a") == "b"


@pytest.mark.parametrize(
    ("route", "message"),
    [('["a", "a"]', "twice"), ('[{ plugin = "a", weight = -1 }]', "negative")],
)
def test_bad_routes_are_refused(route: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(f'enabled = ["a"]\n[suppliers."X"]\nroute = {route}')


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_recovers_after_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(clock)
    assert not breaker.record_failure("a", threshold=3, cooldown=60)
    assert not breaker.record_failure("a", threshold=3, cooldown=60)
    assert breaker.available("a")
    assert breaker.record_failure("a", threshold=3, cooldown=60)
    assert not breaker.available("a") and breaker.open_plugins() == ["a"]
    clock.now += 61
    assert breaker.available("a")  # tried again after the cool-down
    assert breaker.record_failure("a", threshold=3, cooldown=60)  # one more failure: open again
    clock.now += 61
    breaker.record_success("a")
    assert breaker.available("a")
    assert not breaker.record_failure("a", threshold=3, cooldown=60)  # counting from zero


def test_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker(Clock())
    breaker.record_failure("a", threshold=2, cooldown=60)
    breaker.record_success("a")
    assert not breaker.record_failure("a", threshold=2, cooldown=60)
    assert breaker.available("a")


def test_a_success_reports_whether_it_closed_an_open_circuit() -> None:
    # The dispatcher publishes only changes (core/circuits.py): a success that closes
    # nothing must not cost a write.
    clock = Clock()
    breaker = CircuitBreaker(clock)
    assert not breaker.record_success("a")
    breaker.record_failure("a", threshold=1, cooldown=60)
    clock.now += 61
    assert breaker.record_success("a")
    assert not breaker.record_success("a")
