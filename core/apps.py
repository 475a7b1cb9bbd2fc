"""Partner apps: who may call, with which secret and signature type."""

from __future__ import annotations

import os
import secrets
import time

import msgspec
from sqlalchemy import select, update

from core.clock import now_ms
from core.db import Database, apps, insert_ignoring_conflicts, server_keys
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
        async with self._db.read() as conn:
            row = (await conn.execute(select(apps).where(apps.c.app_id == app_id))).first()
        if row is None:
            self._cache.pop(app_id, None)
            return None
        app = _app(row)
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
        async with self._db.write() as conn:
            inserted = await conn.execute(
                insert_ignoring_conflicts(self._db, apps, ["app_id"]).values(
                    app_id=app.app_id,
                    company=app.company,
                    secret=app.secret,
                    sign_type=str(app.sign_type),
                    created_at=app.created_at,
                )
            )
            if inserted.rowcount != 1:
                raise AppExistsError(f"an app named {app_id!r} already exists")
            await open_account(conn, self._db, app_id)
        return app

    async def all(self) -> list[App]:
        async with self._db.read() as conn:
            rows = (await conn.execute(select(apps).order_by(apps.c.app_id))).all()
        return [_app(row) for row in rows]

    async def set_notify_url(self, app_id: str, url: str | None) -> bool:
        async with self._db.write() as conn:
            changed = await conn.execute(
                update(apps).where(apps.c.app_id == app_id).values(notify_url=url or None)
            )
        self._cache.pop(app_id, None)
        return changed.rowcount == 1


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
    async with db.write() as conn:
        await conn.execute(
            insert_ignoring_conflicts(db, server_keys, ["name"]).values(
                name="token", value=secrets.token_hex(32)
            )
        )
        value = (
            await conn.execute(select(server_keys.c.value).where(server_keys.c.name == "token"))
        ).scalar_one()
    return value.encode()
