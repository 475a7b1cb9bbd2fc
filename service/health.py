"""``/healthz`` and ``/readyz``, for load balancers and Kubernetes.

``/healthz``: the process answers HTTP (a liveness probe: restart it if not).
``/readyz``: it can serve orders: the database answers within ``DATABASE_SECONDS``, its
schema is the one this release needs, and every plugin ``enabled`` in the loaded
plugins.toml is running. 200 with each check when ready; 503 with each check and why
otherwise (take it out of the load balancer, do not restart it).

Neither is rate-limited or logged per request; ``/readyz`` logs when readiness changes.
"""

from __future__ import annotations

import asyncio
import functools
import logging

import msgspec
from litestar import Request, Response, get
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from core.migrate import HEAD_REVISION, MIGRATIONS
from core.runtime import Runtime
from service.wiring import Services

log = logging.getLogger("topup.health")

# Kubernetes' probe timeout must be above this (its default, 1 s, is not).
DATABASE_SECONDS = 2.0
JSON = "application/json; charset=utf-8"


class Check(msgspec.Struct, frozen=True):
    ok: bool
    detail: str


class Readiness(msgspec.Struct, frozen=True):
    status: str
    checks: dict[str, Check]


@get("/healthz", operation_id="health", include_in_schema=False)
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", operation_id="ready", include_in_schema=False)
async def ready(request: Request) -> Response:
    checks, cause = await readiness(request.app.state.services)
    ok = all(check.ok for check in checks.values())
    _log_change(ok, checks, cause)
    body = Readiness("ready" if ok else "not ready", checks)
    return Response(msgspec.json.encode(body), status_code=200 if ok else 503, media_type=JSON)


async def readiness(services: Services) -> tuple[dict[str, Check], Exception | None]:
    """The checks, and the database's exception if it failed with one (for the log)."""
    database, revision, cause = await _database(services)
    schema = _schema(revision) if database.ok else Check(False, "not checked: no database")
    checks = {"database": database, "schema": schema, "plugins": _plugins(services.runtime)}
    return checks, cause


async def _database(services: Services) -> tuple[Check, str | None, Exception | None]:
    try:
        async with asyncio.timeout(DATABASE_SECONDS):
            revision = await services.db.read(_probe)
    except TimeoutError as exc:
        return Check(False, f"no answer within {DATABASE_SECONDS:g} s"), None, exc
    except Exception as exc:
        # The class only: a driver's message may name hosts; the log has all of it.
        cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        return Check(False, f"unreachable ({type(cause).__name__})"), None, exc
    return Check(True, services.db.url.get_backend_name()), revision, None


def _probe(conn: Connection) -> str | None:
    conn.exec_driver_sql("SELECT 1")
    try:
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:
        return None  # reachable, but no schema at all


def _schema(revision: str | None) -> Check:
    if revision == HEAD_REVISION:
        return Check(True, f"revision {revision}")
    if revision is None:
        return Check(False, f"no schema; this release needs {HEAD_REVISION}: `topup db upgrade`")
    if revision in _known_revisions():
        return Check(
            False,
            f"revision {revision}, this release needs {HEAD_REVISION}: run `topup db upgrade`",
        )
    # A newer release migrated the database (a rolling upgrade): this one keeps serving.
    return Check(True, f"revision {revision}, newer than this release's {HEAD_REVISION}")


@functools.cache
def _known_revisions() -> frozenset[str]:
    """Every revision this release ships (alembic is imported only when one is behind)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return frozenset(s.revision for s in ScriptDirectory.from_config(config).walk_revisions())


def _plugins(runtime: Runtime) -> Check:
    missing = [name for name in runtime.config.enabled if name not in runtime.suppliers]
    if missing:
        return Check(False, f"enabled but not running: {', '.join(missing)}")
    if not runtime.suppliers:
        return Check(False, "no supplier plugin is enabled in plugins.toml")
    return Check(True, ", ".join(runtime.suppliers))


_last_ready: list[bool] = []


def _log_change(ok: bool, checks: dict[str, Check], cause: Exception | None) -> None:
    """One line when readiness changes, not one per probe."""
    if _last_ready and _last_ready[-1] == ok:
        return
    _last_ready[:] = [ok]
    if ok:
        log.info("ready")
        return
    failing = "; ".join(f"{name}: {c.detail}" for name, c in checks.items() if not c.ok)
    said = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else ""
    log.warning("not ready: %s%s", failing, f" ({type(cause).__name__}: {said})" if cause else "")
