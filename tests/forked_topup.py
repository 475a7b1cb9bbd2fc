"""``topup`` commands and services for the tests, each forked from one warm interpreter
per test process.

A ``topup`` command spends about half a second importing SQLAlchemy, Litestar, httpx and
the core before it does any work, and the suite runs several hundred commands and about a
hundred services. Here one interpreter does those imports once; each command or service
then runs in a process forked from it, with the environment, import path, working
directory and standard streams it was given, as from a shell: it sees nothing of the
test process or of the commands before it. Only the imports are shared, and no thread,
event loop, database connection or logging handler exists before the fork. Where a fork
cannot reproduce a fresh interpreter (``_forkable``), a real one is started instead.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Mapping
from typing import IO, Any

from topup._lifeline import exit_with_parent

# What commands and services import, so that no forked process imports it again. Not
# prometheus_client: it chooses its storage when first imported, from an environment
# variable that ``topup serve`` sets only after it starts (core/metrics.py).
WARM_MODULES = (
    "service.cli",
    "service.cli_apps",
    "service.cli_keys",
    "service.cli_operators",
    "service.cli_orders",
    "service.cli_plugins",
    "service.cli_reconcile",
    "service.cli_routes",
    "service.background",
    "core.migrate",
    "aiosqlite",
    "asyncpg",
    "litestar",
    "uvicorn",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.lifespan.on",
    "uvicorn.loops.uvloop",
)
LATE_MODULES = ("prometheus_client",)
# The warm interpreter's ends of its pipes to the test process: no forked process keeps
# them (a service outliving the warm interpreter would hide its end from the tests).
_PIPES: list[int] = []
# The services forked and not yet reaped: stopped when the test process goes away
# (its end of the pipe closes), so that a killed test run leaves no server behind.
_SERVICES: set[int] = set()


class ForkedTopup:
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
        answer = self._ask(request)
        return answer["code"], answer["stdout"], answer["stderr"]

    def start(
        self, args: list[str], *, env: Mapping[str, str], cwd: str, log: str
    ) -> ForkedProcess | None:
        """Start ``topup ARGS`` (a service) in a session of its own, its output appended
        to ``log``; None where a fork cannot reproduce ``env`` (start a real process)."""
        if not _forkable(env):
            return None
        request = {"start": args, "env": dict(env), "cwd": cwd, "log": log}
        return ForkedProcess(self, self._ask(request)["pid"])

    def reap(self, pid: int) -> int | None:
        """The exit code of a started process that has ended (None: the warm interpreter
        is gone, and with it the process's parent)."""
        try:
            return self._ask({"reap": pid})["code"]
        except RuntimeError:
            return None

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            server = self._started()
            assert server.stdin is not None and server.stdout is not None
            server.stdin.write(json.dumps(request).encode() + b"\n")
            server.stdin.flush()
            reply = server.stdout.readline()
            if not reply:
                self._server = None
                raise RuntimeError("the warm topup interpreter died; see the test log")
        return json.loads(reply)

    def _started(self) -> subprocess.Popen:
        if self._server is None or self._server.poll() is not None:
            self._server = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from tests.forked_topup import warm_interpreter; warm_interpreter()",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            )
            atexit.register(self._stop)
        return self._server

    def close_requests(self) -> None:
        """What the warm interpreter sees when the test process dies: it stops every
        service it started and ends."""
        if self._server is not None and self._server.stdin is not None:
            self._server.stdin.close()

    def send_signal(self, signum: int) -> None:
        if self._server is not None:
            self._server.send_signal(signum)

    def _stop(self) -> None:
        if self._server is None or self._server.poll() is not None:
            return
        self.close_requests()
        try:
            self._server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._server.kill()
            self._server.wait()


class ForkedProcess:
    """A service the warm interpreter forked: what the tests use of ``subprocess.Popen``.
    Its exit is seen through a pidfd; the warm interpreter, its parent, reaps it when
    asked, so its pid cannot be reused before then."""

    def __init__(self, owner: ForkedTopup, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._owner = owner
        self._ended = os.pidfd_open(pid)

    def poll(self) -> int | None:
        return self._wait(0)

    def wait(self, timeout: float | None = None) -> int | None:
        if self._wait(timeout) is None:
            raise subprocess.TimeoutExpired(f"topup (pid {self.pid})", timeout or 0)
        return self.returncode

    def _wait(self, timeout: float | None) -> int | None:
        if self._ended >= 0 and select.select([self._ended], [], [], timeout)[0]:
            os.close(self._ended)
            self._ended = -1
            code = self._owner.reap(self.pid)
            self.returncode = -1 if code is None else code
        return self.returncode


FORKED_TOPUP = ForkedTopup()


def _forkable(env: Mapping[str, str]) -> bool:
    """Whether a fork reproduces a fresh interpreter in ``env``: not when it sets the
    interpreter's own start-up variables (PYTHONHASHSEED...) otherwise than here, nor
    when its PYTHONPATH names a directory whose start-up hooks a fresh interpreter would
    run. Any other PYTHONPATH only puts directories on the import path, and the forked
    command puts them there itself (``_import_path``)."""
    names = {name for name in (*env, *os.environ) if name.startswith("PYTHON")}
    differing = {name for name in names if env.get(name) != os.environ.get(name)}
    if differing - {"PYTHONPATH"}:
        return False
    return not any(_has_startup_hook(entry) for entry in _entries(env.get("PYTHONPATH")))


def _entries(python_path: str | None) -> list[str]:
    return [os.path.abspath(entry) for entry in (python_path or "").split(os.pathsep) if entry]


def _has_startup_hook(directory: str) -> bool:
    # What site.py imports at start-up from anywhere on the path.
    return any(
        os.path.exists(os.path.join(directory, name))
        for name in ("sitecustomize.py", "sitecustomize", "usercustomize.py", "usercustomize")
    )


def _import_path(env: Mapping[str, str]) -> list[str]:
    """sys.path as a fresh interpreter in ``env`` starts with it: PYTHONPATH's directories
    first, then the interpreter's own (the warm interpreter's, less those it had only
    from its own PYTHONPATH and the working directory ``-c`` put first)."""
    inherited = set(_entries(os.environ.get("PYTHONPATH"))) | {""}
    own = [entry for entry in sys.path if entry not in inherited]
    return [*_entries(env.get("PYTHONPATH")), *own]


def _in_a_new_interpreter(request: dict[str, Any]) -> tuple[int, str, str]:
    code = (
        "import json, sys\n"
        "from tests.forked_topup import _run_commands\n"
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


def warm_interpreter() -> None:
    """The warm interpreter: import, then fork one process per request read on stdin."""
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    _PIPES.extend((requests.fileno(), replies.fileno()))
    # Nothing but a forked command may read or write the standard streams.
    os.dup2(os.open(os.devnull, os.O_RDWR), 0)
    os.dup2(2, 1)
    for module in WARM_MODULES:
        importlib.import_module(module)
    early = [name for name in LATE_MODULES if name in sys.modules]
    assert not early, f"imported before the fork, so chosen for every process: {early}"
    # Ctrl-C reaches the whole foreground group: the test process tears its services
    # down and then closes the pipe, which is when this one stops what is left.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        for line in requests:
            replies.write(json.dumps(_answer(json.loads(line))).encode() + b"\n")
            replies.flush()
    finally:
        _stop_services()


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _stop_services() -> None:
    """Kill every service still running, each with its whole session (a service on
    PostgreSQL has its background worker as a process of its own)."""
    for pid in _SERVICES:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    for pid in _SERVICES:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    if "reap" in request:
        _SERVICES.discard(request["reap"])
        _, status = os.waitpid(request["reap"], 0)
        return {"code": os.waitstatus_to_exitcode(status)}
    if "start" in request:
        pid = _start(request)
        _SERVICES.add(pid)
        return {"pid": pid}
    return _fork(request)


def _start(request: dict[str, Any]) -> int:
    """Fork a service: a session of its own (kill -9 of its group takes all of it), no
    standard input, its output appended to its log. Reaped only when asked (``reap``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    warm = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setsid()
        # Killed with this interpreter too (kill -9 of the test run's whole group).
        exit_with_parent(warm)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for fd in (1, 2):
            os.dup2(log, fd)
        _become(request)
        sys.argv = [os.path.join(os.path.dirname(sys.executable), "topup"), *request["start"]]
        code = _run_commands([request["start"]], standalone=True)
    except BaseException:
        traceback.print_exc()
    finally:
        _exit(code)


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
        _become(request)
        code = _run_commands(request["commands"], request["standalone"])
    except BaseException:
        traceback.print_exc()
    finally:
        _exit(code)


def _become(request: dict[str, Any]) -> None:
    """The forked process as a fresh one in the request's environment and directory, on
    standard streams already in place as file descriptors 0-2."""
    for fd in _PIPES:
        os.close(fd)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own stdin
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[:] = _import_path(request["env"])
    os.chdir(request["cwd"])
    importlib.invalidate_caches()  # a plugin installed since the imports above


def _exit(code: int) -> None:
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
