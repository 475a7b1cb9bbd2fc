"""Route overrides: an operator replaces a carrier's route, in every running instance.

An override is stored in ``route_overrides`` (who, why, when) and replaces the route
``plugins.toml`` gives that carrier until it is reset. Every instance's configuration is
the file plus the stored overrides (``apply_overrides``), loaded at start and at each
reload; setting or resetting one bumps the configuration generation in the same
transaction as the change and its audit entry, so every instance reloads within a second.

An override is checked exactly as a reload checks the file: the whole configuration with
it applied must pass ``check_config`` (and the caller builds the runtime from it). When
the file later changes so that a stored override no longer passes (its plugin is no longer
enabled, its carrier is gone), the override is skipped, the file's route applies, and the
instance logs an ERROR naming it and how to reset it: a reload neither fails nor forgets.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

import msgspec
from sqlalchemy import Connection, delete, insert, select

from core import audit
from core.clock import now_ms
from core.config import Config, ConfigError, RouteEntry, check_config
from core.control import CONFIG_GENERATION, bump
from core.db import Database, route_overrides

log = logging.getLogger("topup.routes")

SET_ACTION = "route.set"
RESET_ACTION = "route.reset"


class RouteOverride(msgspec.Struct, frozen=True):
    carrier: str
    route: list[RouteEntry]
    actor: str
    reason: str
    updated_at: int


class SkippedOverride(msgspec.Struct, frozen=True):
    override: RouteOverride
    error: str

    def log_line(self) -> str:
        o = self.override
        return (
            f"route override of {o.carrier!r} ({format_route(o.route)}, set by {o.actor}: "
            f"{o.reason!r}) no longer fits plugins.toml and is skipped; the file's route "
            f"applies. Why: {self.error}. Fix plugins.toml, or remove the override with "
            f"`topup routes reset {o.carrier} --reason ...`"
        )


class CarrierRoute(msgspec.Struct, frozen=True):
    """A carrier's route as the instances run it, and where it comes from."""

    carrier: str
    route: list[RouteEntry]
    file_route: list[RouteEntry]
    override: RouteOverride | None = None
    # Why the stored override is not applied (then ``route`` is the file's).
    skipped: str | None = None

    @property
    def overridden(self) -> bool:
        return self.override is not None and self.skipped is None


class RouteRefused(ValueError):
    """An override that cannot be set or reset; the message says why, and nothing changed."""


def format_route(route: Iterable[RouteEntry]) -> str:
    return " -> ".join(f"{e.plugin}:{e.weight}" if e.weight else e.plugin for e in route)


def parse_route(words: Iterable[str]) -> list[RouteEntry]:
    """``PLUGIN[:WEIGHT]`` words, in failover order."""
    route = []
    for word in words:
        plugin, _, weight = word.partition(":")
        if not plugin or (weight and not weight.isdigit()):
            raise RouteRefused(f"{word!r}: expected PLUGIN or PLUGIN:WEIGHT (a whole number)")
        route.append(RouteEntry(plugin, int(weight or 0)))
    return route


def with_route(config: Config, carrier: str, route: list[RouteEntry]) -> Config:
    carrier_config = config.carriers.get(carrier)
    if carrier_config is None:
        known = ", ".join(config.carriers) or "none"
        raise ConfigError(f"{carrier!r} is not a carrier in plugins.toml (carriers: {known})")
    changed = msgspec.structs.replace(carrier_config, route=list(route))
    return msgspec.structs.replace(config, carriers={**config.carriers, carrier: changed})


def apply_overrides(
    config: Config, overrides: Iterable[RouteOverride]
) -> tuple[Config, list[SkippedOverride]]:
    """The file's configuration with every override that still passes its checks."""
    skipped = []
    for override in sorted(overrides, key=lambda o: o.carrier):
        try:
            candidate = with_route(config, override.carrier, override.route)
            check_config(candidate, "route override")
        except ConfigError as exc:
            skipped.append(SkippedOverride(override, str(exc)))
            continue
        config = candidate
    return config, skipped


