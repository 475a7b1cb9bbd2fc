"""The tests' ``topup`` commands, forked from a warm interpreter, behave as started afresh."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.forked_topup import ForkedTopup
from tests.support import REPO, TOPUP, ServiceProcess, sandbox_config, topup_cli
from tests.test_plugins import INCOMPLETE_PLUGIN
from topup.testing import eventually, wait_until_healthy


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    database = f"sqlite+aiosqlite:///{tmp_path}/topup.db"
    return {**os.environ, "TOPUP_DATABASE_URL": database, **extra}


def test_a_command_answers_as_its_console_script_would(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    forked = topup_cli("app", "nosuch", env=env, check=False)
    started = subprocess.run(
        [TOPUP, "app", "nosuch"], env=env, capture_output=True, text=True, check=False
    )
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        started.returncode,
        started.stdout,
        started.stderr,
    )
    assert forked.returncode == 2 and "No such command 'nosuch'" in forked.stderr
    with pytest.raises(subprocess.CalledProcessError):
        topup_cli("app", "nosuch", env=env)


def test_each_command_has_its_own_environment_and_standard_input(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    for where in (first, second):
        topup_cli("db", "upgrade", env=env_for(where))
    topup_cli("app", "add", "only-in-one", "--company", "某公司", env=env_for(first))
    assert "only-in-one" in topup_cli("app", "list", env=env_for(first)).stdout
    assert "only-in-one" not in topup_cli("app", "list", env=env_for(second)).stdout
    from_env = topup_cli("sign", "a=1", env=env_for(first, TOPUP_SIGN_SECRET="s3cret"))
    from_option = topup_cli("sign", "--secret", "s3cret", "a=1", env=env_for(second))
    assert from_env.stdout == from_option.stdout != ""
    assert topup_cli("sign", "a=1", env=env_for(second), check=False).returncode != 0
    add = ("operator", "add", "bob", "--password-stdin")
    nothing = topup_cli(*add, env=env_for(first), input="", check=False)
    assert nothing.returncode != 0
    added = topup_cli(*add, env=env_for(first), input="correct horse battery staple\n")
    assert "operator bob (viewer) added" in added.stdout


def test_interpreter_settings_it_cannot_reproduce_get_a_real_process(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text("print('started afresh')\n")
    env = env_for(tmp_path, PYTHONPATH=str(tmp_path))
    assert "started afresh" in topup_cli("sign", "--secret", "s", "a=1", env=env).stdout


def test_a_plain_directory_on_pythonpath_is_on_the_commands_import_path(tmp_path: Path) -> None:
    """Such a PYTHONPATH is reproduced in the fork (most of the suite's commands carry one),
    and only for the command that was given it."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "halfway_plugin.py").write_text(INCOMPLETE_PLUGIN)
    wanted = {"TOPUP_PLUGINS": "halfway_plugin", "TOPUP_CONFIG": str(REPO / "plugins.toml")}
    found = topup_cli("plugins", env=env_for(tmp_path, PYTHONPATH=str(plugins), **wanted))
    assert "halfway_plugin  [TOPUP_PLUGINS]  suppliers: -" in found.stdout, found.stdout
    missing = topup_cli("plugins", env=env_for(tmp_path, **wanted), check=False)
    started = subprocess.run(
        [TOPUP, "plugins"], env=env_for(tmp_path, **wanted), capture_output=True, text=True
    )
    assert (missing.returncode, missing.stderr) == (started.returncode, started.stderr)
    assert "halfway_plugin" in missing.stderr + missing.stdout


def test_a_forked_service_that_cannot_start_ends_as_its_console_script_would(
    tmp_path: Path,
) -> None:
    service = ServiceProcess(tmp_path, sandbox_config(enabled='["nosuch"]'))
    with pytest.raises(RuntimeError, match="exited before it was ready"):
        service.start()
    assert service.proc is not None
    started = subprocess.run(
        [TOPUP, "serve"], env=service.env, capture_output=True, text=True, timeout=30
    )
    assert service.proc.wait(timeout=10) == started.returncode == 1
    assert "invalid configuration" in started.stderr
    assert "invalid configuration" in service.log()


@pytest.mark.parametrize("ending", ["test process gone", "SIGTERM", "SIGKILL"])
def test_a_killed_test_run_leaves_no_forked_service_running(tmp_path: Path, ending: str) -> None:
    # The pipe to its warm interpreter closing is what a test process's death looks like
    # from there; a SIGTERM or a kill -9 of the run's process group reaches the warm
    # interpreter itself. Either way a killed `make test` leaves no server holding a port.
    service = ServiceProcess(tmp_path, sandbox_config())
    service.backend.migrate(service.env)
    warm = ForkedTopup()
    proc = warm.start(["serve"], env=service.env, cwd=str(REPO), log=str(service.log_path))
    assert proc is not None
    wait_until_healthy(f"{service.url}/healthz", proc, service.log)
    session = os.getsid(proc.pid)

    if ending == "test process gone":
        warm.close_requests()
    else:
        warm.send_signal(getattr(signal, ending))

    eventually(lambda: not _alive(session), what=f"the service's session {session} gone")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{service.url}/healthz", timeout=1)


def _alive(session: int) -> bool:
    try:
        os.killpg(session, 0)
    except ProcessLookupError:
        return False
    return True
