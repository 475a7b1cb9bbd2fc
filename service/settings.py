"""Process settings, from the environment (secrets never live in code or files here)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import msgspec

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///var/topup.db"
REQUEST_TIMEOUT_ENV = "TOPUP_REQUEST_TIMEOUT"
DEFAULT_REQUEST_TIMEOUT = 10.0
APP_CACHE_ENV = "TOPUP_APP_CACHE_SECONDS"
IDLE_MINUTES_ENV = "TOPUP_CONSOLE_IDLE_MINUTES"
DEFAULT_APP_CACHE_SECONDS = 5.0


class Settings(msgspec.Struct, frozen=True):
    database_url: str = DEFAULT_DATABASE_URL
    config_path: str = "plugins.toml"
    host: str = "127.0.0.1"
    port: int = 8000
    # Seconds a client has to send a complete request before `topup serve` closes it.
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    # Console sessions end after this long without a request, and after 12 hours anyway.
    console_idle_minutes: float = 30.0
    # Mark the console's cookies Secure even when the request arrived as http (set it
    # when a TLS-terminating proxy sits in front).
    console_secure_cookie: bool = False
    # How long a service keeps a partner app it read (its secrets, allowlist, notify URL):
    # how soon a change made with `topup app` reaches the services already running.
    app_cache_seconds: float = DEFAULT_APP_CACHE_SECONDS

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            database_url=env.get("TOPUP_DATABASE_URL") or DEFAULT_DATABASE_URL,
            config_path=env.get("TOPUP_CONFIG") or "plugins.toml",
            host=env.get("TOPUP_HOST") or "127.0.0.1",
            port=_port(env.get("TOPUP_PORT") or "8000"),
            request_timeout=read_request_timeout(env),
            console_idle_minutes=_number(
                env, IDLE_MINUTES_ENV, 30.0, "minutes", zero_allowed=False
            ),
            console_secure_cookie=env.get("TOPUP_CONSOLE_SECURE_COOKIE", "") in ("1", "true"),
            app_cache_seconds=_number(
                env, APP_CACHE_ENV, DEFAULT_APP_CACHE_SECONDS, "seconds", zero_allowed=True
            ),
        )


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"TOPUP_PORT={text!r}: expected a port number from 1 to 65535")
    return int(text)


def _number(
    env: Mapping[str, str], name: str, default: float, unit: str, zero_allowed: bool
) -> float:
    """A number of ``unit`` from ``env[name]`` (``default`` when unset or empty): finite,
    above zero or, where ``zero_allowed``, zero or above; else a ValueError naming the
    variable."""
    text = env.get(name) or ""
    if not text:
        return default
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    lowest_ok = number >= 0 if zero_allowed else number > 0  # False for nan
    if not (lowest_ok and number < math.inf):
        lowest = "0 or more" if zero_allowed else "above 0"
        raise ValueError(f"{name}={text!r}: expected a number of {unit}, {lowest}")
    return number


def read_request_timeout(env: Mapping[str, str]) -> float:
    """TOPUP_REQUEST_TIMEOUT: seconds, a number above zero (default 10)."""
    return _number(env, REQUEST_TIMEOUT_ENV, DEFAULT_REQUEST_TIMEOUT, "seconds", zero_allowed=False)
