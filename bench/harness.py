"""What every bench script shares: ``topup`` processes on a database of their own, the
bench app and its signed orders, the load generators (wrk closed loop, bench/loadgen.c
open loop), and counts read from a service's SQLite file.

``bench/run.py`` (``make bench``) runs the phases; ``bench/lifecycle_cost.py``,
``bench/split_worker.py``, ``bench/metrics_cost.py`` and ``bench/metrics_ab.py`` measure
one question each with the same pieces.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import random
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlencode

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.orders import TERMINAL, State  # noqa: E402
from core.signing import SignType, compute_sign  # noqa: E402
from topup.testing import free_port, wait_until_healthy  # noqa: E402

BIN = Path(sys.executable).parent
LOADGEN = ROOT / "bench" / ".build" / "loadgen"
CONNECTIONS = 256
# Distinct orders prepared per second of a closed-loop phase: wrk starts the file over
# when it runs out, and a repeated cstmOrderNo is an idempotent replay, not an order.
# Twice the fastest acceptance seen (9,500/s claimed, with replays, on a fast AMD host);
# a phase that still runs out stops the bench (``closed_loop``).
DISTINCT_PER_SECOND = 20_000
PG_URL = os.environ.get(
    "TOPUP_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
APP, COMPANY, CARRIER, PRODUCT = "bench", "基准测试", "中国移动", "YD10"
# The load comes from one loopback address and one app at thousands of requests per
# second, which the product's default limits rightly refuse. These keep the limiters
# on (their cost is part of what is measured) but far above any rate reached here.
BENCH_LIMITS = """
[limits]
ip_rate = 10000000
ip_burst = 10000000
app_rate = 10000000
app_burst = 10000000
"""


# -- processes -----------------------------------------------------------------------------


class Server:
    def __init__(self, command: list[str], env: dict[str, str], port: int, health: str) -> None:
        self.port = port
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (lives as long as the server)
            prefix="bench-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until_healthy(
            f"http://127.0.0.1:{port}{health}",
            self.proc,
            lambda: Path(self.log.name).read_text(errors="replace")[-3000:],
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        children = subprocess.run(
            ["pgrep", "-g", str(self.proc.pid)], capture_output=True, text=True
        ).stdout.split()
        return [int(pid) for pid in children] or [self.proc.pid]

    def stop(self) -> None:
        """Stop the server and every process of its group (on PostgreSQL ``topup serve``
        runs its worker as a child): what runs next may drop the tables they use."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        deadline = time.monotonic() + 20
        while self.pids() != [self.proc.pid] and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def bench_config() -> Path:
    """The shipped plugins.toml with ``BENCH_LIMITS`` added, written once per run."""
    path = Path(tempfile.gettempdir()) / f"bench-plugins-{os.getpid()}.toml"
    if not path.exists():
        shipped = (ROOT / "plugins.toml").read_text(encoding="utf-8")
        if "limits" in tomllib.loads(shipped):
            raise SystemExit("plugins.toml has a [limits] table: merge BENCH_LIMITS into it")
        path.write_text(shipped + BENCH_LIMITS, encoding="utf-8")
        atexit.register(path.unlink, missing_ok=True)
    return path


def topup_env(database_url: str, port: int | None, **extra: str) -> dict[str, str]:
    """The environment of a topup command; ``port`` None for one that serves nothing."""
    env = {
        **os.environ,
        "TOPUP_DATABASE_URL": database_url,
        "TOPUP_CONFIG": str(bench_config()),
        **extra,
    }
    if port is not None:
        env["TOPUP_PORT"] = str(port)
    return env


