"""The composition root: builds everything one service process runs, and stops it."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from core.apps import AppStore, token_key
from core.config import load_config
from core.db import Database
from core.dispatcher import Dispatcher
from core.migrate import ensure_schema
from core.orders import OrderStore
from core.partner import PartnerDesk
from core.registry import Registry
from core.runtime import Runtime
from core.tokens import TokenIssuer
from plugins import BUILTIN_PLUGINS
from service.settings import Settings

log = logging.getLogger("topup.service")


def build_registry(extra_plugins: Iterable[object] = ()) -> Registry:
    return Registry(BUILTIN_PLUGINS, extra_plugins)


def load_runtime(settings: Settings, registry: Registry) -> Runtime:
    return Runtime.build(load_config(settings.config_path), registry)


class Services:
    def __init__(self, settings: Settings, extra_plugins: Iterable[object] = ()) -> None:
        self.settings = settings
        self.registry = build_registry(extra_plugins)
        self.runtime = load_runtime(settings, self.registry)
        self.db = Database(settings.database_url)
        self.store = OrderStore(self.db)
        self.dispatcher = Dispatcher(self.store, lambda: self.runtime)
        self.desk: PartnerDesk | None = None

    async def start(self) -> None:
        await ensure_schema(self.db)
        tokens = TokenIssuer(await token_key(self.db))
        self.desk = PartnerDesk(
            AppStore(self.db),
            tokens,
            self.store,
            lambda: self.runtime,
            on_accepted=self.dispatcher.wake,
        )
        self.dispatcher.start()
        log.info(
            "topup started: database %s, suppliers %s",
            self.db.url.render_as_string(hide_password=True),
            ", ".join(self.runtime.suppliers) or "none",
        )

    async def stop(self) -> None:
        await self.dispatcher.stop()
        await self.runtime.aclose()
        await self.db.dispose()
