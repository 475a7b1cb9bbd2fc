"""``GET /_sim/statement``: each supplier's daily statement (对账单), from the simulator's memory.

A statement lists, in the supplier's own CSV format, every transaction the supplier accepted
on one day in Beijing time (docs/supplier-protocols.md, "Daily statements").
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Sequence
from datetime import date
from typing import Annotated

from litestar import Response, get
from litestar.params import Parameter

from service.simulator import acme, juhe, reloadly
from service.simulator.state import Simulator, Status, Transaction, beijing

LineBuilder = Callable[[Transaction], Sequence[str]]

# protocol -> (header, builder of one line)
FORMATS: dict[str, tuple[Sequence[str], LineBuilder]] = {
    juhe.PROTOCOL: (juhe.STATEMENT_HEADER, juhe.statement_line),
    reloadly.PROTOCOL: (reloadly.STATEMENT_HEADER, reloadly.statement_line),
    acme.PROTOCOL: (acme.STATEMENT_HEADER, acme.statement_line),
}
# date.fromisoformat alone would also take "20261126" and week dates.
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_day(text: str) -> date | None:
    if not DAY.fullmatch(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def accepted_on(sim: Simulator, protocol: str, day: date) -> list[Transaction]:
    """What the supplier accepted that day; a refusal never reached its books."""
    listed = [
        tx
        for tx in sim.transactions(protocol)
        if tx.status is not Status.REFUSED and beijing(tx.created_at).date() == day
    ]
    # In the order the supplier numbered them, i.e. accepted them.
    return sorted(listed, key=lambda tx: tx.seq)


def render(header: Sequence[str], lines: list[Sequence[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(lines)
    return out.getvalue()


def bad_request(reason: str) -> Response:
    return Response(reason + "\n", status_code=400, media_type="text/plain")


@get("/statement")
async def statement(
    sim: Simulator,
    protocol: str = "",
    day_text: Annotated[str, Parameter(query="date")] = "",
) -> Response:
    known = FORMATS.get(protocol)
    if known is None:
        return bad_request(f"unknown protocol {protocol!r}; known: {', '.join(FORMATS)}")
    day = parse_day(day_text)
    if day is None:
        return bad_request(f"bad date {day_text!r}; expected YYYY-MM-DD")
    header, line = known
    lines = [line(tx) for tx in accepted_on(sim, protocol, day)]
    # Litestar appends "; charset=utf-8" to text/ media types.
    return Response(render(header, lines), media_type="text/csv")
