"""Open circuits, published for other processes (the console runs apart from the dispatcher).

Each dispatcher keeps its own CircuitBreaker (core/routing.py). When one opens or closes a
plugin's circuit it writes that change, and only that, to a ``control`` row of its own:
``circuit:<plugin>@<owner>`` holding the Unix ms until which the circuit is open; closing
deletes the row. One row per dispatcher, so instances on one database do not overwrite each
other; a row left by a process that died simply expires. A circuit whose time has passed
is half-open (the next order tries the plugin) and is not reported as open.
"""

from __future__ import annotations

import msgspec
from sqlalchemy import Connection, delete, insert, select

from core.clock import now_ms
from core.db import Database, control

PREFIX = "circuit:"


class OpenCircuit(msgspec.Struct, frozen=True):
    plugin: str
    # Unix ms; the latest of the dispatchers that hold it open.
    until: int
    # How many dispatcher processes have it open.
    processes: int = 1


def _name(plugin: str, owner: str) -> str:
    return f"{PREFIX}{plugin}@{owner}"


async def publish(db: Database, plugin: str, owner: str, open_until: int | None) -> None:
    """Record that ``owner``'s circuit for ``plugin`` is open until ``open_until`` (Unix ms),
    or closed (None)."""
    name = _name(plugin, owner)

    def write(conn: Connection) -> None:
        conn.execute(delete(control).where(control.c.name == name))
        if open_until is not None:
            conn.execute(insert(control).values(name=name, value=open_until, updated_at=now_ms()))

    await db.write(write)


async def open_circuits(db: Database, now: int | None = None) -> list[OpenCircuit]:
    """The plugins whose circuit some dispatcher holds open now, and until when."""
    moment = now_ms() if now is None else now
    query = select(control.c.name, control.c.value).where(
        control.c.name.startswith(PREFIX, autoescape=True), control.c.value > moment
    )
    rows = await db.read(lambda conn: conn.execute(query).all())
    found: dict[str, OpenCircuit] = {}
    for name, until in rows:
        plugin = name[len(PREFIX) :].rpartition("@")[0]
        seen = found.get(plugin)
        if seen is None:
            found[plugin] = OpenCircuit(plugin, until)
        else:
            found[plugin] = OpenCircuit(plugin, max(until, seen.until), seen.processes + 1)
    return sorted(found.values(), key=lambda c: c.plugin)
