"""Partner apps: who may call, with which secret and signature type.

Secrets are sealed with the master key before they reach the database and opened when
an app is read (core/sealing.py); the plaintext lives only in this process's memory.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import msgspec
from sqlalchemy import Connection, bindparam, select, update

from core.addresses import Network, address_in, parse_networks
from core.audit import record
from core.clock import now_ms
from core.db import Database, apps, insert_ignoring_conflicts, server_keys
from core.fastsql import fetch_one
from core.ledger import open_account
from core.sealing import Sealer, load_sealer
from core.signing import SignType

TOKEN_SECRET_ENV = "TOPUP_TOKEN_SECRET"
# A generated secret: 32 random bytes, as 64 hex characters.
GENERATED_SECRET_BYTES = 32
# A secret an operator chooses must be at least this long: shorter ones can be guessed
# from one signed request offline.
MIN_SECRET_LENGTH = 16


class CarrierMismatch(StrEnum):
    """What an order whose Supplier contradicts the phone number's segment gets.

    A number keeps its segment when it moves to another carrier (携号转网), so the partner
    may know better than the table: accepting is the default."""

    ACCEPT = "accept"
    """Accepted; the segment's carrier is recorded on the order (``segment_carrier``)."""
    REFUSE = "refuse"
    """Refused with CARRIER_MISMATCH; nothing is written."""


class App(msgspec.Struct, frozen=True):
    app_id: str
    company: str
    secret: str
    sign_type: SignType
    created_at: int
    notify_url: str | None = None
    # The secret before the last rotation, and until when (Unix ms) it still signs.
    previous_secret: str | None = None
    previous_secret_until: int | None = None
    allow_ips: tuple[Network, ...] = ()
    notify_allow_private: bool = False
    carrier_mismatch: CarrierMismatch = CarrierMismatch.ACCEPT

    def secrets_at(self, now_ms: int) -> tuple[str, ...]:
        """The secrets that sign for this app now: the current one, then during a
        rotation's grace period the previous one."""
        if self.previous_secret and (self.previous_secret_until or 0) > now_ms:
            return (self.secret, self.previous_secret)
        return (self.secret,)

    def allows(self, address: str) -> bool:
        """Whether a call from ``address`` may proceed (no allowlist: any address)."""
        return not self.allow_ips or address_in(address, self.allow_ips)

    def __repr__(self) -> str:
        # Keep the secret out of logs and tracebacks.
        return f"App(app_id={self.app_id!r}, company={self.company!r}, sign_type={self.sign_type})"


class AppExistsError(Exception):
    pass


def generate_secret() -> str:
    return secrets.token_hex(GENERATED_SECRET_BYTES)


def check_chosen_secret(secret: str) -> None:
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(f"a secret must be at least {MIN_SECRET_LENGTH} characters")


def _secret_context(app_id: str, column: str = "secret") -> str:
    return f"apps:{app_id}:{column}"


