"""The composition root: builds everything one service process runs, and stops it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Iterable

from core import metrics
from core.apps import AppStore, token_key
from core.balances import BalanceCache
from core.config import ConfigError, load_config
from core.control import CONFIG_GENERATION, bump_counter, read_counter
from core.db import Database
from core.dispatcher import Dispatcher
from core.ids import NODE_COUNTER, OrderNumbers
from core.ledger import Ledger
from core.lifecycle import Lifecycle
from core.migrate import ensure_schema
from core.notifier import Notifier
from core.notify import Outbox
from core.operators import OperatorStore, Sessions
from core.order_store import OrderStore
from core.partner import PartnerDesk
from core.ratelimit import AbuseGuard, SignInThrottle
from core.registry import Registry
from core.route_overrides import SkippedOverride, apply_overrides, load_overrides
from core.runtime import Runtime
from core.sealing import load_sealer
from core.tokens import TokenIssuer
from plugins import BUILTIN_PLUGINS
from service.notifier import NotificationSender
from service.settings import Settings

log = logging.getLogger("topup.service")

RELOAD_POLL_SECONDS = 1.0
# "0" in an API process tells it that background work runs in a process of its own.
BACKGROUND_ENV = "TOPUP_BACKGROUND"
CONSOLE_SESSION_HOURS = 12


# Container allocations, net of frees, between two young-generation collections
# (Python's default is 700).
YOUNG_COLLECTION_THRESHOLD = 20_000


def settle_heap() -> None:
    """Put what start-up built out of the cyclic garbage collector's way, once started.

    A started service holds about 125,000 objects that live as long as the process
    (Litestar's, SQLAlchemy's, the plugins'), and every full collection walked them all,
    stopping the event loop for 100 to 200 ms on a 2-core machine: most of the acceptance
    p99. Frozen (``gc.freeze``), a full collection walks only what came after. Garbage
    is collected first, so that none of it is kept for good.

    Under load the requests and orders in flight hold several thousand young objects at
    any moment, so at Python's threshold of 700 the collector ran every few orders and
    found next to nothing to free: 4 to 6 µs of the dispatcher's CPU per order
    (bench/LOG.md, 2026-11-29 "collector"). Above what is in flight, a collection is
    rare; each one walks at most this many objects (a few milliseconds).
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, older, oldest)


def build_registry(extra_plugins: Iterable[object] = ()) -> Registry:
    return Registry(BUILTIN_PLUGINS, extra_plugins)


def load_runtime(settings: Settings, registry: Registry) -> Runtime:
    """plugins.toml alone (the commands that only read products or plugin settings)."""
    return Runtime.build(load_config(settings.config_path), registry)


async def load_effective_runtime(
    settings: Settings, registry: Registry, db: Database
) -> tuple[Runtime, list[SkippedOverride]]:
    """What an instance runs: plugins.toml with the route overrides stored in the database,
    and the overrides that no longer fit the file (skipped)."""
    file_config = load_config(settings.config_path)
    config, skipped = apply_overrides(file_config, await load_overrides(db))
    return Runtime.build(config, registry, file_config), skipped


