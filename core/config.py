"""``plugins.toml``: which supplier plugins run, and which serve each Supplier name.

The file is decoded into typed structs, so a typo or a wrong type is refused with
the path of the offending key rather than discovered at the first order.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import msgspec

from core.addresses import Network, parse_network, parse_networks
from core.money import yuan_to_fen


class ConfigError(Exception):
    """plugins.toml cannot be used; the message says where and why."""


class ProductConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    product_id: str
    face_value: Decimal
    # What the partner pays.
    price: Decimal
    name: str = ""
    # What each supplier plugin charges us for it, e.g. { juhe = "9.97" }: the margin.
    cost: dict[str, Decimal] = {}


class RouteEntry(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    plugin: str
    # Share of first attempts; 0 (the default) makes the plugin a failover target only.
    weight: int = 0


class CarrierConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Plugins in failover order: names, or {plugin = NAME, weight = N} tables.
    route: list[str | RouteEntry]
    products: list[ProductConfig] = []

    @property
    def entries(self) -> list[RouteEntry]:
        return [RouteEntry(e) if isinstance(e, str) else e for e in self.route]


class DispatchConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Seconds to wait before each status query of an order whose outcome is open;
    # the last delay repeats.
    query_delays: list[float] = msgspec.field(
        default_factory=lambda: [2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]
    )
    # Hard limit on any single call into a supplier plugin, on top of the plugin's own.
    call_timeout: float = 20.0
    # How long a worker owns an order it is working on; another worker (or this one
    # after a crash) takes an order over once its lease has run out, or sooner once the
    # worker's heartbeat has stopped (takeover_seconds).
    lease_seconds: float = 60.0
    # How often each background worker (dispatcher, notifier) writes its heartbeat.
    heartbeat_seconds: float = 1.0
    # A worker whose heartbeat is older than this is taken for dead: its orders and
    # notifications are taken over at once rather than when their leases run out. A live
    # worker keeps what it holds however long a supplier takes (its heartbeat runs apart).
    takeover_seconds: float = 5.0
    # Orders worked on at once (upstream calls in flight), per background process.
    concurrency: int = 500
    # Orders claimed per transaction: small claims keep the write lock short, which is
    # what other writers (order acceptance) wait on.
    claim_batch: int = 64
    # While claims keep coming back full (a backlog), each claim takes twice as many as
    # the one before, up to this many: the worker then keeps pace with what is accepted,
    # and acceptance slows instead of the backlog growing. A claim that comes back short
    # starts again from claim_batch.
    max_claim_batch: int = 256
    # How often the dispatcher looks for due work when nothing woke it.
    scan_interval: float = 0.5
    # Unanswered status queries (pending or unknown) before an order goes to manual review.
    max_queries: int = 30
    # A plugin whose supplier refuses a reused reference, asked about an attempt it says
    # it never received, has that attempt sent again (once) only if the attempt is older
    # than call_timeout plus this many seconds: sooner, the first request may still be
    # on its way.
    resend_margin: float = 30.0
    # Consecutive transient refusals that open a plugin's circuit, and how long it stays open.
    breaker_threshold: int = 5
    breaker_cooldown: float = 60.0


class NotifyConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Seconds between delivery attempts to a partner's notify URL: seconds at first, then
    # hours. After the last one the notification is given up (and an alert logged).
    schedule: list[float] = msgspec.field(
        default_factory=lambda: [
            5.0,
            15.0,
            30.0,
            60.0,
            120.0,
            300.0,
            600.0,
            1800.0,
            3600.0,
            7200.0,
            14400.0,
            21600.0,
            43200.0,
        ]
    )
    # Hard limit on one delivery, in seconds.
    timeout: float = 10.0
    concurrency: int = 50
    scan_interval: float = 0.5


# Requests per second; 0 turns the limit off.
PerSecond = Annotated[float, msgspec.Meta(ge=0)]
AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]


class LimitsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Abuse limits on the partner API, kept by each process for itself (core/ratelimit.py).

    The defaults are far above what a partner's integration sends and far below what a
    flood does; a limit is a token bucket: ``rate`` per second, up to ``burst`` at once.
    """

    # Per client address, counted before the request body is even read.
    ip_rate: PerSecond = 400.0
    ip_burst: AtLeastOne = 800
    # Per app, counted only once the signature checks out: a stranger sending requests
    # with someone else's appID spends his address's budget, never the app's.
    app_rate: PerSecond = 200.0
    app_burst: AtLeastOne = 400
    # More than ``bad_signatures`` wrong signatures for one appID within
    # ``bad_signature_window`` seconds: for ``bad_signature_lock`` seconds its wrong
    # signatures are answered RATE_LIMITED; its correctly signed calls are unaffected.
    bad_signatures: AtLeastOne = 20
    bad_signature_window: PositiveSeconds = 60.0
    bad_signature_lock: PositiveSeconds = 300.0
    # Addresses (CIDR blocks) of the reverse proxies in front of the service: only a
    # request from one of them has its X-Forwarded-For believed. Default: nobody.
    trusted_proxies: list[str] = []
    # Buckets kept per limit; idle (full) buckets are dropped first, so memory stays
    # bounded however many addresses call.
    max_tracked: AtLeastOne = 100_000

    @property
    def proxy_networks(self) -> tuple[Network, ...]:
        return parse_networks(self.trusted_proxies)


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    enabled: list[str] = []
    plugin: dict[str, dict[str, Any]] = {}
    # [suppliers."中国移动"] in plugins.toml: each carrier (the partner's Supplier) with
    # its route through supplier plugins and its products.
    carriers: dict[str, CarrierConfig] = msgspec.field(default_factory=dict, name="suppliers")
    dispatch: DispatchConfig = DispatchConfig()
    notify: NotifyConfig = NotifyConfig()
    limits: LimitsConfig = LimitsConfig()


