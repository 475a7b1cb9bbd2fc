"""Which supplier plugin takes the next attempt of an order."""

from __future__ import annotations

from core.config import Config


class Router:
    def __init__(self, config: Config) -> None:
        self._routes = {name: list(s.route) for name, s in config.suppliers.items()}

    def route(self, supplier: str) -> list[str]:
        return self._routes.get(supplier, [])

    def next_plugin(self, supplier: str, tried: list[str]) -> str | None:
        """The first plugin of the route that has not had an attempt at this order."""
        for plugin in self.route(supplier):
            if plugin not in tried:
                return plugin
        return None
