"""Operators of the console: accounts, roles, passwords (argon2id) and sessions.

A session is a random token in the operator's cookie; the database holds only its
SHA-256, so a copy of the database opens no session. A session ends on sign-out, after
``idle`` without a request, and after ``lifetime`` in any case.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import secrets
from enum import IntEnum

import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, delete, insert, select, update

from core.audit import record
from core.clock import now_ms
from core.db import Database, console_sessions, operators

MIN_PASSWORD_LENGTH = 10
# Whether a session is still in use is written at most this often, not on every page.
TOUCH_EVERY_MS = 60_000

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the name is unknown, so that a wrong name costs what a wrong
    password costs and the timing does not tell which names exist. Made on first use, not
    at import: an argon2 hash takes a tenth of a second and 64 MiB, which every ``topup``
    command would otherwise pay."""
    return _hasher.hash(secrets.token_hex(16))


def _verify(stored: str | None, password: str) -> None:
    """Raises unless ``password`` matches; an unknown name (None) is checked all the same."""
    _hasher.verify(_dummy_hash() if stored is None else stored, password)


class Role(IntEnum):
    """Each role can do what the ones below it can."""

    VIEWER = 1  # reads everything
    OPERATOR = 2  # acts on orders: review decisions, reconciliation
    ADMIN = 3  # manages partners, routes and operators

    @classmethod
    def named(cls, name: str) -> Role:
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown role {name!r}: viewer, operator or admin") from None

    @property
    def label(self) -> str:
        return self.name.lower()


class Operator(msgspec.Struct, frozen=True):
    name: str
    role: Role
    disabled: bool = False

    def can(self, role: Role) -> bool:
        return not self.disabled and self.role >= role


class Session(msgspec.Struct, frozen=True):
    operator: Operator
    csrf_token: str
    created_at: int
    last_seen_at: int


class OperatorError(Exception):
    """An operator account cannot be created or changed; the message says why."""


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise OperatorError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")


def check_name(name: str) -> None:
    if not (1 <= len(name) <= 64) or not name.isprintable() or name != name.strip():
        raise OperatorError("an operator name is 1 to 64 printable characters")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _operator(row) -> Operator:
    return Operator(row.name, Role.named(row.role), bool(row.disabled))


class OperatorStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, name: str, password: str, role: Role, actor: str) -> Operator:
        check_name(name)
        check_password(password)
        password_hash = await asyncio.to_thread(_hasher.hash, password)

        def add(conn: Connection) -> Operator:
            if conn.execute(select(operators.c.name).where(operators.c.name == name)).first():
                raise OperatorError(f"operator {name!r} already exists")
            now = now_ms()
            conn.execute(
                insert(operators).values(
                    name=name,
                    password_hash=password_hash,
                    role=role.label,
                    created_at=now,
                    updated_at=now,
                )
            )
            record(conn, actor, "operator.add", name, "new operator", role=role.label)
            return Operator(name, role)

        return await self.db.write(add)

    async def get(self, name: str) -> Operator | None:
        def find(conn: Connection) -> Operator | None:
            row = conn.execute(select(operators).where(operators.c.name == name)).first()
            return None if row is None else _operator(row)

        return await self.db.read(find)

    async def all(self) -> list[Operator]:
        def everyone(conn: Connection) -> list[Operator]:
            rows = conn.execute(select(operators).order_by(operators.c.name))
            return [_operator(row) for row in rows]

        return await self.db.read(everyone)

    async def authenticate(self, name: str, password: str) -> Operator | None:
        """The operator, if the password is theirs and the account is enabled."""
        row = await self.db.read(
            lambda conn: conn.execute(select(operators).where(operators.c.name == name)).first()
        )
        stored = None if row is None else row.password_hash
        try:
            await asyncio.to_thread(_verify, stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if row is None or row.disabled:
            return None
        return _operator(row)

    async def change(
        self,
        name: str,
        actor: str,
        reason: str,
        *,
        role: Role | None = None,
        password: str | None = None,
        disabled: bool | None = None,
    ) -> Operator:
        """Change an account; a new password, a new role or disabling ends its sessions."""
        values: dict[str, object] = {}
        if password is not None:
            check_password(password)
            values["password_hash"] = await asyncio.to_thread(_hasher.hash, password)
        if role is not None:
            values["role"] = role.label
        if disabled is not None:
            values["disabled"] = disabled

        def change(conn: Connection) -> Operator:
            changed = conn.execute(
                update(operators)
                .where(operators.c.name == name)
                .values(updated_at=now_ms(), **values)
            )
            if changed.rowcount != 1:
                raise OperatorError(f"no operator {name!r}")
            conn.execute(delete(console_sessions).where(console_sessions.c.operator == name))
            detail = {k: v for k, v in values.items() if k != "password_hash"}
            if password is not None:
                detail["password"] = "changed"
            record(conn, actor, "operator.change", name, reason, **detail)
            return _operator(conn.execute(select(operators).where(operators.c.name == name)).one())

        return await self.db.write(change)


class Sessions:
    def __init__(self, db: Database, idle_ms: int, lifetime_ms: int) -> None:
        self.db = db
        self.idle_ms = idle_ms
        self.lifetime_ms = lifetime_ms

    async def open(self, operator: Operator, address: str) -> tuple[str, Session]:
        """A new session: the token for the cookie, and the session."""
        token, now = secrets.token_urlsafe(32), now_ms()
        session = Session(operator, secrets.token_urlsafe(32), now, now)

        def open_session(conn: Connection) -> None:
            conn.execute(
                insert(console_sessions).values(
                    token_hash=_digest(token),
                    operator=operator.name,
                    csrf_token=session.csrf_token,
                    created_at=now,
                    last_seen_at=now,
                    address=address[:64],
                )
            )
            # Sessions that ran out are removed as new ones open: the table stays small.
            conn.execute(
                delete(console_sessions).where(console_sessions.c.last_seen_at < now - self.idle_ms)
            )

        await self.db.write(open_session)
        return token, session

    async def find(self, token: str) -> Session | None:
        """The live session of this cookie, or None (unknown, idle too long, too old)."""
        digest = _digest(token)

        def find(conn: Connection):
            return conn.execute(
                select(console_sessions, operators.c.role, operators.c.disabled)
                .join(operators, operators.c.name == console_sessions.c.operator)
                .where(console_sessions.c.token_hash == digest)
            ).first()

        row = await self.db.read(find)
        now = now_ms()
        if (
            row is None
            or row.disabled
            or now - row.last_seen_at > self.idle_ms
            or now - row.created_at > self.lifetime_ms
        ):
            return None
        if now - row.last_seen_at > TOUCH_EVERY_MS:
            await self.db.write(
                lambda conn: conn.execute(
                    update(console_sessions)
                    .where(console_sessions.c.token_hash == digest)
                    .values(last_seen_at=now)
                )
            )
        operator = Operator(row.operator, Role.named(row.role))
        return Session(operator, row.csrf_token, row.created_at, now)

    async def close(self, token: str) -> None:
        digest = _digest(token)
        await self.db.write(
            lambda conn: conn.execute(
                delete(console_sessions).where(console_sessions.c.token_hash == digest)
            )
        )
