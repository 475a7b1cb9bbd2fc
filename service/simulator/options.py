"""What one simulator run is told: its options, and the supplier credentials it expects."""

from __future__ import annotations

import os
import secrets
from collections.abc import MutableMapping

import msgspec

# The workers of the server are separate processes that import the app, so the options
# travel to them through the environment.
OPTIONS_ENV = "TOPUP_SIM_OPTIONS"


class SimulatorOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 9000
    settle: float = 1.0
    # Run-wide faults as given on the command line: "NAME" or "NAME:SECONDS".
    faults: tuple[str, ...] = ()
    juhe_callback: str | None = None
    reloadly_webhook: str | None = None
    token_ttl: float = 3600.0
    callback_retries: int = 3
    callback_interval: float = 3.0

    def to_env(self) -> str:
        return msgspec.json.encode(self).decode()

    @classmethod
    def from_env(cls) -> SimulatorOptions:
        raw = os.environ.get(OPTIONS_ENV)
        return msgspec.json.decode(raw, type=cls) if raw else cls()


# Field name -> environment variable; the plugins read the same variables by default.
CREDENTIAL_ENV = {
    "juhe_key": "TOPUP_JUHE_KEY",
    "juhe_openid": "TOPUP_JUHE_OPENID",
    "reloadly_client_id": "TOPUP_RELOADLY_CLIENT_ID",
    "reloadly_client_secret": "TOPUP_RELOADLY_CLIENT_SECRET",
    "reloadly_webhook_secret": "TOPUP_RELOADLY_WEBHOOK_SECRET",
    "acme_api_key": "TOPUP_ACME_API_KEY",
}


class MissingCredentials(RuntimeError):
    pass


class Credentials(msgspec.Struct, frozen=True):
    juhe_key: str
    juhe_openid: str
    reloadly_client_id: str
    reloadly_client_secret: str
    reloadly_webhook_secret: str
    acme_api_key: str

    @classmethod
    def from_env(cls) -> Credentials:
        missing = [name for name in CREDENTIAL_ENV.values() if not os.environ.get(name)]
        if missing:
            raise MissingCredentials(f"credentials not set: {', '.join(missing)}")
        return cls(**{field: os.environ[name] for field, name in CREDENTIAL_ENV.items()})


def fill_missing_credentials(env: MutableMapping[str, str]) -> dict[str, str]:
    """Invent a value for every unset credential, store it in ``env`` and return the new ones."""
    invented = {}
    for name in CREDENTIAL_ENV.values():
        if not env.get(name):
            invented[name] = env[name] = secrets.token_hex(16)
    return invented
