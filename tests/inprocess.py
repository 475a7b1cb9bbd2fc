"""The in-process tier: the real Litestar app, served in the test's own process.

``create_app`` builds the same app ``topup serve`` runs, on a database of its own and with
the same plugins.toml, master key and token key as a test service process; Litestar's test
transport carries each request into it, so nothing listens on a port and nothing is
spawned. The ``topup`` commands run in this process too (click's runner), against the same
database. Background work (dispatcher, notifier) is off unless a test asks for it.

For every rule that needs no real process: the partner API's validation, signing,
idempotency and refusals, console pages. Crashes, kill -9, scale-out, slow clients at the
socket, the metrics multiprocess directory and anything about uvicorn itself stay with
``ServiceProcess``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner
from litestar.testing import TestClient
from litestar.testing.transport import TestClientTransport

from core.sealing import MASTER_KEY_FILE_ENV
from service.cli import main as topup_main
from service.settings import Settings
from tests.support import SQLITE, Backend, Service

# The address uvicorn reports for a test's requests: the app sees what a service would.
PEER = ("127.0.0.1", 50000)
# Where the test's requests go; any host works, the app does not look.
BASE_URL = "http://topup.test"
# service/logs.py's line format, so that a test reads the same log either way.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class InProcessService(Service):
    """The app ``create_app`` builds, started (its lifespan run) and stopped in this process."""

    def __init__(
        self,
        workdir: Path,
        config: str,
        env: Mapping[str, str] | None = None,
        backend: Backend = SQLITE,
        background: bool = False,
        settle: bool = False,
    ) -> None:
        self.workdir = workdir
        self.settle = settle
        self.backend = backend
        self.background = background
        self.database_url = backend.migrated_database(workdir)
        self.config_path = workdir / "plugins.toml"
        self.config_path.write_text(config, encoding="utf-8")
        self.url = BASE_URL
        # What a service process would find in its environment; the app reads it while it
        # is built and started, the ``topup`` commands each time they run.
        self.env = {
            "TOPUP_DATABASE_URL": self.database_url,
            "TOPUP_CONFIG": str(self.config_path),
            MASTER_KEY_FILE_ENV: str(workdir / "master.key"),
            **(env or {}),
        }
        self._log = io.StringIO()
        self._handler = logging.StreamHandler(self._log)
        self._handler.setFormatter(logging.Formatter(LOG_FORMAT))
        self._client: TestClient | None = None
        self._clients: list[httpx.Client] = []

    def start(self) -> InProcessService:
        # The log a service process would write: topup's lines from INFO, anything else's
        # warnings and errors (the root logger's level), while this service runs.
        topup = logging.getLogger("topup")
        self._level = topup.level
        topup.setLevel(logging.INFO)
        logging.getLogger().addHandler(self._handler)
        try:
            with _environment(self.env), _root_logging_kept():
                settings = Settings.from_env()  # as ``topup serve`` reads them
                from service.app import create_app

                app = create_app(settings, background=self.background, settle=self.settle)
                client = TestClient(app, base_url=BASE_URL, raise_server_exceptions=False)
                client.__enter__()  # the lifespan: migrations, token key, node number
        except BaseException:
            self._detach_log()
            raise
        self._client = client
        return self

    def stop(self) -> None:
        for http in self._clients:
            http.close()
        self._clients.clear()
        if self._client is not None:
            self._client.__exit__(None, None, None)
            self._client = None
            self._detach_log()

    def _detach_log(self) -> None:
        logging.getLogger().removeHandler(self._handler)
        logging.getLogger("topup").setLevel(self._level)

    @property
    def services(self) -> Any:
        """The running app's ``Services`` (service/wiring.py), for a test that must reach
        inside, as a bug would."""
        assert self._client is not None, "the service is not started"
        return self._client.app.state.services

    def on_loop(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` on the app's event loop (awaited if it is a coroutine), for
        what must run there: starting a worker, or reaching into its connection."""
        assert self._client is not None, "the service is not started"
        return self._client.blocking_portal.call(function, *args)

    def http_client(self, **options: Any) -> httpx.Client:
        """A client with cookies of its own, to the one running app."""
        assert self._client is not None, "the service is not started"
        options.setdefault("timeout", 10)
        transport = _FromPeer(client=self._client, raise_server_exceptions=False, root_path="")
        http = httpx.Client(base_url=BASE_URL, transport=transport, **options)
        self._clients.append(http)
        return http

    def log(self) -> str:
        return self._log.getvalue()

    def cli(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess:
        """``topup ARGS`` as an operator would type it, run in this process."""
        result = CliRunner().invoke(topup_main, list(args), input=input, env=self.env)
        stderr = result.stderr
        if result.exc_info is not None and not isinstance(result.exception, SystemExit):
            stderr += "".join(traceback.format_exception(*result.exc_info))  # as Python would
        command = ["topup", *args]
        done = subprocess.CompletedProcess(command, result.exit_code, result.stdout, stderr)
        if check:
            done.check_returncode()
        return done

    def cli_many(self, commands: list[list[str]], input: str | None = None) -> str:
        """Several ``topup`` commands; one reading standard input reads the next line."""
        lines = iter((input or "").splitlines())
        output = []
        for args in commands:
            stdin = next(lines, "") if "--password-stdin" in args else None
            output.append(self.cli(*args, input=stdin).stdout)
        return "".join(output)


class _FromPeer(TestClientTransport):
    """Litestar's test transport, with each request coming from PEER as behind uvicorn."""

    def parse_request(self, request: httpx.Request) -> dict[str, Any]:
        return {**super().parse_request(request), "client": PEER}

    # Nothing to open or close: the app starts and stops with its service.
    def __enter__(self) -> _FromPeer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _root_logging_kept() -> Iterator[None]:
    """Litestar and Alembic set up the root logger as a process of its own would; this
    process is pytest's, and its other tests keep the logging they had."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in os.environ for the block only: other tests' processes must not
    inherit them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
