"""Process settings, from the environment (secrets never live in code or files here)."""

from __future__ import annotations

import os

import msgspec

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///var/topup.db"


class Settings(msgspec.Struct, frozen=True):
    database_url: str = DEFAULT_DATABASE_URL
    config_path: str = "plugins.toml"
    host: str = "127.0.0.1"
    port: int = 8000

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            database_url=env.get("TOPUP_DATABASE_URL") or DEFAULT_DATABASE_URL,
            config_path=env.get("TOPUP_CONFIG") or "plugins.toml",
            host=env.get("TOPUP_HOST") or "127.0.0.1",
            port=int(env.get("TOPUP_PORT") or 8000),
        )
