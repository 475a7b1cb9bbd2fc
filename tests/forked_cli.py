"""``topup`` commands for the tests, each forked from one warm interpreter per test process.

A ``topup`` command spends about a second importing SQLAlchemy, httpx and the core before
it does any work, and the suite runs a few hundred of them. Here one interpreter does
those imports once; each command then runs in a process forked from it, with the
environment, working directory and standard streams it was given, as from a shell: it
sees nothing of the test process or of the commands before it. Only the imports are
shared, and no thread, event loop, database connection or logging handler exists before
the fork.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Mapping
from typing import IO, Any

# What the commands import, so that no forked command imports it again.
WARM_MODULES = (
    "service.cli",
    "service.cli_apps",
    "service.cli_keys",
    "service.cli_operators",
    "service.cli_orders",
    "service.cli_plugins",
    "service.cli_reconcile",
    "service.cli_routes",
    "core.migrate",
    "aiosqlite",
    "asyncpg",
)


class ForkedCli:
    """The warm interpreter, started on first use and stopped when the test process ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server: subprocess.Popen | None = None

    def run(
        self,
        commands: list[list[str]],
        *,
        env: Mapping[str, str],
        cwd: str,
        input: str | None = None,
        standalone: bool = True,
    ) -> tuple[int, str, str]:
        """Run ``commands`` one after another in one process; returns (exit code, stdout,
        stderr). ``standalone``: each as its console script runs it (click's standalone
        mode, the exit code from SystemExit); else as ``main(args, standalone_mode=False)``,
        where an exception ends the process with a traceback. The process is forked from
        the warm interpreter, or started afresh where a fork cannot reproduce ``env``."""
        request = {
            "commands": commands,
            "env": dict(env),
            "cwd": cwd,
            "input": input or "",
            "standalone": standalone,
        }
        if not _forkable(env):
            return _in_a_new_interpreter(request)
        with self._lock:
            server = self._started()
            assert server.stdin is not None and server.stdout is not None
            server.stdin.write(json.dumps(request).encode() + b"\n")
            server.stdin.flush()
            reply = server.stdout.readline()
            if not reply:
                self._server = None
                raise RuntimeError("the warm topup interpreter died; see the test log")
        answer = json.loads(reply)
        return answer["code"], answer["stdout"], answer["stderr"]

    def _started(self) -> subprocess.Popen:
        if self._server is None or self._server.poll() is not None:
            self._server = subprocess.Popen(
                [sys.executable, "-c", "from tests.forked_cli import serve; serve()"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            )
            atexit.register(self._stop)
        return self._server

    def _stop(self) -> None:
        if self._server is not None and self._server.poll() is None:
            self._server.kill()
            self._server.wait()


FORKED_CLI = ForkedCli()


def _forkable(env: Mapping[str, str]) -> bool:
    """Whether a fork reproduces a fresh interpreter in ``env``: not when it sets the
    interpreter's own start-up variables (PYTHONPATH...) otherwise than here."""
    names = {name for name in (*env, *os.environ) if name.startswith("PYTHON")}
    return all(env.get(name) == os.environ.get(name) for name in names)


def _in_a_new_interpreter(request: dict[str, Any]) -> tuple[int, str, str]:
    code = (
        "import json, sys\n"
        "from tests.forked_cli import _run_commands\n"
        "sys.exit(_run_commands(json.loads(sys.argv[1]), sys.argv[2] == 'standalone'))\n"
    )
    mode = "standalone" if request["standalone"] else "in-a-row"
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(request["commands"]), mode],
        env=request["env"],
        cwd=request["cwd"],
        input=request["input"],
        capture_output=True,
        text=True,
    )
    return done.returncode, done.stdout, done.stderr


def serve() -> None:
    """The warm interpreter: import, then fork one process per request read on stdin."""
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    # Nothing but a forked command may read or write the standard streams.
    os.dup2(os.open(os.devnull, os.O_RDWR), 0)
    os.dup2(2, 1)
    for module in WARM_MODULES:
        importlib.import_module(module)
    for line in requests:
        replies.write(json.dumps(_fork(json.loads(line))).encode() + b"\n")
        replies.flush()


def _fork(request: dict[str, Any]) -> dict[str, Any]:
    with (
        tempfile.TemporaryFile() as stdin,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        stdin.write(request["input"].encode())
        stdin.seek(0)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request, stdin, out, err)  # never returns
        _, status = os.waitpid(pid, 0)
        return {
            "code": os.waitstatus_to_exitcode(status),
            "stdout": _read(out),
            "stderr": _read(err),
        }


def _read(stream: IO[bytes]) -> str:
    stream.seek(0)
    return stream.read().decode(errors="replace")


def _child(request: dict[str, Any], stdin: IO[bytes], out: IO[bytes], err: IO[bytes]) -> None:
    code = 1
    try:
        for fd, stream in ((0, stdin), (1, out), (2, err)):
            os.dup2(stream.fileno(), fd)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own stdin
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        importlib.invalidate_caches()  # a plugin installed since the imports above
        code = _run_commands(request["commands"], request["standalone"])
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _run_commands(commands: list[list[str]], standalone: bool) -> int:
    from service.cli import main

    for args in commands:
        if not standalone:
            main(args, prog_name="topup", standalone_mode=False)
            continue
        try:
            main(args, prog_name="topup")
        except SystemExit as exit:
            if exit.code is not None and not isinstance(exit.code, int):
                print(exit.code, file=sys.stderr)
                return 1
            if exit.code:
                return exit.code
    return 0