def effective_routes(file_config: Config, overrides: Iterable[RouteOverride]) -> list[CarrierRoute]:
    """Every carrier of the file: its route once the overrides apply, and their record."""
    by_carrier = {o.carrier: o for o in overrides}
    config, skipped = apply_overrides(file_config, by_carrier.values())
    why = {s.override.carrier: s.error for s in skipped}
    routes = [
        CarrierRoute(
            carrier=name,
            route=config.carriers[name].entries,
            file_route=carrier_config.entries,
            override=by_carrier.get(name),
            skipped=why.get(name),
        )
        for name, carrier_config in file_config.carriers.items()
    ]
    # An override of a carrier the file no longer has is listed, so it can be reset.
    routes += [
        CarrierRoute(carrier=name, route=[], file_route=[], override=o, skipped=why.get(name))
        for name, o in by_carrier.items()
        if name not in file_config.carriers
    ]
    return routes


# -- storage ---------------------------------------------------------------------------------


def _read(conn: Connection) -> list[RouteOverride]:
    found = []
    for row in conn.execute(select(route_overrides).order_by(route_overrides.c.carrier)):
        try:
            route = msgspec.json.decode(row.route, type=list[RouteEntry])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # Only a hand-edited row gets here: skipped like any override that does not fit.
            log.error("route override of %r is unreadable and ignored: %s", row.carrier, exc)
            continue
        found.append(RouteOverride(row.carrier, route, row.actor, row.reason, row.updated_at))
    return found


async def load_overrides(db: Database) -> list[RouteOverride]:
    return await db.read(_read)


def _encode(route: Iterable[RouteEntry]) -> list[dict[str, object]]:
    return [{"plugin": e.plugin, "weight": e.weight} for e in route]


async def set_route(
    db: Database,
    file_config: Config,
    carrier: str,
    route: list[RouteEntry],
    actor: str,
    reason: str,
    build: Callable[[Config], Awaitable[None]] | None = None,
) -> int:
    """Replace ``carrier``'s route in every instance; returns the new config generation.

    Refused (RouteRefused, nothing changed) when the reason is empty or the configuration
    with this route fails the checks a reload applies; ``build`` builds the runtime from
    the resulting configuration, as an instance will, and raises ConfigError if it cannot.
    """
    if not reason.strip():
        raise RouteRefused("a reason is required")
    current, _ = apply_overrides(file_config, await load_overrides(db))
    try:
        candidate = with_route(current, carrier, route)
        check_config(candidate, "route override")
        if build is not None:
            await build(candidate)
    except ConfigError as exc:
        raise RouteRefused(str(exc)) from exc
    old = current.carriers[carrier].entries

    def write(conn: Connection) -> int:
        conn.execute(delete(route_overrides).where(route_overrides.c.carrier == carrier))
        conn.execute(
            insert(route_overrides).values(
                carrier=carrier,
                route=msgspec.json.encode(_encode(route)).decode(),
                actor=actor,
                reason=reason,
                updated_at=now_ms(),
            )
        )
        audit.record(conn, actor, SET_ACTION, carrier, reason, old=_encode(old), new=_encode(route))
        return bump(conn, CONFIG_GENERATION)

    return await db.write(write)


async def reset_route(
    db: Database, file_config: Config, carrier: str, actor: str, reason: str
) -> int:
    """Remove ``carrier``'s override: the file's route applies again in every instance."""
    if not reason.strip():
        raise RouteRefused("a reason is required")
    carrier_config = file_config.carriers.get(carrier)
    file_route = carrier_config.entries if carrier_config is not None else []

    def write(conn: Connection) -> int:
        stored = {o.carrier: o for o in _read(conn)}.get(carrier)
        if stored is None:
            raise RouteRefused(f"{carrier!r} has no route override")
        conn.execute(delete(route_overrides).where(route_overrides.c.carrier == carrier))
        audit.record(
            conn,
            actor,
            RESET_ACTION,
            carrier,
            reason,
            old=_encode(stored.route),
            new=_encode(file_route),
        )
        return bump(conn, CONFIG_GENERATION)

    return await db.write(write)
