"""Which supplier plugin takes the next attempt of an order.

A Supplier's route lists plugins in failover order. Entries with a weight share the
first attempts between them (3:1 sends about three orders in four to the first);
the rest of the route, in the order written, is the failover chain. The choice is
derived from the order number, so it is the same after a restart or on another
instance. A plugin whose circuit is open is skipped.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import msgspec

from core.config import Catalog, Config, RouteEntry


class Router:
    def __init__(self, config: Config) -> None:
        self._routes = {name: s.entries for name, s in config.carriers.items()}
        # A route with one weighted plugin (or none) needs no draw, so every order tries
        # its plugins in the same order: worked out once, not per order.
        self._fixed = {
            name: _preference(entries, order_no="")
            for name, entries in self._routes.items()
            if sum(1 for e in entries if e.weight > 0) <= 1
        }

    def route(self, carrier: str) -> list[str]:
        return [entry.plugin for entry in self._routes.get(carrier, [])]

    def preference(self, carrier: str, order_no: str) -> list[str]:
        """The plugins in the order this particular order tries them (do not change it)."""
        fixed = self._fixed.get(carrier)
        if fixed is not None:
            return fixed
        return _preference(self._routes.get(carrier, []), order_no)

    def next_plugin(
        self,
        carrier: str,
        order_no: str,
        tried: list[str],
        available: Callable[[str], bool] = lambda _plugin: True,
    ) -> str | None:
        for plugin in self.preference(carrier, order_no):
            if plugin not in tried and available(plugin):
                return plugin
        return None


def _preference(entries: list[RouteEntry], order_no: str) -> list[str]:
    weighted = [e for e in entries if e.weight > 0]
    # One weighted plugin (or none) needs no draw: seeding a generator per order costs
    # more than the rest of the choice.
    if len(weighted) <= 1:
        first = [e.plugin for e in weighted]
    else:
        first = _weighted_order(weighted, random.Random(order_no))
    return first + [e.plugin for e in entries if e.plugin not in first]


def _weighted_order(entries: list[RouteEntry], rng: random.Random) -> list[str]:
    remaining = list(entries)
    chosen: list[str] = []
    while remaining:
        pick = rng.choices(remaining, weights=[e.weight for e in remaining])[0]
        chosen.append(pick.plugin)
        remaining.remove(pick)
    return chosen


class CircuitBreaker:
    """Skips a plugin after ``threshold`` consecutive transient refusals, for ``cooldown``.

    When the cool-down has passed the plugin is tried again; one more transient
    refusal opens it again at once, a success or an acknowledgement closes it. State is per process:
    each instance finds out for itself (and publishes what it found, core/circuits.py).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures: dict[str, int] = {}
        self._open_until: dict[str, float] = {}

    def available(self, plugin: str) -> bool:
        return self._clock() >= self._open_until.get(plugin, 0.0)

    def record_success(self, plugin: str) -> bool:
        """Close the circuit; True when it had been opened (so its closing is news)."""
        self._failures.pop(plugin, None)
        return self._open_until.pop(plugin, None) is not None

    def record_failure(self, plugin: str, threshold: int, cooldown: float) -> bool:
        """Count a transient refusal; True when this opened the circuit."""
        failures = self._failures.get(plugin, 0) + 1
        self._failures[plugin] = failures
        if failures >= threshold and self.available(plugin):
            self._open_until[plugin] = self._clock() + cooldown
            return True
        return False

    def open_plugins(self) -> list[str]:
        return [plugin for plugin in self._open_until if not self.available(plugin)]


class Choice(msgspec.Struct, frozen=True):
    """The supplier plugin that takes an order's next attempt, and what it should cost."""

    plugin: str
    cost: int | None


class RoutePlan:
    """Routing decided before the transaction that records it.

    A snapshot of the configuration (routes, costs), the enabled plugins and the open
    circuits, taken when the dispatcher claims work: the lifecycle asks it which plugin
    an order tries next, with the plugins the order has tried, and nothing else.
    """

    def __init__(self, router: Router, catalog: Catalog, usable: frozenset[str]) -> None:
        self._router = router
        self._catalog = catalog
        self._usable = usable

    def choose(
        self, carrier: str, order_no: str, product_id: str, tried: list[str]
    ) -> Choice | None:
        plugin = self._router.next_plugin(carrier, order_no, tried, self._usable.__contains__)
        if plugin is None:
            return None
        product = self._catalog.product(carrier, product_id)
        return Choice(plugin, product.costs.get(plugin) if product else None)
