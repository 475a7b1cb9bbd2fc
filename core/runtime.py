"""One consistent snapshot of the configuration: products, routes and live suppliers.

The service holds the current snapshot and swaps it whole on reload, so a request
or a dispatch step always sees one configuration, never half of two.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from core.config import Catalog, Config
from core.registry import Registry
from core.routing import Router
from core.suppliers import Supplier


@dataclass(frozen=True)
class Runtime:
    config: Config
    catalog: Catalog
    router: Router
    suppliers: dict[str, Supplier]
    # plugins.toml as read, before the operators' route overrides (core/route_overrides.py).
    file_config: Config | None = None

    @classmethod
    def build(
        cls, config: Config, registry: Registry, file_config: Config | None = None
    ) -> Runtime:
        suppliers = registry.build_suppliers(config)
        return cls(config, Catalog(config), Router(config), suppliers, file_config or config)

    async def aclose(self, grace: float = 0.0) -> None:
        """Close the suppliers, after ``grace`` seconds for calls still in flight."""
        if grace:
            await asyncio.sleep(grace)
        for supplier in self.suppliers.values():
            await supplier.aclose()
