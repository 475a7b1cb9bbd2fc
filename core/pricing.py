"""What each supplier plugin costs us per product, and the margin it leaves (the console's
supplier page). Amounts in fen, from plugins.toml's ``price`` and ``cost`` tables."""

from __future__ import annotations

import msgspec

from core.config import Catalog, Config


class PluginCost(msgspec.Struct, frozen=True):
    plugin: str
    # None: plugins.toml gives no cost for this plugin and product (margin unknown).
    cost: int | None
    margin: int | None
    routed: bool


class ProductCosts(msgspec.Struct, frozen=True):
    product_id: str
    name: str
    face_value: int
    price: int
    costs: list[PluginCost]


class CarrierCosts(msgspec.Struct, frozen=True):
    carrier: str
    # The routed plugins in failover order, then the others that have a cost listed.
    plugins: list[str]
    products: list[ProductCosts]


def product_costs(config: Config) -> list[CarrierCosts]:
    """Per carrier (in plugins.toml's order), each product with each plugin's cost and margin."""
    catalog = Catalog(config)
    carriers = []
    for carrier, carrier_config in config.carriers.items():
        routed = [entry.plugin for entry in carrier_config.entries]
        products = catalog.products(carrier)
        others = sorted({p for product in products for p in product.costs} - set(routed))
        plugins = routed + others
        rows = []
        for product in products:
            costs = []
            for plugin in plugins:
                cost = product.costs.get(plugin)
                margin = None if cost is None else product.price - cost
                costs.append(PluginCost(plugin, cost, margin, plugin in routed))
            rows.append(
                ProductCosts(
                    product.product_id, product.name, product.face_value, product.price, costs
                )
            )
        carriers.append(CarrierCosts(carrier, plugins, rows))
    return carriers