class Services:
    """What one process runs. ``api``: the HTTP side (partner calls, supplier callbacks);
    ``background``: the dispatcher and the notifier. ``topup serve`` runs one of each, as
    two processes, so each gets a core of its own."""

    def __init__(
        self,
        settings: Settings,
        extra_plugins: Iterable[object] = (),
        api: bool = True,
        background: bool = True,
    ) -> None:
        self.settings = settings
        self.api = api
        self.background = background
        self.registry = build_registry(extra_plugins)
        self.runtime = load_runtime(settings, self.registry)
        self.db = Database(settings.database_url)
        self.store = OrderStore(self.db)
        self.lifecycle = Lifecycle(self.db)
        # Loaded here so that a missing or malformed master key stops the start at once.
        self.sealer = load_sealer()
        self.apps = AppStore(self.db, cache_seconds=settings.app_cache_seconds, sealer=self.sealer)
        self.ledger = Ledger(self.db)
        self.dispatcher = Dispatcher(self.lifecycle, self.store, lambda: self.runtime)
        self.notification_sender = NotificationSender(
            self.apps, self.store, lambda: self.runtime.config.notify
        )
        self.notifier = Notifier(
            Outbox(self.db), self.notification_sender.send, lambda: self.runtime.config
        )
        # Abuse limits of this process; counts survive a reload, settings follow it.
        self.guard = AbuseGuard(self.runtime.config.limits)
        # Suppliers' balances for the console, asked for at most once a minute.
        self.balances = BalanceCache(lambda: self.runtime.suppliers)
        self.desk: PartnerDesk | None = None
        self.operators = OperatorStore(self.db)
        self.sessions = Sessions(
            self.db,
            idle_ms=int(settings.console_idle_minutes * 60_000),
            lifetime_ms=CONSOLE_SESSION_HOURS * 3_600_000,
        )
        self.sign_in_throttle = SignInThrottle()
        self._background: set[asyncio.Task] = set()

    async def start(self) -> None:
        await ensure_schema(self.db)
        # The generation first: a change made while the overrides load is reloaded again.
        generation = await read_counter(self.db, CONFIG_GENERATION)
        await self._apply_config(initial=True)
        tokens = TokenIssuer(await token_key(self.db, self.sealer))
        # A node number no other running process holds keeps order numbers unique.
        node = await bump_counter(self.db, NODE_COUNTER)
        self.desk = PartnerDesk(
            self.apps,
            tokens,
            self.store,
            self.lifecycle,
            self.ledger,
            lambda: self.runtime,
            on_accepted=self.dispatcher.wake,
            order_numbers=OrderNumbers(node),
            guard=self.guard,
        )
        if self.background:
            self.dispatcher.start()
            self.notifier.start()
        self._spawn(self._watch_config(generation))
        log.info(
            "topup %s started: database %s, suppliers %s",
            "+".join(
                role for role, on in (("api", self.api), ("background", self.background)) if on
            ),
            self.db.url.render_as_string(hide_password=True),
            ", ".join(self.runtime.suppliers) or "none",
        )

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await self.balances.stop()
        await self.dispatcher.stop()
        await self.notifier.stop()
        await self.notification_sender.aclose()
        await self.runtime.aclose()
        await self.db.dispose()
        # What was tallied since the last flush (core/metrics.py), before the process goes.
        metrics.flush()

    async def reload(self, generation: int | None = None) -> bool:
        """Swap in the configuration on disk with the stored route overrides; an invalid
        file changes nothing."""
        if not await self._apply_config():
            return False
        log.info(
            "configuration reloaded%s: suppliers %s",
            "" if generation is None else f" (generation {generation})",
            ", ".join(self.runtime.suppliers) or "none",
        )
        return True

    async def _apply_config(self, initial: bool = False) -> bool:
        try:
            runtime, skipped = await load_effective_runtime(self.settings, self.registry, self.db)
        except ConfigError as exc:
            log.error("configuration reload refused, the running routes stay: %s", exc)
            return False
        for override in skipped:
            log.error("%s", override.log_line())
        previous, self.runtime = self.runtime, runtime
        self.guard.configure(runtime.config.limits)
        # Calls already under way keep the old suppliers until they finish (none at start).
        grace = 0.0 if initial else previous.config.dispatch.call_timeout + 1
        self._spawn(previous.aclose(grace=grace))
        return True

    async def _watch_config(self, generation: int) -> None:
        while True:
            await asyncio.sleep(RELOAD_POLL_SECONDS)
            try:
                current = await read_counter(self.db, CONFIG_GENERATION)
            except Exception:
                log.exception("could not read the configuration generation")
                continue
            if current != generation:
                generation = current
                await self.reload(generation)

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        if task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())
