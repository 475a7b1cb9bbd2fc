"""The simulator's Litestar app: the three supplier protocols and the ``/_sim`` admin API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.di import Provide

from service.logs import configure_logging
from service.simulator import acme, admin, juhe, reloadly
from service.simulator.faults import FaultBook, parse_cli_fault
from service.simulator.options import Credentials, SimulatorOptions
from service.simulator.state import Simulator


def create_simulator_app(
    options: SimulatorOptions, credentials: Credentials | None = None
) -> Litestar:
    faults = FaultBook(tuple(parse_cli_fault(text) for text in options.faults))
    sim = Simulator(options, credentials or Credentials.from_env(), faults)
    sim.callback_builders = {
        juhe.PROTOCOL: juhe.callback_for,
        reloadly.PROTOCOL: reloadly.callback_for,
        acme.PROTOCOL: acme.callback_for,
    }

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await sim.start()
        try:
            yield
        finally:
            await sim.stop()

    app = Litestar(
        route_handlers=[juhe.router(), reloadly.router(), acme.router(), admin.router()],
        dependencies={"sim": Provide(lambda: sim, sync_to_thread=False)},
        lifespan=[lifespan],
        openapi_config=None,
        debug=False,
    )
    app.state.simulator = sim
    return app


def app_from_env() -> Litestar:
    """The factory the server's worker calls: ``topup simulate`` left everything in the env."""
    configure_logging()
    return create_simulator_app(SimulatorOptions.from_env())