class Product(msgspec.Struct, frozen=True):
    """A product a partner can order, with amounts in fen."""

    carrier: str
    product_id: str
    name: str
    face_value: int
    price: int
    costs: dict[str, int] = {}


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return parse_config(raw, source=str(path))


def parse_config(raw: bytes | str, source: str = "plugins.toml") -> Config:
    try:
        config = msgspec.toml.decode(raw, type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    check_config(config, source)
    return config


def check_config(config: Config, source: str) -> None:
    """Every check a configuration passes before it runs: a file at start or reload, and
    the file with the operators' route overrides applied (core/route_overrides.py)."""
    dispatch = config.dispatch
    if not dispatch.query_delays or min(dispatch.query_delays) <= 0:
        raise ConfigError(f"{source}: dispatch.query_delays needs positive delays")
    if not config.notify.schedule or min(config.notify.schedule) <= 0:
        raise ConfigError(f"{source}: notify.schedule needs positive delays")
    if dispatch.max_queries < 1 or dispatch.breaker_threshold < 1:
        raise ConfigError(f"{source}: dispatch.max_queries and breaker_threshold must be >= 1")
    if dispatch.claim_batch < 1 or dispatch.max_claim_batch < dispatch.claim_batch:
        raise ConfigError(
            f"{source}: dispatch.claim_batch ({dispatch.claim_batch}) must be >= 1 and "
            f"dispatch.max_claim_batch ({dispatch.max_claim_batch}) at least as large"
        )
    if dispatch.call_timeout >= dispatch.lease_seconds:
        raise ConfigError(
            f"{source}: dispatch.call_timeout ({dispatch.call_timeout}) must be shorter than "
            f"dispatch.lease_seconds ({dispatch.lease_seconds}), or a slow call could outlive "
            "its lease"
        )
    heartbeat = dispatch.heartbeat_seconds
    if heartbeat <= 0 or dispatch.takeover_seconds < 2 * heartbeat:
        raise ConfigError(
            f"{source}: dispatch.takeover_seconds ({dispatch.takeover_seconds}) must be at "
            f"least twice dispatch.heartbeat_seconds ({dispatch.heartbeat_seconds}), which "
            "must be positive: one late heartbeat must not make a live worker look dead"
        )
    _check_limits(config.limits, source)
    for name, carrier in config.carriers.items():
        where = f"{source}: suppliers.{name!r}"
        if not carrier.route:
            raise ConfigError(f"{where}.route is empty: name at least one plugin")
        names = [entry.plugin for entry in carrier.entries]
        for plugin in names:
            if plugin not in config.enabled:
                raise ConfigError(f"{where}.route names {plugin!r}, which is not in `enabled`")
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}.route names a plugin twice")
        if any(entry.weight < 0 for entry in carrier.entries):
            raise ConfigError(f"{where}.route: weights cannot be negative")
        seen: set[str] = set()
        for product in carrier.products:
            # A cost may name any enabled plugin, not only those routed now: an operator
            # switching the route (core/route_overrides.py) sees what the switch costs.
            for plugin in product.cost:
                if plugin not in config.enabled:
                    raise ConfigError(
                        f"{where}: product {product.product_id!r} has a cost for {plugin!r}, "
                        "which is not in `enabled`"
                    )
            if product.product_id in seen:
                raise ConfigError(f"{where}: product_id {product.product_id!r} appears twice")
            seen.add(product.product_id)
            _product(name, product, where)


def _check_limits(limits: LimitsConfig, source: str) -> None:
    for index, block in enumerate(limits.trusted_proxies):
        try:
            parse_network(block)
        except ValueError as exc:
            raise ConfigError(f"{source}: limits.trusted_proxies[{index}]: {exc}") from exc


def _product(carrier: str, product: ProductConfig, where: str) -> Product:
    where = f"{where}: product {product.product_id!r}"
    try:
        face_value, price = yuan_to_fen(product.face_value), yuan_to_fen(product.price)
        costs = {plugin: yuan_to_fen(cost) for plugin, cost in product.cost.items()}
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if face_value <= 0 or price <= 0 or any(cost <= 0 for cost in costs.values()):
        raise ConfigError(f"{where}: amounts must be positive")
    return Product(carrier, product.product_id, product.name, face_value, price, costs)


class Catalog:
    """The products of every routed Supplier, looked up on every order."""

    def __init__(self, config: Config) -> None:
        self._products: dict[str, dict[str, Product]] = {
            name: {p.product_id: _product(name, p, name) for p in carrier.products}
            for name, carrier in config.carriers.items()
        }

    def has_carrier(self, carrier: str) -> bool:
        return carrier in self._products

    def product(self, carrier: str, product_id: str) -> Product | None:
        return self._products.get(carrier, {}).get(product_id)

    def products(self, carrier: str) -> list[Product]:
        return list(self._products.get(carrier, {}).values())

    @property
    def carriers(self) -> list[str]:
        return list(self._products)
