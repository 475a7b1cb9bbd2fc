"""Secrets at rest: app secrets and the token key are sealed with a master key.

Reading the database (a backup, a replica, a support dump) must not be enough to sign
as a partner or to forge tokens, so every secret the database holds is encrypted with
AES-256-GCM under a master key that is never stored in it. App secrets must still be
usable for HMAC, so they are encrypted, not hashed.

The master key comes from ``TOPUP_MASTER_KEY`` (base64 of 32 bytes; several keys may be
given comma-separated, newest first: the first seals, all open), or else from a key file
(``TOPUP_MASTER_KEY_FILE``, default ``var/master.key``) that the first process to need
it creates with mode 0600. Every instance sharing a database needs the same key.

A sealed value reads ``sealed:v1:<key id>:<base64(nonce + ciphertext)>``; the key id
(the first bytes of the key's SHA-256) says which key opens it, so ``topup keys rotate``
can move rows to a new key while the old one still opens those it has not reached.
The row's identity (``apps:<app_id>``) is authenticated with it, so a sealed secret
copied onto another row does not open.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MASTER_KEY_ENV = "TOPUP_MASTER_KEY"
MASTER_KEY_FILE_ENV = "TOPUP_MASTER_KEY_FILE"
DEFAULT_KEY_FILE = "var/master.key"
PREFIX = "sealed:v1:"
KEY_BYTES = 32
_NONCE_BYTES = 12


class SealingError(Exception):
    """A master key is missing or malformed, or a sealed value cannot be opened."""


def new_master_key() -> str:
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SealingError(f"{where}: a master key must be base64 of 32 bytes") from exc
    if len(key) != KEY_BYTES:
        raise SealingError(f"{where}: a master key must be 32 bytes, this one is {len(key)}")
    return key


class Sealer:
    """Seals with the newest master key; opens with any key it holds."""

    def __init__(self, keys: Sequence[bytes], key_file: Path | None = None) -> None:
        if not keys:
            raise SealingError("no master key")
        self._keys = {key_id(key): AESGCM(key) for key in keys}
        self.current_id = key_id(keys[0])
        self.key_file = key_file

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    def seal(self, plaintext: str, context: str) -> str:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = self._keys[self.current_id].encrypt(nonce, plaintext.encode(), context.encode())
        return f"{PREFIX}{self.current_id}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, value: str, context: str) -> str:
        if not value.startswith(PREFIX):
            raise SealingError(f"{context}: the stored secret is not sealed")
        found_id, _, body = value[len(PREFIX) :].partition(":")
        cipher = self._keys.get(found_id) or self._reloaded(found_id)
        if cipher is None:
            raise SealingError(
                f"{context}: sealed with master key {found_id}, which this process does not "
                f"hold (it holds {', '.join(self._keys)})"
            )
        try:
            raw = base64.b64decode(body, validate=True)
            return cipher.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], context.encode()).decode()
        except (InvalidTag, binascii.Error, ValueError) as exc:
            raise SealingError(f"{context}: the sealed secret does not open") from exc

    def key_id_of(self, value: str) -> str | None:
        if not value.startswith(PREFIX):
            return None
        return value[len(PREFIX) :].partition(":")[0]

    def _reloaded(self, wanted: str) -> AESGCM | None:
        # `topup keys rotate` may have added a key to the file since this process started.
        if self.key_file is None or not self.key_file.exists():
            return None
        for key in _read_key_file(self.key_file):
            self._keys.setdefault(key_id(key), AESGCM(key))
        return self._keys.get(wanted)


def load_sealer(environ: dict[str, str] | None = None, create: bool = True) -> Sealer:
    """The master keys this process holds, from the environment or the key file."""
    env = os.environ if environ is None else environ
    configured = env.get(MASTER_KEY_ENV, "").strip()
    if configured:
        keys = [_decode_key(part, MASTER_KEY_ENV) for part in configured.split(",") if part]
        return Sealer(keys)
    path = key_file_path(env)
    if not path.exists():
        if not create:
            raise SealingError(f"no master key: set {MASTER_KEY_ENV} or create {path}")
        create_key_file(path, [new_master_key()])
    return Sealer(_read_key_file(path), key_file=path)


def key_file_path(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get(MASTER_KEY_FILE_ENV) or DEFAULT_KEY_FILE)


def _read_key_file(path: Path) -> list[bytes]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise SealingError(f"{path}: the master key file is empty")
    return [_decode_key(line, str(path)) for line in lines]


def create_key_file(path: Path, keys: Sequence[str]) -> None:
    """Write a new key file atomically with mode 0600; if another process won the race
    to create it first, keep theirs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    _write_private(temporary, keys)
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        temporary.unlink()


def replace_key_file(path: Path, keys: Sequence[str]) -> None:
    """Swap the key file's contents atomically (rename), keeping mode 0600."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    _write_private(temporary, keys)
    os.replace(temporary, path)


def _write_private(path: Path, keys: Sequence[str]) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with contextlib.closing(os.fdopen(descriptor, "w")) as handle:
        handle.write("".join(f"{key}\n" for key in keys))
        handle.flush()
        os.fsync(handle.fileno())