def topup(*args: str, env: dict[str, str]) -> str:
    return subprocess.run(
        [str(BIN / "topup"), *args], env=env, cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


@contextlib.contextmanager
def service(
    database_url: str,
    *,
    serve_args: tuple[str, ...] = (),
    fund: bool = True,
    port: int | None = None,
) -> Iterator[tuple[Server, str]]:
    """A running ``topup serve`` with the bench app registered; yields it and the secret."""
    port = port or free_port()
    env = topup_env(database_url, port)
    secret = ""
    if fund:
        with contextlib.suppress(subprocess.CalledProcessError):
            secret = topup("app", "add", APP, "--company", COMPANY, env=env)
        if not secret:  # already registered in this database; its secret is sealed there
            secret = topup("app", "rotate-secret", APP, "--grace", "0", env=env)
        topup("app", "credit", APP, "100000000", "--reason", "bench", env=env)
    server = Server([str(BIN / "topup"), "serve", *serve_args], env, port, "/healthz")
    try:
        yield server, secret
    finally:
        server.stop()


# -- requests --------------------------------------------------------------------------------


def token(base_url: str, secret: str) -> str:
    params = {"appID": APP, "ts": str(int(time.time()))}
    params["sign"] = compute_sign(params, secret, SignType.HMAC_SHA256)
    return httpx.post(f"{base_url}/sign/api/token", data=params).json()["data"]["access_token"]


def order_bodies(base_url: str, secret: str, count: int, ts_offset: int = 0) -> list[str]:
    """Signed order bodies, each with its own cstmOrderNo (numbers never ending in 4 or 7:
    every order succeeds at once, so end to end measures the pipeline, not the sandbox)."""
    access = token(base_url, secret)
    ts = str(int(time.time()) + ts_offset)
    run = f"{time.time_ns():x}"
    bodies = []
    for i in range(count):
        params = {
            "access_token": access,
            "appID": APP,
            "company": COMPANY,
            "Supplier": CARRIER,
            "phoneNo": f"1380{i % 1_000_000:06d}{random.choice('0123568')}",
            "productId": PRODUCT,
            "cstmOrderName": "bench",
            "cstmOrderNo": f"b{run}-{i}",
            "ts": ts,
        }
        params["sign"] = compute_sign(params, secret, SignType.HMAC_SHA256)
        bodies.append(urlencode(params))
    return bodies


@functools.cache
def _request_files() -> tempfile.TemporaryDirectory:
    """Where the load generators' request files go; removed when this process exits."""
    return tempfile.TemporaryDirectory(prefix="topup-bench-requests-")


def _request_file(suffix: str) -> Path:
    return Path(tempfile.mkstemp(prefix="bench-", suffix=suffix, dir=_request_files().name)[1])


def write_lines(lines: list[str]) -> Path:
    path = _request_file(".txt")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_http_requests(host_port: str, bodies: list[str]) -> Path:
    path = _request_file(".bin")
    with path.open("wb") as out:
        for body in bodies:
            raw = body.encode()
            request = (
                f"POST /sign/api/order HTTP/1.1\r\nHost: {host_port}\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {len(raw)}\r\n\r\n"
            ).encode() + raw
            out.write(struct.pack("<I", len(request)) + request)
    return path


# -- load -----------------------------------------------------------------------------------


class WrkRun(NamedTuple):
    rate: float  # requests per second
    ok: int  # answers with code "0"
    requests: int  # requests answered in all


def wrk(
    url: str,
    seconds: float,
    lines: Path | None = None,
    method: str = "POST",
    path: str = "/sign/api/order",
    connections: int = CONNECTIONS,
) -> WrkRun:
    """Closed-loop maximum."""
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:.0f}s", "--timeout", "10s"]
    env = {**os.environ, "THREADS": "2", "METHOD": method, "REQUEST_PATH": path}
    if lines is not None:
        command += ["-s", str(ROOT / "bench" / "orders.lua")]
        env["BODIES"] = str(lines)
    out = subprocess.run(
        [*command, url + (path if lines is None else "")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    ok = re.search(r"ok=(\d+)", out)
    return WrkRun(rate, int(ok.group(1)) if ok else 0, requests)


def closed_loop(url: str, seconds: float, lines: list[str], **options) -> WrkRun:
    """``wrk`` over distinct requests: stops the bench if it used some twice, which would
    measure replays (an order's idempotent repeat, a status query on a warm page)."""
    run = wrk(url, seconds, write_lines(lines), **options)
    if run.requests > len(lines):
        raise SystemExit(
            f"wrk sent {run.requests:,} requests but only {len(lines):,} distinct ones were "
            "prepared: raise DISTINCT_PER_SECOND in bench/harness.py"
        )
    return run


def loadgen_command(port: int, rate: float, seconds: float, requests: Path) -> list[str]:
    return [
        str(LOADGEN),
        "127.0.0.1",
        str(port),
        f"{rate:.0f}",
        f"{seconds:.0f}",
        "256",
        str(requests),
    ]


def loadgen_figures(out: str) -> dict[str, float]:
    return {key: float(value) for key, value in re.findall(r"(\w+)=([\d.]+)", out)}


def loadgen(port: int, rate: float, seconds: float, requests: Path) -> dict[str, float]:
    command = loadgen_command(port, rate, seconds, requests)
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return loadgen_figures(out)


# -- the service's database ------------------------------------------------------------


OPEN_STATES = tuple(state.value for state in State if state not in TERMINAL)


def window_counts(path: Path, started: float, ended: float) -> tuple[int, int]:
    """Orders accepted, and orders that reached a terminal state, between the two times."""
    window = (int(started * 1000), int(ended * 1000))
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
        accepted = conn.execute(
            "SELECT count(*) FROM orders WHERE created_at BETWEEN ? AND ?", window
        ).fetchone()[0]
        completed = conn.execute(
            "SELECT count(*) FROM orders WHERE finished_at BETWEEN ? AND ?", window
        ).fetchone()[0]
    return accepted, completed


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU these processes have used, from /proc/PID/stat."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def orders_in(path: Path, states: tuple[str, ...] | None = None) -> int:
    """Orders in the database file, or those in ``states``. Opened read-write, so that a
    log left by a server that did not stop cleanly is recovered, not refused."""
    where = f" WHERE state IN ({','.join('?' * len(states))})" if states else ""
    with sqlite3.connect(path, timeout=30) as conn:
        return conn.execute(f"SELECT count(*) FROM orders{where}", states or ()).fetchone()[0]


def wait_for_no_backlog(path: Path, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while orders_in(path, OPEN_STATES):
        if time.time() > deadline:
            raise SystemExit(f"the dispatcher left orders open after {timeout:.0f} s")
        time.sleep(0.2)
