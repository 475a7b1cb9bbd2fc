"""Test harness: real service processes, and a partner client that signs like a partner."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from core.signing import SignType, compute_sign
from tests.forked_topup import FORKED_TOPUP, ForkedProcess

# eventually and eventually_async live in the public kit, for plugin authors' tests as well;
# the tests import them from here.
from topup.testing import eventually, free_port, wait_until_healthy
from topup.testing import eventually_async as eventually_async

REPO = Path(__file__).resolve().parent.parent
TOPUP = str(Path(sys.executable).with_name("topup"))

# What the background process logs once it works (service/wiring.py), when it runs apart.
BACKGROUND_STARTED = "topup background started"


# Fast lifecycle settings so that every sandbox order settles within a second or two.
FAST_DISPATCH = """
[dispatch]
query_delays = [0.2, 0.4, 0.8]
call_timeout = 2
lease_seconds = 3
scan_interval = 0.1
"""

PRODUCTS = """
products = [
  { product_id = "YD10", name = "移动10元", face_value = "10", price = "9.95" },
  { product_id = "YD50", name = "移动50元", face_value = "50", price = "49.75" },
]
"""


def sandbox_config(
    extra: str = "", route: str = '["sandbox"]', enabled: str = '["sandbox"]'
) -> str:
    return f"""
