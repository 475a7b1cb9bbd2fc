from __future__ import annotations

import fcntl
import importlib
import importlib.metadata
import itertools
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from core.db import Database
from core.migrate import ensure_schema
from tests.inprocess import InProcessService
from tests.support import (
    REPO,
    SQLITE,
    Backend,
    Partner,
    Service,
    ServiceProcess,
    postgres_or_reason,
    sandbox_config,
)

# The console's browser tests: chromium fixtures and a screenshot of every page they visit.
pytest_plugins = ["tests.browser"]

TOKEN_SECRET = "test-token-key-known-to-the-tests"
# The shared services: a known token key, and apps kept for a second rather than five, so
# that the tests changing an app (its secret, allowlist, carrier check) wait less for it.
SHARED_SERVICE_ENV = {"TOPUP_TOKEN_SECRET": TOKEN_SECRET, "TOPUP_APP_CACHE_SECONDS": "1"}
_app_numbers = itertools.count(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked slow first: xdist hands tests out in this order, so each starts
    while the rest of the suite runs beside it, not last with the other workers idle."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Every storage and API test runs on both: SQLite, and the machine's PostgreSQL."""
    if request.param == "sqlite":
        return SQLITE
    found = postgres_or_reason()
    if isinstance(found, str):
        pytest.skip(found)
    return found


@pytest.fixture
def empty_database_url(tmp_path: Path, backend: Backend) -> Iterator[str]:
    """A new, empty database on the current backend, dropped after the test."""
    url = backend.new_database(tmp_path)
    yield url
    backend.drop(url)


@pytest.fixture
def database_url(tmp_path: Path, backend: Backend) -> Iterator[str]:
    """A new database with the schema in place: a copy of one migrated per test process."""
    url = backend.migrated_database(tmp_path)
    yield url
    backend.drop(url)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """``database_url`` opened as a service opens it, closed after the test."""
    database = Database(database_url)
    await ensure_schema(database)
    yield database
    await database.dispose()


@pytest.fixture
def services(tmp_path: Path, backend: Backend) -> Iterator:
    """Starts services for one test on the current backend; stops them and drops their data."""
    started: list[ServiceProcess] = []

    def start(
        config: str,
        env: dict[str, str] | None = None,
        begin: bool = True,
        workdir: Path | None = None,
        database_url: str | None = None,
    ) -> ServiceProcess:
        where = workdir or tmp_path / f"s{len(started)}"
        where.mkdir(exist_ok=True)
        proc = ServiceProcess(where, config, env=env, backend=backend, database_url=database_url)
        started.append(proc)
        return proc.start() if begin else proc

    yield start
    for proc in started:
        proc.stop()
    for url in {proc.database_url for proc in started}:
        backend.drop(url)


@pytest.fixture(scope="session")
def service_process(
    tmp_path_factory: pytest.TempPathFactory, backend: Backend
) -> Iterator[ServiceProcess]:
    """One running service shared by the contract tests (each uses its own apps)."""
    workdir = tmp_path_factory.mktemp(f"service-{backend.name}")
    proc = ServiceProcess(workdir, sandbox_config(), env=SHARED_SERVICE_ENV, backend=backend)
    proc.start()
    yield proc
    proc.stop()
    proc.drop_database()


@pytest.fixture(scope="session")
def service(service_process: ServiceProcess) -> Service:
    """The shared service: ``topup serve`` in a process of its own, unless a module whose
    rules need no real process overrides this with ``in_process``."""
    return service_process


@pytest.fixture(scope="module")
def sqlite_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A running service of the module's own on SQLite, for tests the backend does not
    matter to (the schema page, a client generated from the document)."""
    proc = ServiceProcess(
        tmp_path_factory.mktemp("sqlite-service"),
        sandbox_config(),
        env={"TOPUP_TOKEN_SECRET": TOKEN_SECRET},
        backend=SQLITE,
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def in_process(
    tmp_path_factory: pytest.TempPathFactory, backend: Backend
) -> Iterator[InProcessService]:
    """The app in this process, shared like ``service`` by the tests whose rules need no
    real process (each uses its own apps). No background work: orders stay accepted."""
    workdir = tmp_path_factory.mktemp(f"in-process-{backend.name}")
    app = InProcessService(workdir, sandbox_config(), env=SHARED_SERVICE_ENV, backend=backend)
    app.start()
    yield app
    app.stop()
    app.drop_database()


@pytest.fixture
def in_process_services(tmp_path: Path, backend: Backend) -> Iterator:
    """Starts in-process services for one test, like ``services``; stops them and drops
    their data."""
    started: list[InProcessService] = []

    def start(config: str, env: dict[str, str] | None = None, background: bool = False):
        where = tmp_path / f"app{len(started)}"
        where.mkdir()
        app = InProcessService(where, config, env=env, backend=backend, background=background)
        started.append(app)
        return app.start()

    yield start
    for app in started:
        app.stop()
        app.drop_database()


def new_partner(
    service: Service, sign_type: str = "hmac-sha256", funds: str | None = "100000"
) -> Partner:
    """A registered partner app; with ``funds`` yuan on its prepaid account."""
    app_id = f"app{next(_app_numbers)}"
    company = f"彩生活{app_id}"
    commands = [["app", "add", app_id, "--company", company, "--sign-type", sign_type]]
    if funds is not None:
        commands.append(["app", "credit", app_id, funds, "--reason", "test funds"])
    secret = service.cli_many(commands).splitlines()[0].strip()
    return Partner(
        service.url, app_id, secret, company, sign_type=sign_type, http=service.http_client()
    )


@pytest.fixture(scope="module")
def partner(service: Service) -> Iterator[Partner]:
    """A partner app registered on the shared service for this test module."""
    client = new_partner(service)
    yield client
    client.close()


@pytest.fixture(scope="session")
def example_plugin() -> None:
    """Installs tests/example_plugin, a third-party plugin package, as a partner would pip it."""
    with (Path(tempfile.gettempdir()) / "topup-example-plugin.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several test workers may get here at once
        _install_example_plugin()


def _install_example_plugin() -> None:
    source = REPO / "tests" / "example_plugin" / "topup_acme.py"
    try:
        installed = importlib.metadata.distribution("topup-acme").locate_file("topup_acme.py")
        current = Path(str(installed)).read_text() == source.read_text()
    except (importlib.metadata.PackageNotFoundError, FileNotFoundError):
        current = False
    if not current:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--force-reinstall",
                str(source.parent),
            ],
            check=True,
            capture_output=True,
        )
        importlib.invalidate_caches()
