"""``/_sim/...``: what tests and operators use to inspect the simulator and inject faults."""

from __future__ import annotations

import msgspec
from litestar import Request, Response, Router, delete, get, post

from core.numbering import CARRIERS
from service.simulator.faults import Fault, UnknownFault
from service.simulator.state import Simulator, TransactionView
from service.simulator.statement import statement

JSON = "application/json"


class FaultList(msgspec.Struct):
    faults: list[Fault]


class Ported(msgspec.Struct, forbid_unknown_fields=True):
    """A number moved to another carrier (携号转网): carrier lookups name ``carrier``."""

    phone_no: str
    carrier: str


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


@get("/ported")
async def list_ported(sim: Simulator) -> dict[str, str]:
    return dict(sim.ported)


@post("/ported", status_code=200)
async def port_number(request: Request, sim: Simulator) -> Response:
    try:
        ported = msgspec.json.decode(await request.body(), type=Ported)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return Response(msgspec.json.encode({"error": str(exc)}), status_code=400, media_type=JSON)
    if ported.carrier not in CARRIERS:
        error = {"error": f"carrier must be one of {', '.join(CARRIERS)}"}
        return Response(msgspec.json.encode(error), status_code=400, media_type=JSON)
    sim.ported[ported.phone_no] = ported.carrier
    return Response(msgspec.json.encode(sim.ported), media_type=JSON)


@delete("/ported", status_code=200)
async def clear_ported(sim: Simulator) -> dict[str, str]:
    sim.ported.clear()
    return {}


def router() -> Router:
    return Router(
        path="/_sim",
        route_handlers=[
            health,
            transactions,
            list_faults,
            add_fault,
            clear_faults,
            list_ported,
            port_number,
            clear_ported,
            statement,
        ],
    )