class AppStore:
    """Looks apps up on every request, so found apps are cached for a few seconds.

    A change made with ``topup app`` reaches running services within ``cache_seconds``.
    """

    def __init__(
        self, db: Database, cache_seconds: float = 5.0, sealer: Sealer | None = None
    ) -> None:
        self._db = db
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, App]] = {}
        self._sealer = sealer

    @property
    def sealer(self) -> Sealer:
        if self._sealer is None:
            self._sealer = load_sealer()
        return self._sealer

    async def get(self, app_id: str) -> App | None:
        cached = self._cache.get(app_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        row = await self._db.read(lambda conn: fetch_one(conn, _BY_APP_ID, {"app_id": app_id}))
        if row is None:
            self._cache.pop(app_id, None)
            return None
        app = self._app(dict(zip(_COLUMNS, row, strict=True)))
        self._cache[app_id] = (time.monotonic() + self._cache_seconds, app)
        return app

    async def add(
        self,
        app_id: str,
        company: str,
        secret: str | None = None,
        sign_type: SignType = SignType.HMAC_SHA256,
    ) -> App:
        if secret is not None:
            check_chosen_secret(secret)
        app = App(app_id, company, secret or generate_secret(), sign_type, now_ms())
        sealed = self.sealer.seal(app.secret, _secret_context(app_id))

        def add(conn: Connection) -> None:
            inserted = conn.execute(
                insert_ignoring_conflicts(conn, apps, ["app_id"]).values(
                    app_id=app.app_id,
                    company=app.company,
                    secret=sealed,
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
        def everyone(conn: Connection) -> list[Any]:
            rows = conn.execute(select(apps).order_by(apps.c.app_id))
            return [dict(row._mapping) for row in rows]

        return [self._app(row) for row in await self._db.read(everyone)]

    async def rotate_secret(
        self,
        app_id: str,
        grace_seconds: float,
        secret: str | None = None,
        *,
        actor: str,
        reason: str = "",
    ) -> str | None:
        """Give the app a new secret; the current one keeps signing for ``grace_seconds``.

        Returns the new secret, or None when there is no such app. A previous secret
        still in its grace period is dropped: only the newest two ever sign.
        """
        if secret is not None:
            check_chosen_secret(secret)
        new_secret = secret or generate_secret()
        sealed_new = self.sealer.seal(new_secret, _secret_context(app_id))
        grace_until = now_ms() + int(grace_seconds * 1000)

        def rotate(conn: Connection) -> bool:
            row = conn.execute(select(apps.c.secret).where(apps.c.app_id == app_id)).first()
            if row is None:
                return False
            current = self.sealer.open(row.secret, _secret_context(app_id))
            previous = (
                self.sealer.seal(current, _secret_context(app_id, "previous_secret"))
                if grace_seconds > 0
                else None
            )
            conn.execute(
                update(apps)
                .where(apps.c.app_id == app_id)
                .values(
                    secret=sealed_new,
                    previous_secret=previous,
                    previous_secret_until=grace_until if previous else None,
                )
            )
            record(conn, actor, "app.rotate_secret", app_id, reason, grace_seconds=grace_seconds)
            return True

        found = await self._db.write(rotate)
        self._cache.pop(app_id, None)
        return new_secret if found else None

    async def set_notify_url(
        self,
        app_id: str,
        url: str | None,
        allow_private: bool = False,
        *,
        actor: str,
        reason: str = "",
    ) -> bool:
        values = {"notify_url": url or None, "notify_allow_private": allow_private}
        return await self._change(app_id, "app.notify_url", actor, reason, values)

    async def set_allow_ips(
        self, app_id: str, networks: Sequence[Network], *, actor: str, reason: str = ""
    ) -> bool:
        text = ",".join(str(network) for network in networks)
        return await self._change(
            app_id, "app.allow_ips", actor, reason, {"allow_ips": text or None}
        )

    async def set_carrier_mismatch(
        self, app_id: str, policy: CarrierMismatch, *, actor: str, reason: str = ""
    ) -> bool:
        values = {"carrier_mismatch": str(policy)}
        return await self._change(app_id, "app.carrier_mismatch", actor, reason, values)

    async def _change(
        self, app_id: str, action: str, actor: str, reason: str, values: dict[str, Any]
    ) -> bool:
        def change(conn: Connection) -> bool:
            changed = conn.execute(update(apps).where(apps.c.app_id == app_id).values(**values))
            if changed.rowcount != 1:
                return False
            record(conn, actor, action, app_id, reason, **values)
            return True

        found = await self._db.write(change)
        self._cache.pop(app_id, None)
        return found

    def _app(self, row: dict[str, Any]) -> App:
        app_id = row["app_id"]
        previous = None
        if row["previous_secret"]:
            previous = self.sealer.open(
                row["previous_secret"], _secret_context(app_id, "previous_secret")
            )
        return App(
            app_id,
            row["company"],
            self.sealer.open(row["secret"], _secret_context(app_id)),
            SignType(row["sign_type"]),
            row["created_at"],
            row["notify_url"],
            previous,
            row["previous_secret_until"],
            parse_networks(row["allow_ips"] or ""),
            bool(row["notify_allow_private"]),
            CarrierMismatch(row["carrier_mismatch"]),
        )


_BY_APP_ID = select(apps).where(apps.c.app_id == bindparam("app_id"))
_COLUMNS = tuple(apps.c.keys())


async def token_key(db: Database, sealer: Sealer | None = None) -> bytes:
    """The key that signs access tokens, shared by every instance on this database."""
    configured = os.environ.get(TOKEN_SECRET_ENV)
    if configured:
        return configured.encode()
    sealer = sealer or load_sealer()
    context = "server_keys:token"
    fresh = sealer.seal(secrets.token_hex(32), context)

    def key(conn: Connection) -> str:
        conn.execute(
            insert_ignoring_conflicts(conn, server_keys, ["name"]).values(name="token", value=fresh)
        )
        return conn.execute(
            select(server_keys.c.value).where(server_keys.c.name == "token")
        ).scalar_one()

    return sealer.open(await db.write(key), context).encode()


async def check_master_key(db: Database, sealer: Sealer | None = None) -> None:
    """Open one stored secret of each kind, so that a process holding the wrong master
    key stops at start with the reason instead of failing every request."""
    sealer = sealer or load_sealer()

    def sample(conn: Connection) -> list[tuple[str, str]]:
        token = conn.execute(select(server_keys.c.name, server_keys.c.value).limit(1)).first()
        app = conn.execute(select(apps.c.app_id, apps.c.secret).limit(1)).first()
        return [
            *([(f"server_keys:{token.name}", token.value)] if token else []),
            *([(_secret_context(app.app_id), app.secret)] if app else []),
        ]

    for context, value in await db.read(sample):
        sealer.open(value, context)


async def reseal_secrets(db: Database, sealer: Sealer) -> int:
    """Seal every stored secret again with the sealer's current key (``topup keys
    rotate``); returns how many values were rewritten."""

    def reseal(conn: Connection) -> int:
        count = 0
        for row in conn.execute(select(apps.c.app_id, apps.c.secret, apps.c.previous_secret)):
            values = {}
            for column in ("secret", "previous_secret"):
                value = getattr(row, column)
                if value and sealer.key_id_of(value) != sealer.current_id:
                    context = _secret_context(row.app_id, column)
                    values[column] = sealer.seal(sealer.open(value, context), context)
            if values:
                conn.execute(update(apps).where(apps.c.app_id == row.app_id).values(**values))
                count += len(values)
        for name, value in conn.execute(select(server_keys.c.name, server_keys.c.value)):
            if sealer.key_id_of(value) != sealer.current_id:
                context = f"server_keys:{name}"
                conn.execute(
                    update(server_keys)
                    .where(server_keys.c.name == name)
                    .values(value=sealer.seal(sealer.open(value, context), context))
                )
                count += 1
        return count

    return await db.write(reseal)
