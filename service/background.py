"""The background process: dispatcher and notifier, without HTTP.

``topup serve`` starts it beside the API process, so that the two share the work of
an order across two cores; ``topup worker`` runs it alone. It stops on SIGTERM or
SIGINT, and by itself when the process that started it goes away (even killed with
-9), rather than carry on alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from service.logs import configure_logging
from service.settings import Settings
from service.wiring import Services, settle_heap

log = logging.getLogger("topup.background")

PARENT_CHECK_SECONDS = 1.0


def run_background(watch_parent: bool = False) -> None:
    """Run until stopped (the entry point of the background process)."""
    configure_logging()
    try:
        import uvloop

        uvloop.run(_main(watch_parent))
    except ImportError:
        asyncio.run(_main(watch_parent))


async def _main(watch_parent: bool) -> None:
    services = Services(Settings.from_env(), api=False, background=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await services.start()
    settle_heap()
    watcher = asyncio.create_task(_watch_parent(os.getppid(), stop)) if watch_parent else None
    try:
        await stop.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await services.stop()
        log.info("background worker stopped")


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    # Nothing signals a parent's death (short of Linux-only prctl): look.
    while os.getppid() == parent:  # noqa: ASYNC110
        await asyncio.sleep(PARENT_CHECK_SECONDS)
    log.warning("the serving process is gone; the background worker stops too")
    stop.set()
