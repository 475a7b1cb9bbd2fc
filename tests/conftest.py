from __future__ import annotations

import importlib
import importlib.metadata
import itertools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import REPO, Partner, ServiceProcess, sandbox_config

TOKEN_SECRET = "test-token-key-known-to-the-tests"
_app_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One running service shared by the contract tests (each uses its own apps)."""
    workdir = tmp_path_factory.mktemp("service")
    proc = ServiceProcess(workdir, sandbox_config(), env={"TOPUP_TOKEN_SECRET": TOKEN_SECRET})
    proc.start()
    yield proc
    proc.stop()


def new_partner(
    service: ServiceProcess, sign_type: str = "hmac-sha256", funds: str | None = "100000"
) -> Partner:
    """A registered partner app; with ``funds`` yuan on its prepaid account."""
    app_id = f"app{next(_app_numbers)}"
    company = f"彩生活{app_id}"
    secret = service.add_app(app_id, company, sign_type)
    if funds is not None:
        service.cli("app", "credit", app_id, funds, "--reason", "test funds")
    return Partner(service.url, app_id, secret, company, sign_type=sign_type)


@pytest.fixture(scope="module")
def partner(service: ServiceProcess) -> Iterator[Partner]:
    """A partner app registered on the shared service for this test module."""
    client = new_partner(service)
    yield client
    client.close()


@pytest.fixture(scope="session")
def example_plugin() -> None:
    """Installs tests/example_plugin, a third-party plugin package, as a partner would pip it."""
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
