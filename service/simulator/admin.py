"""``/_sim/...``: what tests and operators use to inspect the simulator and inject faults."""

from __future__ import annotations

import msgspec
from litestar import Request, Response, Router, delete, get, post

from service.simulator.faults import Fault, UnknownFault
from service.simulator.state import Simulator, TransactionView
from service.simulator.statement import statement

JSON = "application/json"


class FaultList(msgspec.Struct):
    faults: list[Fault]


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/transactions")
async def transactions(
    sim: Simulator,
    protocol: str | None = None,
    reference: str | None = None,
    phone_no: str | None = None,
) -> list[TransactionView]:
    wanted = {"protocol": protocol, "reference": reference, "phone_no": phone_no}
    return [
        tx.view()
        for tx in sim.transactions()
        if all(value in (None, getattr(tx, name)) for name, value in wanted.items())
    ]


@get("/faults")
async def list_faults(sim: Simulator) -> FaultList:
    return FaultList(sim.faults.all())


@post("/faults", status_code=200)
async def add_fault(request: Request, sim: Simulator) -> Response:
    try:
        fault = msgspec.json.decode(await request.body(), type=Fault).validated()
    except (msgspec.DecodeError, UnknownFault) as exc:
        return Response(msgspec.json.encode({"error": str(exc)}), status_code=400, media_type=JSON)
    sim.faults.add(fault)
    return Response(msgspec.json.encode(FaultList(sim.faults.all())), media_type=JSON)


@delete("/faults", status_code=200)
async def clear_faults(sim: Simulator, phone_no: str | None = None) -> FaultList:
    """Clears every fault, the command line's included, or only those of ``phone_no``."""
    sim.faults.clear(phone_no)
    return FaultList(sim.faults.all())


def router() -> Router:
    return Router(
        path="/_sim",
        route_handlers=[health, transactions, list_faults, add_fault, clear_faults, statement],
    )
