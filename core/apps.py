"""Partner apps: who may call, with which secret and signature type."""

from __future__ import annotations

import os
import secrets
import time

import msgspec
from sqlalchemy import Connection, bindparam, select, update

from core.clock import now_ms
from core.db import Database, apps, insert_ignoring_conflicts, server_keys
from core.fastsql import fetch_one
from core.ledger import open_account
from core.signing import SignType

TOKEN_SECRET_ENV = "TOPUP_TOKEN_SECRET"


class App(msgspec.Struct, frozen=True):
    app_id: str
    company: str
    secret: str
    sign_type: SignType
    created_at: int
    notify_url: str | None = None

    def __repr__(self) -> str:
        # Keep the secret out of logs and tracebacks.
        return f"App(app_id={self.app_id!r}, company={self.company!r}, sign_type={self.sign_type})"


class AppExistsError(Exception):
    pass


class AppStore:
    """Looks apps up on every request, so found apps are cached for a few seconds.

    A change made with ``topup app`` reaches running services within ``cache_seconds``.
    """

    def __init__(self, db: Database, cache_seconds: float = 5.0) -> None:
        self._db = db
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, App]] = {}

    async def get(self, app_id: str) -> App | None:
        cached = self._cache.get(app_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        app = await self._db.read(lambda conn: _find(conn, app_id))
        if app is None:
            self._cache.pop(app_id, None)
            return None
        self._cache[app_id] = (time.monotonic() + self._cache_seconds, app)
        return app

    async def add(
        self,
        app_id: str,
        company: str,
        secret: str | None = None,
        sign_type: SignType = SignType.HMAC_SHA256,
    ) -> App:
        app = App(app_id, company, secret or secrets.token_hex(24), sign_type, now_ms())

        def add(conn: Connection) -> None:
            inserted = conn.execute(
                insert_ignoring_conflicts(conn, apps, ["app_id"]).values(
                    app_id=app.app_id,
                    company=app.company,
                    secret=app.secret,
                    sign_type=str(app.sign_type),
                    created_at=app.created_at,
                )
            )
            if inserted.rowcount != 1:
                raise AppExistsError(f"an app named {app_id!r} already exists")
            open_account(conn, app_id)

        await self._db.write(add)
        return app

    async def all(self) -> list[App]:
        def everyone(conn: Connection) -> list[App]:
            return [_app(row) for row in conn.execute(select(apps).order_by(apps.c.app_id))]

        return await self._db.read(everyone)

    async def set_notify_url(self, app_id: str, url: str | None) -> bool:
        def change(conn: Connection) -> bool:
            changed = conn.execute(
                update(apps).where(apps.c.app_id == app_id).values(notify_url=url or None)
            )
            return changed.rowcount == 1

        found = await self._db.write(change)
        self._cache.pop(app_id, None)
        return found


_BY_APP_ID = select(apps).where(apps.c.app_id == bindparam("app_id"))


def _find(conn: Connection, app_id: str) -> App | None:
    row = fetch_one(conn, _BY_APP_ID, {"app_id": app_id})
    return None if row is None else App(*row[:3], SignType(row[3]), *row[4:])


def _app(row) -> App:
    return App(
        row.app_id,
        row.company,
        row.secret,
        SignType(row.sign_type),
        row.created_at,
        row.notify_url,
    )


async def token_key(db: Database) -> bytes:
    """The key that signs access tokens, shared by every instance on this database."""
    configured = os.environ.get(TOKEN_SECRET_ENV)
    if configured:
        return configured.encode()

    def key(conn: Connection) -> str:
        conn.execute(
            insert_ignoring_conflicts(conn, server_keys, ["name"]).values(
                name="token", value=secrets.token_hex(32)
            )
        )
        return conn.execute(
            select(server_keys.c.value).where(server_keys.c.name == "token")
        ).scalar_one()

    return (await db.write(key)).encode()
