"""The lifecycle is the one writer of order state, and its map says where each change is.

A newcomer reads the package docstring of core/lifecycle (and README's copy of it) to
find the file that makes a given change; these checks keep that map whole as files are
added, and keep writes to the orders table from creeping back outside the package.
"""

from __future__ import annotations

import re
from pathlib import Path

import core.lifecycle
from core.orders import State

REPO = Path(__file__).resolve().parent.parent
LIFECYCLE = REPO / "core" / "lifecycle"
# "- ``claim.py``: what it does" bullets of the package docstring, continued lines joined.
BULLET = re.compile(r"^- ``(?P<file>\w+\.py)``: (?P<text>.*?)(?=^- |\Z)", re.M | re.S)
# Any way the code writes the orders table: SQLAlchemy Core, core/fastsql.py, raw SQL.
ORDERS_WRITE = re.compile(
    r"\b(?:update|insert|delete)\(\s*orders\b"
    r"|\b(?:update_rows|insert_rows)\([^)]*?\borders\b"
    r"|\b(?:UPDATE|INSERT\s+INTO|DELETE\s+FROM)\s+orders\b",
)


def lifecycle_map() -> dict[str, str]:
    doc = core.lifecycle.__doc__ or ""
    return {m["file"]: " ".join(m["text"].split()) for m in BULLET.finditer(doc)}


def test_the_map_names_every_file_of_the_lifecycle() -> None:
    files = {path.name for path in LIFECYCLE.glob("*.py")} - {"__init__.py"}
    assert set(lifecycle_map()) == files


def test_every_state_has_a_file_that_makes_it() -> None:
    mapped = " ".join(lifecycle_map().values())
    missing = [state.value for state in State if not re.search(rf"\b{state.value}\b", mapped)]
    assert missing == []


def test_readme_names_the_same_files() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("Every one of these changes is made in `core/lifecycle/`") :]
    section = section[: section.index("\n\n")]
    assert set(re.findall(r"`(\w+\.py)`", section)) == set(lifecycle_map())


def test_nothing_outside_the_lifecycle_writes_the_orders_table() -> None:
    writers = []
    for top in ("core", "service", "plugins", "topup"):
        for path in sorted((REPO / top).rglob("*.py")):
            if LIFECYCLE in path.parents or "migrations" in path.parts:
                continue
            if ORDERS_WRITE.search(path.read_text(encoding="utf-8")):
                writers.append(str(path.relative_to(REPO)))
    assert writers == []


def test_the_write_pattern_sees_each_way_of_writing() -> None:
    # The check above is only as good as its pattern: each of these is a real write.
    for source in (
        "conn.execute(update(orders).values(state='failed'))",
        "insert_rows(conn, orders, columns, rows)",
        "update_rows(self.conn, orders, 'order_no', names, rows)",
        'conn.execute(text("UPDATE orders SET state = :s"))',
    ):
        assert ORDERS_WRITE.search(source), source
    assert not ORDERS_WRITE.search("select(orders.c.state).where(orders.c.state == 'review')")
