"""What each plugin costs per product, and the margin, as the console's supplier page lists."""

from __future__ import annotations

from core.config import parse_config
from core.pricing import product_costs

CONFIG = """
enabled = ["juhe", "reloadly", "sandbox"]
[suppliers."中国移动"]
route = ["reloadly", "juhe"]
products = [
  { product_id = "YD10", name = "移动10元", face_value = "10", price = "9.95", \
cost = { juhe = "9.97", reloadly = "9.90", sandbox = "9.80" } },
  { product_id = "YD50", face_value = "50", price = "49.75", cost = { juhe = "49.50" } },
]
[suppliers."中国联通"]
route = ["sandbox"]
"""


def test_costs_and_margins_per_plugin_in_route_order() -> None:
    [mobile, unicom] = product_costs(parse_config(CONFIG))
    assert mobile.carrier == "中国移动"
    # The route first, in failover order, then enabled plugins that have a cost listed.
    assert mobile.plugins == ["reloadly", "juhe", "sandbox"]
    yd10, yd50 = mobile.products
    assert (yd10.product_id, yd10.name, yd10.face_value, yd10.price) == (
        "YD10",
        "移动10元",
        1000,
        995,
    )
    assert [(c.plugin, c.cost, c.margin, c.routed) for c in yd10.costs] == [
        ("reloadly", 990, 5, True),
        ("juhe", 997, -2, True),  # a loss, shown as such
        ("sandbox", 980, 15, False),
    ]
    assert [(c.plugin, c.cost, c.margin) for c in yd50.costs] == [
        ("reloadly", None, None),
        ("juhe", 4950, 25),
        ("sandbox", None, None),
    ]
    assert (unicom.plugins, unicom.products) == (["sandbox"], [])