enabled = {enabled}
{FAST_DISPATCH}
[plugin.sandbox]
timeout_after = 0.3
{extra}
[suppliers."中国移动"]
route = {route}
{PRODUCTS}
[suppliers."中国联通"]
route = {route}
products = [{{ product_id = "LT10", face_value = "10", price = "9.95" }}]
"""


# The password test operators are created with (`ServiceProcess.add_operator`).
OPERATOR_PASSWORD = "correct horse battery staple"


def topup_cli(
    *args: str,
    env: Mapping[str, str],
    check: bool = True,
    input: str | None = None,
    topup: str = TOPUP,
) -> subprocess.CompletedProcess:
    """``topup ARGS`` in a process of its own, as from a shell in the repository. This
    environment's command is forked from a warm interpreter (tests/forked_topup.py); another
    environment's (a plugin author's venv) is started as it is."""
    if topup != TOPUP:
        return subprocess.run(
            [topup, *args],
            env=dict(env),
            cwd=REPO,
            capture_output=True,
            text=True,
            check=check,
            input=input,
        )
    code, stdout, stderr = FORKED_TOPUP.run([list(args)], env=env, cwd=str(REPO), input=input)
    done = subprocess.CompletedProcess([topup, *args], code, stdout, stderr)
    if check:
        done.check_returncode()
    return done


class Backend:
    """Where a test service keeps its data: a fresh database per service."""

    name = "sqlite"
    _template: Path | None = None

    def new_database(self, workdir: Path) -> str:
        return f"sqlite+aiosqlite:///{workdir}/topup.db"

    def migrated_database(self, workdir: Path) -> str:
        """A copy of one database per test process that ``topup db upgrade`` migrated (a
        database already in ``workdir`` is kept). A service started on an empty file would
        migrate it itself (tests/test_migrations.py starts from one), at a third of a
        second of CPU per service."""
        if self._template is None:
            folder = Path(tempfile.mkdtemp(prefix="topup-template-"))
            atexit.register(shutil.rmtree, folder, True)
            template = folder / "topup.db"
            url = f"sqlite+aiosqlite:///{template}"
            topup_cli("db", "upgrade", env={**os.environ, "TOPUP_DATABASE_URL": url})
            self._template = template
        if not (workdir / "topup.db").exists():
            shutil.copyfile(self._template, workdir / "topup.db")
        return self.new_database(workdir)

    def sql(self, url: str, query: str, *args: Any) -> list[tuple]:
        with sqlite3.connect(url.split("///", 1)[1], timeout=30) as conn:
            return conn.execute(query, args).fetchall()

    def migrate(self, env: Mapping[str, str]) -> None:
        """SQLite services migrate by themselves."""

    def drop(self, url: str) -> None:
        pass


class PostgresBackend(Backend):
    """A database of its own per service on the PostgreSQL the machine runs."""

    name = "postgres"

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self._template: str | None = None

    def new_database(self, workdir: Path, template: str = "template1") -> str:
        name = f"topup_t_{os.getpid()}_{time.time_ns() % 10**12}"
        self._run(self.admin_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self._url(name)

    def migrated_database(self, workdir: Path) -> str:
        """A copy of one database per test process that ``topup db upgrade`` migrated: the
        operator's own step, taken once rather than at a second of CPU per test."""
        if self._template is None:
            template = f"topup_template_{os.getpid()}"
            self._run(self.admin_dsn, f'DROP DATABASE IF EXISTS "{template}"')
            self._run(self.admin_dsn, f'CREATE DATABASE "{template}"')
            self.migrate({**os.environ, "TOPUP_DATABASE_URL": self._url(template)})
            atexit.register(self.drop, self._url(template))
            self._template = template
        return self.new_database(workdir, template=self._template)

    def _url(self, name: str) -> str:
        return f"postgresql+asyncpg://{self._dsn(name).split('://', 1)[1]}"

    def sql(self, url: str, query: str, *args: Any) -> list[tuple]:
        numbered, count = query, 0
        while "?" in numbered:
            count += 1
            numbered = numbered.replace("?", f"${count}", 1)
        return self._run(url.replace("postgresql+asyncpg", "postgresql"), numbered, *args)

    def migrate(self, env: Mapping[str, str]) -> None:
        topup_cli("db", "upgrade", env=env)

    def drop(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self._run(self.admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _dsn(self, database: str) -> str:
        return self.admin_dsn.rsplit("/", 1)[0] + "/" + database

    @staticmethod
    def _run(dsn: str, query: str, *args: Any) -> list[tuple]:
        import asyncpg

        async def run() -> list[tuple]:
            conn = await asyncpg.connect(dsn, timeout=5)
            try:
                return [tuple(row) for row in await conn.fetch(query, *args)]
            finally:
                await conn.close()

        return asyncio.run(run())


POSTGRES_DSN = os.environ.get("TOPUP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
SQLITE = Backend()


def postgres_or_reason() -> PostgresBackend | str:
    """The PostgreSQL backend, or why it cannot be had here."""
    backend = PostgresBackend(POSTGRES_DSN)
    try:
        backend._run(POSTGRES_DSN, "SELECT 1")
    except Exception as exc:
        return f"no PostgreSQL at {POSTGRES_DSN}: {type(exc).__name__}: {exc}"
    return backend


class Service:
    """What the tests ask of a service, however it runs: its log, its ``topup`` commands, its
    database, and HTTP clients to it."""

    backend: Backend
    database_url: str
    url: str

    def log(self) -> str:
        raise NotImplementedError

    def cli(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess:
        raise NotImplementedError

    def cli_many(self, commands: list[list[str]], input: str | None = None) -> str:
        raise NotImplementedError

    def http_client(self, **options: Any) -> httpx.Client:
        """A client of its own (its own cookies) to the service."""
        return httpx.Client(base_url=self.url, **{"timeout": 10, **options})

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 10) -> str:
        """The log once `text` appears `count` times: a reply can leave before its log line."""

        def logged() -> str:
            log = self.log()
            assert log.count(text) >= count, (
                f"{text!r} logged {log.count(text)} times:\n{log[-2000:]}"
            )
            return log

        return eventually(logged, timeout, what=f"{text!r} in the log {count} times")

    def add_operator(self, name: str, role: str, password: str = OPERATOR_PASSWORD) -> None:
        """A console account, created as an operator would: ``topup operator add``."""
        self.cli("operator", "add", name, "--role", role, "--password-stdin", input=password)

    def add_app(self, app_id: str, company: str, sign_type: str = "hmac-sha256") -> str:
        result = self.cli("app", "add", app_id, "--company", company, "--sign-type", sign_type)
        return result.stdout.strip()

    def sql(self, query: str, *args: Any) -> list[tuple]:
        """Run SQL on the service's database (``?`` placeholders, portable SQL only)."""
        return self.backend.sql(self.database_url, query, *args)

    def drop_database(self) -> None:
        self.backend.drop(self.database_url)

    def count_orders(self) -> int:
        return self.sql("SELECT count(*) FROM orders")[0][0]

    def wait_for_state(self, order_no: str, state: str, timeout: float = 20) -> None:
        """Wait until the order is in ``state``, reading the database (a ``topup`` command
        per look would cost a second of CPU each)."""

        def reached() -> bool:
            found = self.sql("SELECT state FROM orders WHERE order_no = ?", order_no)
            assert found == [(state,)], f"state {found}"
            return True

        eventually(reached, timeout, interval=0.1, what=f"{order_no} reaching {state}")


class ServiceProcess(Service):
    """``topup serve`` in its own process group, so kill -9 takes all of it down."""

    def __init__(
        self,
        workdir: Path,
        config: str,
        env: Mapping[str, str] | None = None,
        backend: Backend = SQLITE,
        database_url: str | None = None,
        serve_args: tuple[str, ...] = (),
        topup: str = TOPUP,
    ) -> None:
        self.workdir = workdir
        self.serve_args = serve_args
        # The `topup` command: another environment's, for a plugin installed there.
        self.topup = topup
        self.backend = backend
        # A database handed in may be empty: the first service on it migrates it.
        self.database_url = database_url or backend.migrated_database(workdir)
        self.config_path = workdir / "plugins.toml"
        self.config_path.write_text(config, encoding="utf-8")
        self.port = free_port()
        self.log_path = workdir / f"service-{self.port}.log"
        self._migrated = database_url is None
        self.env = {
            **os.environ,
            "TOPUP_DATABASE_URL": self.database_url,
            "TOPUP_CONFIG": str(self.config_path),
            "TOPUP_HOST": "127.0.0.1",
            "TOPUP_PORT": str(self.port),
            "PYTHONPATH": str(REPO),
            **(env or {}),
        }
        self.proc: subprocess.Popen | ForkedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        if not self._migrated:
            self.backend.migrate(self.env)
            self._migrated = True
        background_starts = self.log().count(BACKGROUND_STARTED)
        self.proc = self._forked() or self._started()
        try:
            self._wait_ready()
            if self._background_apart():
                # Started means all of it: a test acting before the background process
                # has read the configuration would race it (a fresh interpreter's start).
                self.wait_for_log(BACKGROUND_STARTED, count=background_starts + 1, timeout=30)
        except BaseException:
            self._end_failed_start()
            raise
        return self

    def _end_failed_start(self) -> None:
        """Kill what a start that never became ready left running (its background process
        may outlive it), so that it does not eat the cores of the rest of the suite; its
        exit code stays readable."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def _background_apart(self) -> bool:
        """Whether ``topup serve`` runs the background worker as a process of its own."""
        sqlite = self.database_url.startswith("sqlite")
        return not sqlite and "--no-background" not in self.serve_args

    def _forked(self) -> ForkedProcess | None:
        """This environment's ``topup serve``, forked from the tests' warm interpreter."""
        if self.topup != TOPUP:
            return None
        args = ["serve", *self.serve_args]
        return FORKED_TOPUP.start(args, env=self.env, cwd=str(REPO), log=str(self.log_path))

    def _started(self) -> subprocess.Popen:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [self.topup, "serve", *self.serve_args],
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_ready(self) -> None:
        assert self.proc is not None
        wait_until_healthy(f"{self.url}/healthz", self.proc, self.log)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        """Crash the service: SIGKILL to every process of it, no shutdown code runs."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def cli(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess:
        return topup_cli(*args, env=self.env, check=check, input=input, topup=self.topup)

    def cli_many(self, commands: list[list[str]], input: str | None = None) -> str:
        """Several ``topup`` commands in one process; a command reading standard input
        (``--password-stdin``) reads the next line of it."""
        code, stdout, stderr = FORKED_TOPUP.run(
            commands, env=self.env, cwd=str(REPO), input=input, standalone=False
        )
        if code != 0:
            raise subprocess.CalledProcessError(code, ["topup", *commands], stdout, stderr)
        return stdout


class Partner:
    """A partner's integration: signs every call as the README tells partners to."""

    def __init__(
        self,
        base_url: str,
        app_id: str,
        secret: str,
        company: str,
        sign_type: SignType = SignType.HMAC_SHA256,
        http: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url
        self.app_id = app_id
        self.secret = secret
        self.company = company
        self.sign_type = SignType(sign_type)
        self.http = http or httpx.Client(base_url=base_url, timeout=10)
        self._token: str | None = None

    def signed(self, params: Mapping[str, str], secret: str | None = None) -> dict[str, str]:
        params = {"appID": self.app_id, "ts": str(int(time.time())), **params}
        params["sign"] = compute_sign(params, secret or self.secret, self.sign_type)
        return params

    def token(self) -> str:
        if self._token is None:
            reply = self.http.post("/sign/api/token", data=self.signed({})).json()
            assert reply["code"] == "0", reply
            self._token = reply["data"]["access_token"]
        return self._token

    def base(self, **params: str) -> dict[str, str]:
        return {"access_token": self.token(), "company": self.company, **params}

    def order_params(self, cstm_order_no: str, phone: str = "13800138000", **extra: str):
        defaults = {
            "Supplier": "中国移动",
            "phoneNo": phone,
            "productId": "YD10",
            "cstmOrderName": "物业缴费",
            "cstmOrderNo": cstm_order_no,
        }
        return self.base(**(defaults | extra))

    def order(self, cstm_order_no: str, phone: str = "13800138000", **extra: str) -> dict:
        params = self.signed(self.order_params(cstm_order_no, phone, **extra))
        return self.http.post("/sign/api/order", data=params).json()

    def status(self, cstm_order_no: str, supplier: str = "中国移动", **extra: str) -> dict:
        params = self.signed(self.base(Supplier=supplier, cstmOrderNo=cstm_order_no, **extra))
        return self.http.get("/sign/api/order/status", params=params).json()

    def wait_status(self, cstm_order_no: str, statuses: set[str], timeout: float = 15.0) -> dict:
        seen: list[str] = []

        def reached() -> dict:
            reply = self.status(cstm_order_no)
            assert reply["code"] == "0", reply
            seen.append(reply["data"]["status"])
            assert reply["data"]["status"] in statuses, f"saw {seen[-5:]}"
            return reply

        return eventually(reached, timeout, what=f"{cstm_order_no} reaching {statuses}")

    def close(self) -> None:
        self.http.close()


def fresh_order_no(prefix: str = "c") -> str:
    return f"{prefix}-{time.time_ns()}"


class Console:
    """An operator's browser, without the browser: cookies, the sign-in form, CSRF tokens."""

    def __init__(self, service: Service) -> None:
        self.http = service.http_client(follow_redirects=False)

    def sign_in(self, name: str, password: str = OPERATOR_PASSWORD) -> httpx.Response:
        form = self.http.get("/console/login")
        return self.http.post(
            "/console/login",
            data={"name": name, "password": password, "csrf_token": csrf_of(form.text)},
        )

    def get(self, path: str, **params: str) -> httpx.Response:
        # httpx would replace a query already in ``path`` with an empty ``params``.
        return self.http.get(path, params=params) if params else self.http.get(path)

    def post(self, path: str, csrf_from: str = "/console", **form: str) -> httpx.Response:
        """A form post carrying the CSRF token of the page ``csrf_from``, as a browser would."""
        token = csrf_of(self.http.get(csrf_from).text)
        return self.http.post(path, data={"csrf_token": token, **form})

    def close(self) -> None:
        self.http.close()


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no CSRF field"
    return match.group(1)
